"""The dragd wire protocol: every message, its fields, their types and bounds.

This module is the single source of truth for the protocol. It is pure Python on
msgpack only (no numpy, no torch, no zmq) because it runs inside GIMP's and Krita's
own interpreters (Python 3.10+); it is vendored into the plug-in folders, so it uses
no absolute imports of its own package.

A message is a list of frames: one msgpack header (a map) followed by zero or more
raw pixel frames. The header always carries ``v`` (protocol version), ``id`` (the
client's request id, echoed by every reply and event) and ``type``; pixel frames
are declared in the header's ``frames`` list as ``{name, width, height, channels}``
in the order the raw frames follow, and each raw frame must be exactly
``width * height * channels`` bytes (8-bit, row-major, interleaved).

Validation never raises anything but :class:`ProtocolError`, which carries a stable
``code`` (see :class:`ErrorCode`) and a sentence a user can act on. Errors are sent
as values (an ``error`` reply), never as tracebacks.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields as dc_fields
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import msgpack

PROTOCOL_VERSION = 1
"""Bumped on every change to any message, field, bound or code (see docs/PROTOCOL.md).
A daemon answers only requests that carry exactly its version."""

MAX_ID_LEN = 128
CHANNELS = (1, 3, 4)

# ---------------------------------------------------------------------------
# Error codes
# ---------------------------------------------------------------------------


class ErrorCode:
    BAD_MESSAGE = "bad_message"
    VERSION_MISMATCH = "version_mismatch"
    UNKNOWN_TYPE = "unknown_type"
    UNKNOWN_FIELD = "unknown_field"
    BAD_VALUE = "bad_value"
    BAD_POINTS = "bad_points"
    BAD_PIXELS = "bad_pixels"
    TOO_LARGE = "too_large"
    UNKNOWN_SESSION = "unknown_session"
    UNKNOWN_JOB = "unknown_job"
    UNKNOWN_MODEL = "unknown_model"
    NO_MODEL = "no_model"
    BAD_STATE = "bad_state"
    BUSY = "busy"
    CANCELLED = "cancelled"
    MODEL_ERROR = "model_error"
    OUT_OF_MEMORY = "out_of_memory"
    INTERNAL = "internal"
    SHUTTING_DOWN = "shutting_down"
    # Raised on the client side only (never sent by the daemon):
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"


ERROR_SENTENCES: Dict[str, str] = {
    "bad_message": "The daemon could not read this request; update the plug-in and "
                   "the daemon to the same dragd release.",
    "version_mismatch": "The plug-in and the daemon speak different dragd protocol "
                        "versions; update both to the same dragd release.",
    "unknown_type": "The daemon does not know this request; update the plug-in and "
                    "the daemon to the same dragd release.",
    "unknown_field": "The request has a field the daemon does not know; update the "
                     "plug-in and the daemon to the same dragd release.",
    "bad_value": "A setting of the request is out of range; check the values and "
                 "try again.",
    "bad_points": "A handle or target point is invalid or lies outside the layer; "
                  "redraw the points and try again.",
    "bad_pixels": "The pixel data does not match its declared size; try again, and "
                  "report a bug if it keeps happening.",
    "too_large": "The request is larger than the daemon allows; use a smaller layer, "
                 "a region of interest, or fewer points.",
    "unknown_session": "The daemon no longer has this editing session; open the "
                       "layer again.",
    "unknown_job": "There is no such job (it may have finished already).",
    "unknown_model": "The daemon has no model of that name; run 'dragd models' to "
                     "see the installed ones.",
    "no_model": "No model is loaded; load one first (dragd load MODEL).",
    "bad_state": "That is not possible in the session's current state.",
    "busy": "The daemon is busy with other jobs; try again in a moment.",
    "cancelled": "The job was cancelled.",
    "model_error": "The model failed; see the daemon log for details.",
    "out_of_memory": "The daemon ran out of memory; close other sessions, use a "
                     "smaller layer or region of interest, and try again.",
    "internal": "The daemon hit an internal error; see the daemon log and report "
                "a bug.",
    "shutting_down": "The daemon is shutting down; start it again with: dragd serve",
    "unavailable": "The dragd daemon is not reachable; start it with: dragd serve",
    "timeout": "The daemon did not finish the job in time.",
}

ERROR_CODES = frozenset(ERROR_SENTENCES)


class ProtocolError(Exception):
    """A protocol-level failure with a stable ``code`` and a user-facing sentence."""

    def __init__(self, code: str, message: Optional[str] = None,
                 details: Optional[Dict[str, Any]] = None):
        if code not in ERROR_CODES:
            code = ErrorCode.INTERNAL
        self.code = code
        self.message = message or ERROR_SENTENCES[code]
        self.details = dict(details) if details else {}
        super().__init__(self.message)

    def __repr__(self) -> str:
        return "%s(%r, %r)" % (type(self).__name__, self.code, self.message)

    def fields(self) -> Dict[str, Any]:
        f: Dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            f["details"] = self.details
        return f


# ---------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------


@dataclass
class Limits:
    """Bounds the daemon enforces (reported by ``hello``); the client checks them too."""

    max_side: int = 16384            # widest/tallest layer, in pixels
    max_pixels: int = 64 * 1024 * 1024   # width * height
    max_points: int = 64             # handle->target pairs per drag
    max_frames: int = 4              # pixel frames per message
    max_header_bytes: int = 256 * 1024
    max_steps: int = 5000            # drag max_steps upper bound
    max_preview_size: int = 2048
    max_queue: int = 16              # queued jobs before 'busy'

    @property
    def max_frame_bytes(self) -> int:
        return self.max_pixels * 4

    @property
    def max_message_bytes(self) -> int:
        """Largest single ZeroMQ frame (ZMQ_MAXMSGSIZE)."""
        return max(self.max_frame_bytes, self.max_header_bytes)

    def to_dict(self) -> Dict[str, int]:
        d = asdict(self)
        d["max_message_bytes"] = self.max_message_bytes
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Limits":
        names = {f.name for f in dc_fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


DEFAULT_LIMITS = Limits()

# ---------------------------------------------------------------------------
# Images (pixel frames)
# ---------------------------------------------------------------------------


class Image:
    """An 8-bit raw image: ``data`` is bytes-like, row-major, ``channels`` interleaved
    (1 = L, 3 = RGB, 4 = RGBA)."""

    __slots__ = ("data", "width", "height", "channels")

    def __init__(self, data: Any, width: int, height: int, channels: int):
        self.data = data
        self.width = int(width)
        self.height = int(height)
        self.channels = int(channels)

    @property
    def nbytes(self) -> int:
        return self.width * self.height * self.channels

    def tobytes(self) -> bytes:
        return bytes(self.data)

    def descriptor(self, name: str) -> Dict[str, Any]:
        return {"name": name, "width": self.width, "height": self.height,
                "channels": self.channels}

    def __repr__(self) -> str:
        return "Image(%dx%dx%d)" % (self.width, self.height, self.channels)


def buffer_nbytes(data: Any) -> int:
    try:
        return memoryview(data).nbytes
    except TypeError:
        raise ProtocolError(ErrorCode.BAD_PIXELS, "pixel data must be bytes-like")


# ---------------------------------------------------------------------------
# Field types
# ---------------------------------------------------------------------------

MISSING = object()


def _fail(code: str, where: str, what: str) -> ProtocolError:
    """A field-level error: what is wrong where, then what the user can do."""
    return ProtocolError(code, "%s: %s. %s" % (where, what, ERROR_SENTENCES[code]),
                         {"field": where})


class T:
    """A field type. ``check`` returns the (normalised) value or raises ProtocolError."""

    name = "value"

    def check(self, v: Any, where: str, limits: Limits) -> Any:  # pragma: no cover
        raise NotImplementedError


class Int(T):
    name = "integer"

    def __init__(self, lo: Optional[int] = None, hi: Optional[int] = None,
                 code: str = ErrorCode.BAD_VALUE):
        self.lo, self.hi, self.code = lo, hi, code

    def check(self, v, where, limits):
        if isinstance(v, bool) or not isinstance(v, int):
            raise _fail(ErrorCode.BAD_MESSAGE, where, "expected an integer")
        if (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi):
            raise _fail(self.code, where, "%d is outside [%s, %s]" % (v, self.lo, self.hi))
        return v


class Float(T):
    name = "number"

    def __init__(self, lo: Optional[float] = None, hi: Optional[float] = None,
                 finite: bool = True, lo_open: bool = False,
                 code: str = ErrorCode.BAD_VALUE):
        self.lo, self.hi, self.finite, self.lo_open, self.code = lo, hi, finite, lo_open, code

    def check(self, v, where, limits):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _fail(ErrorCode.BAD_MESSAGE, where, "expected a number")
        v = float(v)
        if not math.isfinite(v):
            if self.finite:
                raise _fail(self.code, where, "must be a finite number, not %r" % v)
            return v
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            raise _fail(self.code, where, "%g is below %s%g" % (
                v, "or equal to " if self.lo_open else "", self.lo))
        if self.hi is not None and v > self.hi:
            raise _fail(self.code, where, "%g is above %g" % (v, self.hi))
        return v


class Bool(T):
    name = "boolean"

    def check(self, v, where, limits):
        if not isinstance(v, bool):
            raise _fail(ErrorCode.BAD_MESSAGE, where, "expected true or false")
        return v


class Str(T):
    name = "string"

    def __init__(self, min_len: int = 0, max_len: int = 1024,
                 choices: Optional[Sequence[str]] = None):
        self.min_len, self.max_len = min_len, max_len
        self.choices = tuple(choices) if choices else None

    def check(self, v, where, limits):
        if not isinstance(v, str):
            raise _fail(ErrorCode.BAD_MESSAGE, where, "expected a string")
        if self.choices is not None:
            if v not in self.choices:
                raise _fail(ErrorCode.BAD_VALUE, where, "%r is not one of %s" % (
                    v[:40], ", ".join(self.choices)))
        elif not (self.min_len <= len(v) <= self.max_len):
            raise _fail(ErrorCode.BAD_VALUE, where, "length must be %d..%d" % (
                self.min_len, self.max_len))
        return v


class Nullable(T):
    def __init__(self, inner: T):
        self.inner = inner
        self.name = inner.name + " or nil"

    def check(self, v, where, limits):
        return None if v is None else self.inner.check(v, where, limits)


class ListOf(T):
    name = "list"

    def __init__(self, item: T, min_len: int = 0, max_len: Optional[int] = 1024,
                 max_len_from: Optional[Callable[[Limits], int]] = None,
                 too_many: str = ErrorCode.TOO_LARGE, what: str = "items"):
        self.item, self.min_len, self.max_len = item, min_len, max_len
        self.max_len_from, self.too_many, self.what = max_len_from, too_many, what

    def check(self, v, where, limits):
        if not isinstance(v, (list, tuple)):
            raise _fail(ErrorCode.BAD_MESSAGE, where, "expected a list")
        hi = self.max_len_from(limits) if self.max_len_from else self.max_len
        if hi is not None and len(v) > hi:
            raise _fail(self.too_many, where, "%d %s, at most %d allowed" % (
                len(v), self.what, hi))
        if len(v) < self.min_len:
            raise _fail(ErrorCode.BAD_VALUE, where, "needs at least %d %s" % (
                self.min_len, self.what))
        return [self.item.check(x, "%s[%d]" % (where, i), limits) for i, x in enumerate(v)]


class Point(T):
    """[x, y] in layer pixel coordinates: finite numbers."""

    name = "point"

    def check(self, v, where, limits):
        if not isinstance(v, (list, tuple)) or len(v) != 2:
            raise _fail(ErrorCode.BAD_POINTS, where, "a point must be [x, y]")
        out = []
        for c in v:
            if isinstance(c, bool) or not isinstance(c, (int, float)):
                raise _fail(ErrorCode.BAD_POINTS, where, "coordinates must be numbers")
            c = float(c)
            if not math.isfinite(c):
                raise _fail(ErrorCode.BAD_POINTS, where,
                            "coordinate %r is not a finite number" % c)
            if abs(c) > 4 * limits.max_side:
                raise _fail(ErrorCode.BAD_POINTS, where, "coordinate %g is far outside "
                            "any layer" % c)
            out.append(c)
        return out


class Field:
    __slots__ = ("type", "required", "default")

    def __init__(self, type_: T, required: bool = False, default: Any = MISSING):
        self.type, self.required, self.default = type_, required, default


def req(t: T) -> Field:
    return Field(t, required=True)


def opt(t: T, default: Any = MISSING) -> Field:
    return Field(t, default=default)


class Map(T):
    """A map with a fixed set of fields; unknown keys are rejected."""

    name = "map"

    def __init__(self, fields: Dict[str, Field], fill_defaults: bool = True):
        self.fields, self.fill_defaults = fields, fill_defaults

    def check(self, v, where, limits):
        if not isinstance(v, dict):
            raise _fail(ErrorCode.BAD_MESSAGE, where, "expected a map")
        return check_fields(v, self.fields, where, limits, self.fill_defaults)


class FreeMap(T):
    """A map of string keys to values of one type (losses, free-form info)."""

    name = "map"

    def __init__(self, value: T, max_items: int = 64):
        self.value, self.max_items = value, max_items

    def check(self, v, where, limits):
        if not isinstance(v, dict):
            raise _fail(ErrorCode.BAD_MESSAGE, where, "expected a map")
        if len(v) > self.max_items:
            raise _fail(ErrorCode.TOO_LARGE, where, "too many entries")
        out = {}
        for k, x in v.items():
            if not isinstance(k, str) or not (1 <= len(k) <= 128):
                raise _fail(ErrorCode.BAD_MESSAGE, where, "keys must be short strings")
            out[k] = self.value.check(x, "%s.%s" % (where, k), limits)
        return out


class Plain(T):
    """Any msgpack scalar, list or string-keyed map, nested at most ``depth`` deep."""

    name = "plain value"

    def __init__(self, depth: int = 4):
        self.depth = depth

    def check(self, v, where, limits, _d: int = 0):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if _d >= self.depth:
            raise _fail(ErrorCode.BAD_MESSAGE, where, "nested too deeply")
        if isinstance(v, (list, tuple)):
            return [self.check(x, where, limits, _d + 1) for x in v]
        if isinstance(v, dict):
            out = {}
            for k, x in v.items():
                if not isinstance(k, str):
                    raise _fail(ErrorCode.BAD_MESSAGE, where, "keys must be strings")
                out[k] = self.check(x, where, limits, _d + 1)
            return out
        raise _fail(ErrorCode.BAD_MESSAGE, where, "unsupported value type %s"
                    % type(v).__name__)


def check_fields(v: Dict[str, Any], spec: Dict[str, Field], where: str,
                 limits: Limits, fill_defaults: bool = True) -> Dict[str, Any]:
    for k in v:
        if k not in spec:
            name = k if isinstance(k, str) else repr(k)
            raise ProtocolError(
                ErrorCode.UNKNOWN_FIELD,
                "%s: unknown field %r; update the plug-in and the daemon to the same "
                "dragd release" % (where, name[:64]), {"field": "%s.%s" % (where, name[:64])})
    out: Dict[str, Any] = {}
    for name, f in spec.items():
        w = "%s.%s" % (where, name)
        if name in v:
            out[name] = f.type.check(v[name], w, limits)
        elif f.required:
            raise _fail(ErrorCode.BAD_MESSAGE, w, "required field is missing")
        elif fill_defaults and f.default is not MISSING:
            # A map-typed default ({}) is expanded so its own defaults are filled in.
            out[name] = (f.type.check(f.default, w, limits) if isinstance(f.type, Map)
                         else f.default)
    return out


# ---------------------------------------------------------------------------
# Shared shapes
# ---------------------------------------------------------------------------

SESSION_ID = Str(1, 64)
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

# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------


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
         "invert": opt(INVERT)},
        frames={"image": FrameSpec(required=True)},
        check=_check_open_session, job=True,
        doc="Invert a layer (or its region of interest); returns a session id."),
    "drag": MessageSpec(
        {"session": req(SESSION_ID),
         "points": req(ListOf(PAIR, min_len=1, max_len_from=lambda l: l.max_points,
                              what="points")),
         "params": opt(DRAG_PARAMS)},
        frames={"mask": FrameSpec(required=False, channels=(1,))},
        check=_check_drag, job=True,
        doc="Move handles to targets; streams progress, returns the edited layer."),
    "undo": MessageSpec({"session": req(SESSION_ID), "steps": opt(Int(1, 1 << 20), 1)},
                        job=True, doc="Go back to an earlier finished drag."),
    "reset_points": MessageSpec({"session": req(SESSION_ID)}, job=True,
                                doc="Forget tracked handle features; next drag starts fresh."),
    "cancel": MessageSpec({"job": opt(JOB_ID), "request": opt(REQUEST_ID)},
                          check=_check_cancel,
                          doc="Cancel a queued or running job (by job id or request id)."),
    "close_session": MessageSpec({"session": req(SESSION_ID)}, job=True,
                                 doc="Free a session."),
}
# Fill DRAG_PARAMS / INVERT defaults even when the whole map is absent.
REQUESTS["drag"].fields["params"] = Field(DRAG_PARAMS, default={})
REQUESTS["open_session"].fields["invert"] = Field(INVERT, default={})

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
        "sessions": req(ListOf(SESSION_INFO, max_len=100000)),
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
        "message": req(Str(0, 4000)),
        "details": opt(ERROR_DETAILS),
        "job": opt(JOB_ID),
    }),
}
FINAL_TYPES = frozenset(("result", "error"))
REPLY_TYPES = frozenset(EVENTS) | {"result"}

# Fields of a progress event that a backend may set (the server adds 'job').
PROGRESS_FIELDS = frozenset(EVENTS["progress"].fields) - {"job"}

# ---------------------------------------------------------------------------
# Messages, encoding and decoding
# ---------------------------------------------------------------------------

ENVELOPE = ("v", "id", "type", "frames", "for")

FRAME_DESC = Map({
    "name": req(Str(1, 32)),
    "width": req(Int(0, None)),
    "height": req(Int(0, None)),
    "channels": req(Int(0, None)),
}, fill_defaults=False)


class Message:
    """A decoded message: ``type``, ``id``, ``fields`` (header minus envelope) and
    ``images`` (name -> :class:`Image`, data are zero-copy buffers of the frames).
    For ``result`` messages ``request_type`` names the request it answers."""

    __slots__ = ("type", "id", "fields", "images", "request_type")

    def __init__(self, type: str, id: Optional[str], fields: Dict[str, Any],
                 images: Optional[Dict[str, Image]] = None,
                 request_type: Optional[str] = None):
        self.type, self.id, self.fields = type, id, fields
        self.images = images or {}
        self.request_type = request_type

    def __getitem__(self, k: str) -> Any:
        return self.fields[k]

    def get(self, k: str, default: Any = None) -> Any:
        return self.fields.get(k, default)

    @property
    def image(self) -> Optional[Image]:
        return self.images.get("image")

    @property
    def final(self) -> bool:
        return self.type in FINAL_TYPES

    def __repr__(self) -> str:
        return "Message(%s id=%r %r %r)" % (self.type, self.id, self.fields, self.images)


def pack_header(header: Dict[str, Any]) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


def encode(type: str, id: Optional[str], fields: Optional[Dict[str, Any]] = None,
           images: Optional[Dict[str, Image]] = None,
           request_type: Optional[str] = None) -> List[Any]:
    """Build the frames of a message: [header, *pixel buffers]."""
    header: Dict[str, Any] = {"v": PROTOCOL_VERSION, "id": id, "type": type}
    if request_type is not None:
        header["for"] = request_type
    if fields:
        for k, v in fields.items():
            if k in ENVELOPE:
                raise ValueError("field name %r is reserved" % k)
            header[k] = v
    parts: List[Any] = [b""]
    if images:
        descs = []
        for name, img in images.items():
            n = buffer_nbytes(img.data)
            if n != img.nbytes:
                raise ProtocolError(ErrorCode.BAD_PIXELS, "image %r holds %d bytes, but "
                                    "%dx%dx%d needs %d" % (name, n, img.width, img.height,
                                                           img.channels, img.nbytes))
            descs.append(img.descriptor(name))
            parts.append(img.data)
        header["frames"] = descs
    parts[0] = pack_header(header)
    return parts


def error_fields(err: ProtocolError, job: Optional[str] = None) -> Dict[str, Any]:
    f = err.fields()
    if job is not None:
        f["job"] = job
    return f


def encode_error(id: Optional[str], err: ProtocolError, job: Optional[str] = None) -> List[Any]:
    return encode("error", id, error_fields(err, job))


def unpack_header(raw: Any, limits: Limits = DEFAULT_LIMITS) -> Dict[str, Any]:
    n = buffer_nbytes(raw)
    if n > limits.max_header_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, "the message header is %d bytes; at most %d "
                            "are allowed" % (n, limits.max_header_bytes))
    try:
        h = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True)
    except Exception as e:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "the message header is not valid "
                            "msgpack (%s); update the plug-in and the daemon to the same "
                            "dragd release" % type(e).__name__)
    if not isinstance(h, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "the message header must be a msgpack map")
    return h


def peek_id(h: Any) -> Optional[str]:
    """The request id of a (possibly invalid) header, if it is a usable one."""
    if isinstance(h, dict):
        rid = h.get("id")
        if isinstance(rid, str) and 1 <= len(rid) <= MAX_ID_LEN:
            return rid
    return None


def _check_version(h: Dict[str, Any]) -> None:
    if "v" not in h:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "the message has no protocol version "
                            "('v'); update the plug-in and the daemon to the same release")
    v = h["v"]
    if type(v) is not int or v != PROTOCOL_VERSION:
        shown = v if isinstance(v, (int, str)) and not isinstance(v, bool) else repr(v)[:20]
        raise ProtocolError(ErrorCode.VERSION_MISMATCH,
                            "this message speaks dragd protocol v%s but v%d is expected; "
                            "update the plug-in and the daemon to the same dragd release"
                            % (shown, PROTOCOL_VERSION),
                            {"expected": PROTOCOL_VERSION,
                             "got": v if isinstance(v, int) and not isinstance(v, bool)
                             else None})


def _decode_frames(h: Dict[str, Any], parts: Sequence[Any], specs: Dict[str, FrameSpec],
                   where: str, limits: Limits) -> Dict[str, Image]:
    descs = h.get("frames", [])
    if not isinstance(descs, list):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "%s.frames: expected a list" % where)
    if len(descs) > limits.max_frames:
        raise ProtocolError(ErrorCode.TOO_LARGE, "%s: %d pixel frames declared, at most %d"
                            % (where, len(descs), limits.max_frames))
    images: Dict[str, Image] = {}
    for i, d in enumerate(descs):
        w = "%s.frames[%d]" % (where, i)
        d = FRAME_DESC.check(d, w, limits)
        name = d["name"]
        if name not in specs:
            raise ProtocolError(ErrorCode.UNKNOWN_FIELD, "%s: %s does not take a pixel frame "
                                "named %r" % (w, where, name[:32]), {"field": w})
        if name in images:
            raise ProtocolError(ErrorCode.BAD_PIXELS, "%s: pixel frame %r declared twice"
                                % (w, name))
        width, height, ch = d["width"], d["height"], d["channels"]
        if ch not in specs[name].channels:
            raise ProtocolError(ErrorCode.BAD_PIXELS, "%s: %r must have %s channel(s), not %d"
                                % (w, name, " or ".join(map(str, specs[name].channels)), ch),
                                {"field": w})
        if width < 1 or height < 1:
            raise ProtocolError(ErrorCode.BAD_PIXELS, "%s: %r is %dx%d; an image needs at "
                                "least one pixel" % (w, name, width, height), {"field": w})
        if width > limits.max_side or height > limits.max_side \
                or width * height > limits.max_pixels:
            raise ProtocolError(ErrorCode.TOO_LARGE,
                                "%s: %r is %dx%d; the daemon accepts at most %d pixels a side "
                                "and %d pixels in all; use a region of interest or scale the "
                                "layer down" % (w, name, width, height, limits.max_side,
                                                limits.max_pixels),
                                {"field": w, "max_side": limits.max_side,
                                 "max_pixels": limits.max_pixels})
        images[name] = Image(None, width, height, ch)
    if len(parts) - 1 != len(descs):
        raise ProtocolError(ErrorCode.BAD_PIXELS, "%s: the header declares %d pixel frame(s) "
                            "but %d arrived" % (where, len(descs), len(parts) - 1))
    for (name, img), part in zip(images.items(), parts[1:]):
        n = buffer_nbytes(part)
        if n != img.nbytes:
            raise ProtocolError(ErrorCode.BAD_PIXELS,
                                "%s: pixel frame %r holds %d bytes but %dx%dx%d needs %d"
                                % (where, name, n, img.width, img.height, img.channels,
                                   img.nbytes), {"frame": name})
        img.data = part
    for name, fs in specs.items():
        if fs.required and name not in images:
            raise ProtocolError(ErrorCode.BAD_PIXELS, "%s: the %r pixel frame is missing"
                                % (where, name), {"frame": name})
    return images


def parse_request(parts: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> Message:
    """Validate a request (list of frames: header + pixel buffers). Raises ProtocolError;
    ``err.details['id']`` is the request id when one could be read."""
    if not parts:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "empty message")
    rid = None
    try:
        if len(parts) > 1 + limits.max_frames:
            raise ProtocolError(ErrorCode.TOO_LARGE, "the message has %d frames; at most %d "
                                "are allowed" % (len(parts), 1 + limits.max_frames))
        h = unpack_header(parts[0], limits)
        rid = peek_id(h)
        _check_version(h)
        t = h.get("type")
        if not isinstance(t, str):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "the message has no 'type'")
        spec = REQUESTS.get(t)
        if spec is None:
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, "unknown request type %r; update the "
                                "plug-in and the daemon to the same dragd release" % t[:40])
        if rid is None:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "%s: 'id' must be a string of 1 to %d "
                                "characters" % (t, MAX_ID_LEN))
        body = {k: v for k, v in h.items() if k not in ("v", "id", "type", "frames")}
        fields = check_fields(body, spec.fields, t, limits)
        images = _decode_frames(h, parts, spec.frames, t, limits)
        m = Message(t, rid, fields, images)
        if spec.check is not None:
            spec.check(m, limits)
        return m
    except ProtocolError as e:
        if rid is not None:
            e.details.setdefault("id", rid)
        raise


def parse_reply(parts: Sequence[Any], request_type: Optional[str] = None,
                limits: Optional[Limits] = None) -> Message:
    """Validate a reply or event from the daemon. ``request_type`` is the type of the
    request it answers (needed to check a ``result``; taken from the header's ``for``
    when not given)."""
    limits = limits or Limits(max_header_bytes=64 * 1024 * 1024, max_frames=64,
                              max_side=1 << 20, max_pixels=1 << 40)
    if not parts:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "empty reply")
    h = unpack_header(parts[0], limits)
    _check_version(h)
    t = h.get("type")
    rid = h.get("id")
    if rid is not None and not (isinstance(rid, str) and len(rid) <= MAX_ID_LEN):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "reply id must be a string or nil")
    rt = h.get("for")
    if request_type is None:
        request_type = rt if isinstance(rt, str) else None
    if t == "result":
        spec = RESULTS.get(request_type or "")
        if spec is None:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "result for unknown request type %r"
                                % request_type)
        where = "%s result" % request_type
    elif isinstance(t, str) and t in EVENTS:
        spec, where = EVENTS[t], t
    else:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "unknown reply type %r" % (t,))
    body = {k: v for k, v in h.items() if k not in ENVELOPE}
    fields = check_fields(body, spec.fields, where, limits, fill_defaults=False)
    images = _decode_frames(h, parts, spec.frames, where, limits)
    return Message(t, rid, fields, images, request_type=request_type)


def check_result(request_type: str, fields: Dict[str, Any],
                 images: Optional[Dict[str, Image]] = None) -> Dict[str, Any]:
    """Validate the fields of a result the daemon is about to send (backend output)."""
    spec = RESULTS[request_type]
    lim = Limits(max_side=1 << 20, max_pixels=1 << 40, max_frames=64)
    out = check_fields(fields, spec.fields, "%s result" % request_type, lim,
                       fill_defaults=False)
    _check_images(images or {}, spec.frames, "%s result" % request_type)
    return out


def check_event(type: str, fields: Dict[str, Any],
                images: Optional[Dict[str, Image]] = None) -> Dict[str, Any]:
    spec = EVENTS[type]
    lim = Limits(max_side=1 << 20, max_pixels=1 << 40, max_frames=64)
    out = check_fields(fields, spec.fields, type, lim, fill_defaults=False)
    _check_images(images or {}, spec.frames, type)
    return out


def _check_images(images: Dict[str, Image], specs: Dict[str, FrameSpec], where: str) -> None:
    for name, img in images.items():
        if name not in specs:
            raise ProtocolError(ErrorCode.INTERNAL, "%s: unexpected image %r" % (where, name))
        if not isinstance(img, Image):
            raise ProtocolError(ErrorCode.INTERNAL, "%s: %r is not an Image" % (where, name))
        if img.channels not in specs[name].channels or img.width < 1 or img.height < 1:
            raise ProtocolError(ErrorCode.INTERNAL, "%s: bad image shape %r" % (where, img))
        if buffer_nbytes(img.data) != img.nbytes:
            raise ProtocolError(ErrorCode.INTERNAL, "%s: image %r holds %d bytes, %r needs %d"
                                % (where, name, buffer_nbytes(img.data), img, img.nbytes))
    for name, fs in specs.items():
        if fs.required and name not in images:
            raise ProtocolError(ErrorCode.INTERNAL, "%s: image %r missing" % (where, name))


def split_images(d: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Image]]:
    """Separate Image values (pixel frames) from the plain fields of a dict."""
    fields, images = {}, {}
    for k, v in d.items():
        if isinstance(v, Image):
            images[k] = v
        else:
            fields[k] = v
    return fields, images


__all__ = [
    "PROTOCOL_VERSION", "ErrorCode", "ERROR_SENTENCES", "ERROR_CODES", "ProtocolError",
    "Limits", "DEFAULT_LIMITS", "Image", "Message", "REQUESTS", "RESULTS", "EVENTS",
    "JOB_TYPES", "FINAL_TYPES", "PROGRESS_FIELDS", "encode", "encode_error", "error_fields",
    "parse_request", "parse_reply", "unpack_header", "peek_id", "check_result",
    "check_event", "split_images", "pack_header",
]
