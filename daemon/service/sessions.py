"""The sessions a daemon holds: memory accounting and LRU eviction beyond a byte budget."""
from __future__ import annotations

import collections
import threading
import time
from typing import Any, Dict, Iterable, List, Optional

from ...protocol import ErrorCode, ProtocolError


class _SessionRec:
    __slots__ = ("sid", "width", "height", "channels", "model", "nbytes", "last_used",
                 "history")

    def __init__(self, sid, width, height, channels, model, nbytes):
        self.sid, self.width, self.height, self.channels = sid, width, height, channels
        self.model, self.nbytes = model, int(nbytes)
        self.last_used = time.monotonic()
        self.history = 0


class SessionTable:
    """Sessions the daemon holds, their memory, and LRU eviction beyond a byte budget.
    Remembers recently evicted/closed ids so their ``unknown_session`` error can say why.
    Thread-safe."""

    def __init__(self, budget_bytes: int, max_tombstones: int = 4096):
        self.budget = int(budget_bytes)
        self._lock = threading.Lock()
        self._s: "collections.OrderedDict[str, _SessionRec]" = collections.OrderedDict()
        self._gone: "collections.OrderedDict[str, str]" = collections.OrderedDict()
        self._max_tombstones = max_tombstones

    def add(self, sid: str, width: int, height: int, channels: int, model: Optional[str],
            nbytes: int) -> None:
        with self._lock:
            self._s[sid] = _SessionRec(sid, width, height, channels, model, nbytes)

    def get(self, sid: str) -> _SessionRec:
        with self._lock:
            rec = self._s.get(sid)
            why = self._gone.get(sid)
        if rec is not None:
            return rec
        if why == "evicted":
            msg = ("session %s was evicted to free memory (the daemon keeps at most %d MiB "
                   "of sessions); open the layer again" % (sid, self.budget >> 20))
        elif why == "closed":
            msg = "session %s was closed; open the layer again" % sid
        else:
            why = "unknown"
            msg = ("the daemon has no session %s (it may have been restarted); open the "
                   "layer again" % sid)
        raise ProtocolError(ErrorCode.UNKNOWN_SESSION, msg, {"session": sid, "reason": why})

    def touch(self, sid: str, nbytes: Optional[int] = None,
              history: Optional[int] = None) -> None:
        with self._lock:
            rec = self._s.get(sid)
            if rec is None:
                return
            rec.last_used = time.monotonic()
            if nbytes is not None:
                rec.nbytes = int(nbytes)
            if history is not None:
                rec.history = int(history)
            self._s.move_to_end(sid)

    def remove(self, sid: str, why: str = "closed") -> None:
        with self._lock:
            if self._s.pop(sid, None) is not None:
                self._gone[sid] = why
                while len(self._gone) > self._max_tombstones:
                    self._gone.popitem(last=False)

    @property
    def used(self) -> int:
        with self._lock:
            return sum(r.nbytes for r in self._s.values())

    def victims(self, keep: Iterable[str]) -> List[str]:
        """Least recently used sessions to evict to get under budget (never ``keep``)."""
        keep = set(keep)
        with self._lock:
            used = sum(r.nbytes for r in self._s.values())
            out = []
            for sid, rec in self._s.items():      # oldest first
                if used <= self.budget:
                    break
                if sid in keep:
                    continue
                out.append(sid)
                used -= rec.nbytes
            return out

    def __contains__(self, sid: str) -> bool:
        with self._lock:
            return sid in self._s

    def __len__(self) -> int:
        with self._lock:
            return len(self._s)

    def describe(self) -> List[Dict[str, Any]]:
        now = time.monotonic()
        with self._lock:
            return [{"session": r.sid, "width": r.width, "height": r.height,
                     "channels": r.channels, "model": r.model, "bytes": r.nbytes,
                     "idle": max(0.0, now - r.last_used), "history": r.history}
                    for r in self._s.values()]
