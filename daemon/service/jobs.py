"""Jobs and how each is carried out on the worker thread.

A `Job` is a queued request; `Dispatcher.run` turns it into backend calls, one small
method per job type, and keeps the session table in step (memory, history, eviction).
"""
from __future__ import annotations

import logging
import secrets
import time
from typing import Any, Callable, Dict, Optional, Set, Tuple

from ...protocol import ErrorCode, Image, Message, ProtocolError, split_images
from .backend import Backend, CancelToken, Cancelled
from .logfmt import kv
from .sessions import SessionTable

log = logging.getLogger("dragd.server")

Reply = Tuple[Dict[str, Any], Dict[str, Image]]


class Job:
    __slots__ = ("id", "peer", "request_id", "type", "msg", "session", "token", "state",
                 "step", "created", "started")

    def __init__(self, peer: bytes, msg: Message, session: Optional[str]):
        self.id = "j-" + secrets.token_hex(6)
        self.peer = peer
        self.request_id = msg.id
        self.type = msg.type
        self.msg = msg
        self.session = session
        self.token = CancelToken()
        self.state = "queued"
        self.step: Optional[int] = None
        self.created = time.monotonic()
        self.started = 0.0

    def info(self, position: Optional[int] = None) -> Dict[str, Any]:
        d: Dict[str, Any] = {"job": self.id, "type": self.type, "session": self.session,
                             "state": self.state}
        if position is not None:
            d["position"] = position
        if self.state == "running":
            d["step"] = self.step
            d["seconds"] = time.monotonic() - self.started
        return d


def plain(v: Any, depth: int = 0) -> Any:
    """Backend output to msgpack-able plain values (numpy scalars/arrays, tuples)."""
    if v is None or isinstance(v, (bool, int, float, str, Image)):
        return v
    if depth > 8:
        return str(v)
    if isinstance(v, (list, tuple)):
        return [plain(x, depth + 1) for x in v]
    if isinstance(v, dict):
        return {str(k): plain(x, depth + 1) for k, x in v.items()}
    if hasattr(v, "tolist"):            # numpy array / scalar, torch tensor
        return plain(v.tolist(), depth + 1)
    if hasattr(v, "item"):
        return plain(v.item(), depth + 1)
    return str(v)


def is_oom(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


class Dispatcher:
    """Runs jobs against the backend (worker thread only)."""

    def __init__(self, backend: Backend, sessions: SessionTable,
                 busy_sessions: Callable[[], Set[str]]):
        self.backend = backend
        self.sessions = sessions
        self._busy_sessions = busy_sessions       # sessions of queued jobs: never evicted
        self._handlers: Dict[str, Callable[[Job, Any, float], Reply]] = {
            "load_model": self._load_model, "open_session": self._open_session,
            "drag": self._drag, "undo": self._undo, "reset_points": self._reset_points,
            "close_session": self._close_session}

    def run(self, job: Job, progress: Any) -> Reply:
        if job.session is not None:
            self.sessions.get(job.session)      # closed or evicted while queued -> unknown_session
        handler = self._handlers.get(job.type)
        if handler is None:                     # pragma: no cover (the schema rejects it)
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE)
        return handler(job, progress, time.monotonic())

    def _load_model(self, job: Job, progress: Any, t0: float) -> Reply:
        m = job.msg
        r = plain(self.backend.load_model(m["model"], progress, job.token) or {})
        f = {"model": r.get("model", m["model"]), "resolution": r.get("resolution"),
             "seconds": time.monotonic() - t0}
        if r.get("info"):
            f["info"] = r["info"]
        return f, {}

    def _open_session(self, job: Job, progress: Any, t0: float) -> Reply:
        m, tok = job.msg, job.token
        img = m.images["image"]
        sid = "s-" + secrets.token_hex(8)
        settings = {"model": m.get("model"), "roi": m.get("roi"), "invert": m.get("invert", {})}
        r = plain(self.backend.open_session(sid, img.data, img.width, img.height, img.channels,
                                            settings, progress, tok) or {})
        if tok.reason in ("client_gone", "shutdown"):
            self.close_quietly(sid)
            raise Cancelled(tok.reason)
        f, images = split_images(r)
        nbytes = int(f.get("bytes") or img.nbytes)
        self.sessions.add(sid, img.width, img.height, img.channels, f.get("model"), nbytes)
        out = {"session": sid, "width": img.width, "height": img.height,
               "channels": img.channels, "model": f.get("model"),
               "resolution": f.get("resolution"), "roi": m.get("roi"),
               "seconds": time.monotonic() - t0, "bytes": nbytes}
        if f.get("info"):
            out["info"] = f["info"]
        self._evict(keep={sid})
        return out, images

    def _drag(self, job: Job, progress: Any, t0: float) -> Reply:
        m, sid = job.msg, job.session
        points = [((p["handle"][0], p["handle"][1]), (p["target"][0], p["target"][1]))
                  for p in m["points"]]
        mask = m.images.get("mask")
        r = plain(self.backend.drag(sid, points, mask.data if mask is not None else None,
                                    m["params"], progress, job.token))
        f, images = split_images(r)
        f["session"] = sid
        f["seconds"] = time.monotonic() - t0
        self.sessions.touch(sid, f.get("bytes"), f.get("history"))
        self._evict(keep={sid})
        return f, images

    def _undo(self, job: Job, progress: Any, t0: float) -> Reply:
        sid = job.session
        r = plain(self.backend.undo(sid, job.msg["steps"], progress, job.token))
        f, images = split_images(r)
        f["session"] = sid
        self.sessions.touch(sid, f.get("bytes"), f.get("history"))
        return f, images

    def _reset_points(self, job: Job, progress: Any, t0: float) -> Reply:
        self.backend.reset_points(job.session)
        self.sessions.touch(job.session)
        return {"session": job.session}, {}

    def _close_session(self, job: Job, progress: Any, t0: float) -> Reply:
        sid = job.session
        self.backend.close_session(sid)
        self.sessions.remove(sid, "closed")
        log.info(kv("session_closed", session=sid))
        return {"session": sid}, {}

    def close_quietly(self, sid: str) -> None:
        try:
            self.backend.close_session(sid)
        except Exception:
            log.exception(kv("close_failed", session=sid))

    def _evict(self, keep: Set[str]) -> None:
        for sid in self.sessions.victims(keep | self._busy_sessions()):
            self.close_quietly(sid)
            self.sessions.remove(sid, "evicted")
            log.info(kv("session_evicted", session=sid, budget=self.sessions.budget,
                        used=self.sessions.used))
