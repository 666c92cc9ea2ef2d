"""Jobs and how each is carried out on the worker thread.

A `Job` is a queued request; `Dispatcher.run` turns it into backend calls, one small
method per job type, and keeps the session table in step (memory, history, eviction).
"""
from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
from typing import Any, Callable, Dict, Optional, Set, Tuple

from ...protocol import ErrorCode, Image, Message, ProtocolError, split_images
from .backend import Backend, CancelToken, Cancelled
from .logfmt import kv
from .sessions import SessionTable

log = logging.getLogger("dragd.server")

Reply = Tuple[Dict[str, Any], Dict[str, Image]]


class Job:
    __slots__ = ("id", "peer", "owner", "request_id", "type", "msg", "session", "token",
                 "state", "step", "created", "started")

    def __init__(self, peer: bytes, msg: Message, session: Optional[str], owner: str = ""):
        self.id = "j-" + secrets.token_hex(6)
        self.peer = peer
        self.owner = owner              # who may see and cancel it (Server._owner)
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
    """MemoryError, torch.cuda.OutOfMemoryError, or torch's CPU allocator failing (a plain
    RuntimeError: "DefaultCPUAllocator: can't allocate memory: you tried to allocate ...")."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text
                                            or "can't allocate memory" in text)


class Dispatcher:
    """Runs jobs against the backend (worker thread only)."""

    def __init__(self, backend: Backend, sessions: SessionTable,
                 busy_sessions: Callable[[], Set[str]]):
        self.backend = backend
        self.sessions = sessions
        self._busy_sessions = busy_sessions       # sessions of queued jobs: never evicted
        # Sessions taken out of the table on the socket thread (their client is gone), for the
        # worker to free in the backend.
        self._doomed: "collections.deque[str]" = collections.deque()
        self._doomed_lock = threading.Lock()
        self._last_sweep = time.monotonic()
        self._handlers: Dict[str, Callable[[Job, Any, float], Reply]] = {
            "load_model": self._load_model, "open_session": self._open_session,
            "drag": self._drag, "undo": self._undo, "reset_points": self._reset_points,
            "close_session": self._close_session}

    def run(self, job: Job, progress: Any) -> Reply:
        self.housekeeping(keep={job.session} if job.session else set())
        if job.session is not None:
            self.sessions.get(job.session)      # closed or evicted while queued -> unknown_session
            self.sessions.touch(job.session, peer=job.peer)
        handler = self._handlers.get(job.type)
        if handler is None:                     # pragma: no cover (the schema rejects it)
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE)
        try:
            return handler(job, progress, time.monotonic())
        except Exception as e:
            if not is_oom(e):
                raise
            log.error(kv("out_of_memory", job=job.id, type=job.type, error=str(e)[:200]))
        # Out of the except block, so the traceback's frames (and the tensors they hold) are gone.
        self.backend.release_memory()
        raise ProtocolError(ErrorCode.OUT_OF_MEMORY)

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
        # The capability every later request on the session must show (the id alone is
        # not a secret: the daemon logs it).
        token = secrets.token_urlsafe(24)
        settings = {"model": m.get("model"), "roi": m.get("roi"), "invert": m.get("invert", {}),
                    "align": m.get("align", "auto"),
                    "reconstruction": m.get("reconstruction", "layer")}
        r = plain(self.backend.open_session(sid, img.data, img.width, img.height, img.channels,
                                            settings, progress, tok) or {})
        if tok.reason in ("client_gone", "shutdown"):
            self.close_quietly(sid)
            raise Cancelled(tok.reason)
        f, images = split_images(r)
        nbytes = int(f.get("bytes") or img.nbytes)
        self.sessions.add(sid, img.width, img.height, img.channels, f.get("model"), nbytes,
                          peer=job.peer, owner=job.owner, token=token)
        out = {"session": sid, "token": token, "width": img.width, "height": img.height,
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
        """Get what sessions and the backend's caches hold under the budget: the backend first
        drops cached entries no session uses, then least recently used sessions go, one at a
        time (closing one may leave its tuned generator to the cache alone, for the next trim)."""
        keep = keep | self._busy_sessions()
        budget = self.sessions.budget
        while True:
            held = self.backend.trim_memory(budget)
            self.sessions.held = held
            if held is None:                    # it holds nothing beyond its sessions' bytes
                for sid in self.sessions.victims(keep):
                    self._drop(sid, "evicted")
                return
            if held <= budget:
                return
            sid = self.sessions.lru(keep)
            if sid is None:
                return
            self._drop(sid, "evicted")

    def _drop(self, sid: str, why: str) -> None:
        self.close_quietly(sid)
        self.sessions.remove(sid, why)
        log.info(kv("session_" + why, session=sid, budget=self.sessions.budget,
                    used=self.sessions.used))

    def peer_gone(self, peer: bytes) -> None:
        """The peer disconnected (socket thread): the sessions it used last are closed at
        once for requests, and freed by the worker at its next chance."""
        for sid in self.sessions.of_peer(peer):
            if self.sessions.remove(sid, "client_gone"):
                with self._doomed_lock:
                    self._doomed.append(sid)
                log.info(kv("session_client_gone", session=sid))

    def housekeeping(self, keep: Set[str] = frozenset()) -> None:
        """Free sessions whose client is gone, and (at most once a second) those idle past the
        limit; then give their memory back. Worker thread, between jobs."""
        freed = False
        while True:
            with self._doomed_lock:
                if not self._doomed:
                    break
                sid = self._doomed.popleft()
            self.close_quietly(sid)
            freed = True
        now = time.monotonic()
        if now - self._last_sweep >= 1.0:
            self._last_sweep = now
            for sid in self.sessions.idle(keep | self._busy_sessions(), now):
                self._drop(sid, "expired")
                freed = True
        if freed:
            self._evict(set(keep))          # recount: the cache may now hold their generators
            # No cycle collection here: its pause would stall the socket thread (status) too.
            self.backend.release_memory(collect=False)
