"""The interface between the ZeroMQ server and whatever does the GPU work.

The server (``dragd.daemon.service.server``) knows nothing about torch: it hands a
:class:`Backend` plain Python values, bytes-like pixel buffers and ints, and gets plain
values and :class:`~dragd.protocol.Image` objects back. All methods except
``hello_info``, ``list_models`` and ``status`` run on the server's single worker thread
(the one that owns the GPU), one job at a time, so the backend needs no locking for
them. ``hello_info``, ``list_models`` and ``status`` are called from the socket thread
while a job may be running: they must be cheap and thread-safe (read cached state).

Progress: long methods receive ``progress(event, frames=None)``; call it whenever there
is something to report (typically once per optimisation step). ``event`` is a dict with
keys from::

    stage     str   "load" | "invert" | "tune" | "drag" | "undo" | ...   (required)
    step      int   0-based step counter                                 (required)
    total     int | None   the step limit, when known
    handles   [[x, y], ...]  current handle positions, layer pixels (drag)
    losses    {name: float}  e.g. {"motion": 0.31, "mask": 0.02, "total": 0.33}
    distance  float | None   mean handle->target distance, layer pixels
    message   str           a short human line ("inverting 120/450")

and ``frames`` an optional ``{"preview": Image}`` (a downscaled RGB(A) preview). The
server adds the job id and sends it to the client; invalid events are logged and
dropped, never fatal.

Cancellation: long methods receive a :class:`CancelToken`; check ``cancel.cancelled``
(or call ``cancel.check()``, which raises :class:`Cancelled`) between steps. A cancelled
``drag`` should return its partial result with ``stop="cancelled"`` (the session keeps
that state, as if the user had stopped the drag there); other methods raise Cancelled.

Errors: raise :class:`BackendError(code, message)` with a code from
``dragd.protocol.ErrorCode`` (``unknown_model``, ``no_model``, ``model_error``,
``bad_state``, ``bad_points``, ``out_of_memory``, ``unknown_session`` ...) and a
sentence the user can act on. Any other exception becomes an ``internal`` error (with
the traceback in the daemon log); ``MemoryError`` and torch's OutOfMemoryError become
``out_of_memory``.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ...protocol import ErrorCode, Image, ProtocolError

Point = Tuple[float, float]
PointPair = Tuple[Point, Point]            # (handle, target), layer pixel coordinates
ProgressFn = Callable[..., None]           # progress(event: dict, frames: dict | None = None)

__all__ = ["Backend", "BackendError", "Cancelled", "CancelToken", "NullBackend", "Image",
           "ProgressFn", "PointPair", "ErrorCode"]


class BackendError(ProtocolError):
    """Raise from a backend method to answer the client with ``code`` + ``message``."""


class Cancelled(Exception):
    """Raised by :meth:`CancelToken.check` when the job was cancelled."""

    def __init__(self, reason: str = "cancelled"):
        super().__init__(reason)
        self.reason = reason


class CancelToken:
    """Set by the server when the client cancels, disconnects, or the daemon stops.
    ``reason`` is "cancelled", "client_gone" or "shutdown"."""

    __slots__ = ("_event", "reason")

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: Optional[str] = None

    def cancel(self, reason: str = "cancelled") -> None:
        if self.reason is None:
            self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled(self.reason or "cancelled")

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True as soon as the token is cancelled."""
        return self._event.wait(seconds)


