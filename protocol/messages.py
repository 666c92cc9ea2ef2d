"""Every message of the wire protocol: its fields, their types and bounds, its pixel frames.

These tables are the protocol; docs/PROTOCOL.md describes them and tests/test_protocol_doc.py
keeps the two in step. A message is one msgpack header (a map) followed by zero or more raw
pixel frames; the header carries the envelope keys (``ENVELOPE``) and the message's fields.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict, Optional, Sequence

from .errors import ERROR_CODES, ErrorCode, ProtocolError
from .image import CHANNELS
from .limits import Limits
from .validate import (Bool, Field, Float, FreeMap, Int, ListOf, Map, Nullable, Plain, Point,
                       Str, opt, req)

if TYPE_CHECKING:
    from .codec import Message

PROTOCOL_VERSION = 2
"""Bumped on every change to any message, field, bound or code (see docs/PROTOCOL.md).
A daemon answers only requests that carry exactly its version."""

MAX_ID_LEN = 128
MAX_ERROR_CHARS = 4000

# Header keys that are not fields of the message.
ENVELOPE = ("v", "id", "type", "frames", "for")

FRAME_DESC = Map({
    "name": req(Str(1, 32)),
    "width": req(Int(0, None)),
    "height": req(Int(0, None)),
    "channels": req(Int(0, None)),
}, fill_defaults=False)

# Shapes several messages share ----------------------------------------------

SESSION_ID = Str(1, 64)
# The secret open_session returns; every later request on the session must carry it.
SESSION_TOKEN = Str(1, 64)
JOB_ID = Str(1, 64)
REQUEST_ID = Str(1, MAX_ID_LEN)
MODEL_NAME = Str(1, 256)
SIDE = Int(1, 1 << 20, code=ErrorCode.TOO_LARGE)
COUNT = Int(0, 1 << 62)
SECONDS = Float(0.0)
POINT = Point()
POINTS_OUT = ListOf(POINT, max_len=4096, what="points")

QUALITY_PRESETS = ("fast", "balanced", "quality")

ROI = Map({
    "x": req(Int(0, 1 << 20)),
    "y": req(Int(0, 1 << 20)),
    "width": req(Int(1, 1 << 20)),
    "height": req(Int(1, 1 << 20)),
})

INVERT = Map({
    "method": opt(Str(choices=("pti", "w", "w+", "none")), "pti"),
    "quality": opt(Nullable(Str(choices=QUALITY_PRESETS)), None),    # None: "balanced"
    "w_steps": opt(Nullable(Int(0, 20000))),
    "tune_steps": opt(Nullable(Int(0, 20000))),
    "lr": opt(Nullable(Float(0.0, 10.0, lo_open=True))),
    "tune_lr": opt(Nullable(Float(0.0, 10.0, lo_open=True))),
    "seed": opt(Nullable(Int(0, 2 ** 32 - 1))),
})

PAIR = Map({"handle": req(POINT), "target": req(POINT)})

DRAG_PARAMS = Map({
    "max_steps": opt(Int(1, None), 300),     # upper bound from Limits, checked below
    "lr": opt(Nullable(Float(0.0, 1.0, lo_open=True)), None),   # None: model default
    "lambda_mask": opt(Float(0.0, 1e6), 20.0),
    "space": opt(Str(choices=("w", "w+")), "w+"),
    "tracking": opt(Str(choices=("l1", "l2")), "l1"),
    # "dragd": the paper's loop + arrived handles held in place; "draggan": the paper's loop;
    # "freedrag": FreeDrag's tracking-free line search (Ling et al. 2024)
    "method": opt(Str(choices=("dragd", "draggan", "freedrag")), "dragd"),
    "preview_every": opt(Int(0, 1 << 20), 0),
    "preview_max_size": opt(Int(16, None), 256),
    "r1": opt(Nullable(Float(0.0, 1024.0, lo_open=True)), None),   # None: scaled default
    "r2": opt(Nullable(Float(0.0, 1024.0, lo_open=True)), None),
    "stop_distance": opt(Nullable(Float(0.0, 1e4)), None),
    "stall_steps": opt(Int(0, 1 << 20), 60),  # 0: run to max_steps even when handles stop moving
    # How the edit goes back into the full-size layer: "resample" scales the generated crop;
    # "detail" warps the original pixels along the generator's own correspondence.
    "paste": opt(Str(choices=("resample", "detail")), "resample"),
})

# Requests --------------------------------------------------------------------


class FrameSpec:
    __slots__ = ("required", "channels")

    def __init__(self, required: bool = False, channels: Sequence[int] = CHANNELS):
        self.required, self.channels = required, tuple(channels)


class MessageSpec:
    def __init__(self, fields: Optional[Dict[str, Field]] = None,
                 frames: Optional[Dict[str, FrameSpec]] = None,
                 check: Optional[Callable[["Message", Limits], None]] = None,
                 job: bool = False, doc: str = ""):
        self.fields = fields or {}
        self.frames = frames or {}
        self.check = check
        self.job = job          # runs on the daemon's worker (queued, may stream progress)
        self.doc = doc


def _check_open_session(m: "Message", limits: Limits) -> None:
    img = m.images["image"]
    roi = m.fields.get("roi")
    if roi is not None and (roi["x"] + roi["width"] > img.width
                            or roi["y"] + roi["height"] > img.height):
        raise ProtocolError(ErrorCode.BAD_VALUE,
                            "open_session.roi: the region of interest %dx%d+%d+%d does not "
                            "fit inside the %dx%d layer" % (
                                roi["width"], roi["height"], roi["x"], roi["y"],
                                img.width, img.height), {"field": "open_session.roi"})


def _check_drag(m: "Message", limits: Limits) -> None:
    p = m.fields.get("params", {})
    if p["max_steps"] > limits.max_steps:
        raise ProtocolError(ErrorCode.TOO_LARGE, "drag.params.max_steps: %d steps, at most "
                            "%d allowed" % (p["max_steps"], limits.max_steps),
                            {"field": "drag.params.max_steps"})
    if p["preview_max_size"] > limits.max_preview_size:
        raise ProtocolError(ErrorCode.TOO_LARGE, "drag.params.preview_max_size: at most %d"
                            % limits.max_preview_size, {"field": "drag.params.preview_max_size"})


def _check_cancel(m: "Message", limits: Limits) -> None:
    if ("job" in m.fields) == ("request" in m.fields):
        raise ProtocolError(ErrorCode.BAD_MESSAGE,
                            "cancel: give exactly one of 'job' or 'request'")


REQUESTS: Dict[str, MessageSpec] = {
    "hello": MessageSpec({"client": opt(Str(0, 200))},
                         doc="Handshake: versions, device, models, limits."),
    "ping": MessageSpec({"jobs": opt(ListOf(REQUEST_ID, max_len=256, what="ids"))},
                        doc="Heartbeat; 'jobs' lists request ids the client still waits on."),
    "status": MessageSpec(doc="Queue, running job, sessions, memory."),
    "list_models": MessageSpec(doc="Models the daemon can load."),
    "load_model": MessageSpec({"model": req(MODEL_NAME)}, job=True,
                              doc="Load (and make current) a model."),
    "open_session": MessageSpec(
        {"model": opt(Nullable(MODEL_NAME), None),
         "roi": opt(Nullable(ROI), None),
         # auto: what the model's metadata says (FFHQ models: ffhq), else none.
         "align": opt(Str(choices=("auto", "ffhq", "none")), "auto"),
         # none: no reconstruction in the reply (a plug-in that shows none of it need
         # not receive a copy of a huge layer).
         "reconstruction": opt(Str(choices=("layer", "none")), "layer"),
         # {} rather than absent, so the daemon always gets the filled-in defaults.
         "invert": opt(INVERT, {})},
        frames={"image": FrameSpec(required=True)},
        check=_check_open_session, job=True,
        doc="Invert a layer (or its region of interest); returns a session id."),
    "drag": MessageSpec(
        {"session": req(SESSION_ID),
         "token": opt(SESSION_TOKEN),
         "points": req(ListOf(PAIR, min_len=1, max_len_from=lambda l: l.max_points,
                              what="points")),
         "params": opt(DRAG_PARAMS, {})},
        frames={"mask": FrameSpec(required=False, channels=(1,))},
        check=_check_drag, job=True,
        doc="Move handles to targets; streams progress, returns the edited layer."),
    "undo": MessageSpec({"session": req(SESSION_ID), "token": opt(SESSION_TOKEN),
                         "steps": opt(Int(1, 1 << 20), 1)},
                        job=True, doc="Go back to an earlier finished drag."),
    "reset_points": MessageSpec({"session": req(SESSION_ID), "token": opt(SESSION_TOKEN)},
                                job=True,
                                doc="Forget tracked handle features; next drag starts fresh."),
    "cancel": MessageSpec({"job": opt(JOB_ID), "request": opt(REQUEST_ID)},
                          check=_check_cancel,
                          doc="Cancel a queued or running job (by job id or request id)."),
    "close_session": MessageSpec({"session": req(SESSION_ID), "token": opt(SESSION_TOKEN)},
                                 job=True,
                                 doc="Free a session."),
}

JOB_TYPES = frozenset(k for k, s in REQUESTS.items() if s.job)

# Replies and events ---------------------------------------------------------

LIMITS_OUT = FreeMap(Int(0, None), max_items=32)
MODEL_INFO = Map({
    "name": req(MODEL_NAME),
    "resolution": opt(Nullable(Int(1, 1 << 16)), None),
    "loaded": opt(Bool(), False),
    "info": opt(FreeMap(Plain())),
})
JOB_INFO = Map({
    "job": req(JOB_ID),
    "type": req(Str(1, 64)),
    "session": opt(Nullable(SESSION_ID)),
    "state": opt(Str(choices=("queued", "running"))),
    "position": opt(Int(0, None)),
    "step": opt(Nullable(Int(0, None))),
    "seconds": opt(SECONDS),
}, fill_defaults=False)
SESSION_INFO = Map({
    "session": req(SESSION_ID),
    "width": req(SIDE), "height": req(SIDE), "channels": req(Int(1, 4)),
    "model": opt(Nullable(MODEL_NAME)),
    "bytes": opt(COUNT),
    "idle": opt(SECONDS),
    "history": opt(Int(0, None)),
}, fill_defaults=False)
ERROR_DETAILS = FreeMap(Plain(), max_items=32)
# status lists at most this many sessions (the most recently used) and counts them all, so
# its reply stays small and quick however many sessions the daemon holds.
STATUS_MAX_SESSIONS = 100

RESULTS: Dict[str, MessageSpec] = {
    "hello": MessageSpec({
        "protocol": req(Int(0, None)),
        "daemon_version": req(Str(0, 64)),
        "device": req(Str(0, 256)),
        "models": req(ListOf(MODEL_NAME, max_len=4096)),
        "loaded_model": opt(Nullable(MODEL_NAME)),
        "limits": req(LIMITS_OUT),
        "curve": opt(Bool(), False),
        "instance": opt(Str(0, 64)),
        "info": opt(FreeMap(Plain())),
    }),
    "ping": MessageSpec({
        "time": req(Float()),
        "uptime": opt(SECONDS),
        "running": opt(Nullable(JOB_ID)),
        "queued": opt(Int(0, None)),
        "unknown": opt(ListOf(REQUEST_ID, max_len=256)),
        "instance": opt(Str(0, 64)),
    }),
    "status": MessageSpec({
        "queue": req(ListOf(JOB_INFO, max_len=4096)),
        "running": opt(Nullable(JOB_INFO)),
        "sessions": req(ListOf(SESSION_INFO, max_len=STATUS_MAX_SESSIONS)),
        "others": opt(Map({"sessions": req(COUNT), "jobs": req(COUNT)})),
        "memory": req(Map({
            "budget": req(COUNT), "used": req(COUNT),
            "backend": opt(FreeMap(Plain()))})),
        "uptime": opt(SECONDS),
        "device": opt(Str(0, 256)),
        "loaded_model": opt(Nullable(MODEL_NAME)),
    }),
    "list_models": MessageSpec({"models": req(ListOf(MODEL_INFO, max_len=4096))}),
    "load_model": MessageSpec({
        "model": req(MODEL_NAME),
        "resolution": opt(Nullable(Int(1, 1 << 16))),
        "seconds": opt(SECONDS),
        "info": opt(FreeMap(Plain())),
    }),
    "open_session": MessageSpec({
        "session": req(SESSION_ID),
        "token": req(SESSION_TOKEN),
        "width": req(SIDE), "height": req(SIDE), "channels": req(Int(1, 4)),
        "model": opt(Nullable(MODEL_NAME)),
        "resolution": opt(Nullable(Int(1, 1 << 16))),
        "roi": opt(Nullable(ROI)),
        "seconds": opt(SECONDS),
        "bytes": opt(COUNT),
        "info": opt(FreeMap(Plain())),
    }, frames={"image": FrameSpec(required=False)}),
    "drag": MessageSpec({
        "session": req(SESSION_ID),
        "handles": req(POINTS_OUT),
        "steps": req(Int(0, None)),
        "stop": req(Str(choices=("converged", "max_steps", "cancelled", "stalled"))),
        "distance": opt(Nullable(Float(0.0, finite=False))),
        "history": opt(Int(0, None)),
        "seconds": opt(SECONDS),
        "bytes": opt(COUNT),
        "info": opt(FreeMap(Plain())),
    }, frames={"image": FrameSpec(required=True)}),
    "undo": MessageSpec({
        "session": req(SESSION_ID),
        "history": req(Int(0, None)),
        "handles": opt(POINTS_OUT),
        "bytes": opt(COUNT),
    }, frames={"image": FrameSpec(required=True)}),
    "reset_points": MessageSpec({"session": req(SESSION_ID)}),
    "cancel": MessageSpec({"job": req(JOB_ID),
                           "state": req(Str(choices=("queued", "running")))}),
    "close_session": MessageSpec({"session": req(SESSION_ID)}),
}

EVENTS: Dict[str, MessageSpec] = {
    "queued": MessageSpec({"job": req(JOB_ID), "position": req(Int(0, None))}),
    "progress": MessageSpec({
        "job": req(JOB_ID),
        "stage": req(Str(1, 32)),            # load | invert | tune | drag | undo | ...
        "step": req(Int(0, None)),
        "total": opt(Nullable(Int(0, None))),
        "handles": opt(POINTS_OUT),
        "losses": opt(FreeMap(Float(finite=False), max_items=32)),
        "distance": opt(Nullable(Float(0.0, finite=False))),
        "message": opt(Str(0, 1000)),
    }, frames={"preview": FrameSpec(required=False)}),
    "notice": MessageSpec({"message": req(Str(0, 1000)),
                           "job": opt(JOB_ID),
                           "details": opt(ERROR_DETAILS)}),
    "error": MessageSpec({
        "code": req(Str(choices=sorted(ERROR_CODES))),
        "message": req(Str(0, MAX_ERROR_CHARS)),
        "details": opt(ERROR_DETAILS),
        "job": opt(JOB_ID),
    }),
}
FINAL_TYPES = frozenset(("result", "error"))

# Fields of a progress event that a backend may set (the server adds 'job').
PROGRESS_FIELDS = frozenset(EVENTS["progress"].fields) - {"job"}