class Backend:
    """What the server needs from the engine. Subclass and override everything."""

    # -- called on the socket thread (cheap, thread-safe) -------------------

    def hello_info(self) -> Dict[str, Any]:
        """``{"device": "cuda:0 (NVIDIA H100)", "models": ["ffhq-512", ...],
        "loaded_model": "ffhq-512" | None, "info": {...free-form...}}``"""
        raise NotImplementedError

    def list_models(self) -> List[Dict[str, Any]]:
        """``[{"name": str, "resolution": int | None, "loaded": bool,
        "info": {...}}, ...]``"""
        raise NotImplementedError

    def status(self) -> Dict[str, Any]:
        """Free-form plain values for ``status.memory.backend``, e.g.
        ``{"device": "cuda:0", "allocated": 123, "reserved": 456}``."""
        return {}

    # -- called on the worker thread ----------------------------------------

    def load_model(self, name: str, progress: ProgressFn, cancel: CancelToken
                   ) -> Dict[str, Any]:
        """Load and make current. Returns ``{"model": name, "resolution": int,
        "info": {...}}``. Unknown name: BackendError("unknown_model", ...)."""
        raise NotImplementedError

    def open_session(self, session_id: str, image: Any, width: int, height: int,
                     channels: int, settings: Dict[str, Any], progress: ProgressFn,
                     cancel: CancelToken) -> Dict[str, Any]:
        """Invert a layer and keep what a drag needs under ``session_id``.

        ``image``: bytes-like, ``width*height*channels`` bytes, 8-bit row-major,
        channels 1 (L), 3 (RGB) or 4 (RGBA). ``settings``::

            {"model": str | None,                      # None: the loaded model
             "roi": {"x", "y", "width", "height"} | None,   # region to edit
             "invert": {"method": "pti" | "w" | "w+" | "none",
                        "w_steps": int | None, "tune_steps": int | None,
                        "lr": float | None, "tune_lr": float | None,
                        "seed": int | None},
             "reconstruction": "layer" | "none"}     # none: leave out "image"

        Returns ``{"model": str, "resolution": int, "bytes": int (memory this session
        holds, for the daemon's session budget), "info": {...} (optional, e.g.
        inversion losses), "image": Image (optional: the reconstruction, layer size)}``.
        """
        raise NotImplementedError

    def drag(self, session_id: str, points: Sequence[PointPair], mask: Optional[Any],
             params: Dict[str, Any], progress: ProgressFn, cancel: CancelToken
             ) -> Dict[str, Any]:
        """Run the drag loop from the session's current latent.

        ``points``: ``[((hx, hy), (tx, ty)), ...]`` floats, layer pixel coordinates
        (already checked to lie inside the layer). ``mask``: None or bytes-like L8 of
        ``width*height`` bytes (layer size; nonzero = may move). ``params`` (all keys
        present, defaults filled): max_steps int, lr float | None (None: model
        default), lambda_mask float, space "w" | "w+", tracking "l1" | "l2",
        preview_every int (0 = no previews), preview_max_size int, r1 float | None,
        r2 float | None, stop_distance float | None, stall_steps int (0 = never).

        Returns ``{"image": Image (full layer size, the session's channels),
        "handles": [[x, y], ...], "steps": int, "stop": "converged" | "max_steps" |
        "cancelled" | "stalled", "distance": float | None, "history": int (index of
        this state in the undo history), "bytes": int (optional, updated session
        size), "info": {...} (optional)}``. The result becomes the session's state.
        """
        raise NotImplementedError

    def undo(self, session_id: str, steps: int, progress: ProgressFn, cancel: CancelToken
             ) -> Dict[str, Any]:
        """Go back ``steps`` finished drags. Returns ``{"image": Image, "history": int,
        "handles": [[x, y], ...] (optional), "bytes": int (optional)}``; nothing to
        undo: BackendError("bad_state", ...)."""
        raise NotImplementedError

    def reset_points(self, session_id: str) -> None:
        """Forget tracked handle features; the next drag starts tracking afresh."""
        raise NotImplementedError

    def close_session(self, session_id: str) -> None:
        """Free everything held for the session (also used for eviction)."""
        raise NotImplementedError

    def trim_memory(self, budget: int) -> Optional[int]:
        """Drop what the backend caches beyond its sessions (e.g. inversions no session uses)
        until sessions and caches together hold at most ``budget`` bytes, or nothing is left
        to drop; return the bytes held then. None: the backend holds nothing but what its
        sessions report as ``bytes`` (the server then counts those)."""
        return None

    def release_memory(self, collect: bool = True) -> None:
        """Give freed memory back to the system (after running out of memory, after closing
        sessions); ``collect`` also runs the cycle collector, a pause that holds the GIL."""

    def close(self) -> None:
        """Called once when the server stops (after the worker finished)."""


class NullBackend(Backend):
    """A backend that does no work: sessions keep the layer, a drag returns it unchanged
    with the handles at their targets. For protocol smoke tests and benchmarks."""

    def __init__(self, device: str = "none", models: Sequence[str] = ("null",)):
        self.device = device
        self.models = list(models)
        self.loaded: Optional[str] = self.models[0] if self.models else None
        self.sessions: Dict[str, Image] = {}
        self._lock = threading.Lock()

    def hello_info(self) -> Dict[str, Any]:
        return {"device": self.device, "models": list(self.models),
                "loaded_model": self.loaded}

    def list_models(self) -> List[Dict[str, Any]]:
        return [{"name": m, "resolution": 512, "loaded": m == self.loaded}
                for m in self.models]

    def status(self) -> Dict[str, Any]:
        with self._lock:
            return {"sessions": len(self.sessions)}

    def load_model(self, name, progress, cancel):
        if name not in self.models:
            raise BackendError(ErrorCode.UNKNOWN_MODEL, "no model named %r; available: %s"
                               % (name, ", ".join(self.models)))
        self.loaded = name
        return {"model": name, "resolution": 512}

    def open_session(self, session_id, image, width, height, channels, settings,
                     progress, cancel):
        img = Image(image, width, height, channels)
        with self._lock:
            self.sessions[session_id] = img
        return {"model": settings.get("model") or self.loaded or "null", "resolution": 512,
                "bytes": img.nbytes}

    def drag(self, session_id, points, mask, params, progress, cancel):
        img = self._get(session_id)
        return {"image": img, "handles": [list(t) for _, t in points], "steps": 0,
                "stop": "converged", "distance": 0.0, "history": 0}

    def undo(self, session_id, steps, progress, cancel):
        return {"image": self._get(session_id), "history": 0}

    def reset_points(self, session_id):
        self._get(session_id)

    def close_session(self, session_id):
        with self._lock:
            self.sessions.pop(session_id, None)

    def _get(self, sid: str) -> Image:
        with self._lock:
            img = self.sessions.get(sid)
        if img is None:
            raise BackendError(ErrorCode.UNKNOWN_SESSION)
        return img
