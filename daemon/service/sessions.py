"""The sessions a daemon holds: memory, least-recently-used order, idle expiry, who used them.

Everything here is cheap whatever the number of sessions, because the socket thread reads it
(``status``) while the worker adds and evicts: the byte total is kept as sessions change, the
describe list is capped, and eviction, expiry and a peer's sessions are found from the LRU end
or an index, never by a full scan.
"""
from __future__ import annotations

import collections
import heapq
import hmac
import threading
import time
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from ...protocol import ErrorCode, ProtocolError

#: Why a session is gone, as ``unknown_session`` details.reason says it.
GONE_MESSAGES = {
    "evicted": "session %(sid)s was evicted to free memory (the daemon keeps at most %(mib)d MiB "
               "of sessions and cached inversions); open the layer again",
    "closed": "session %(sid)s was closed; open the layer again",
    "expired": "session %(sid)s was closed after %(idle)s without use; open the layer again",
    "client_gone": "session %(sid)s was closed because the client that used it disconnected; "
                   "open the layer again",
}


class _SessionRec:
    __slots__ = ("sid", "width", "height", "channels", "model", "nbytes", "last_used",
                 "history", "peer", "owner", "token")

    def __init__(self, sid, width, height, channels, model, nbytes, peer, owner, token):
        self.sid, self.width, self.height, self.channels = sid, width, height, channels
        self.model, self.nbytes = model, int(nbytes)
        self.last_used = time.monotonic()
        self.history = 0
        self.peer: Optional[bytes] = peer       # the client that used it last
        self.owner: str = owner                 # the client that opened it (Server._owner)
        self.token: Optional[str] = token       # what every request on it must show


class SessionTable:
    """Sessions the daemon holds, in least-recently-used order, with their memory and the peer
    that used each last. Remembers recently removed ids so their ``unknown_session`` error can
    say why. Thread-safe."""

    def __init__(self, budget_bytes: int, idle_seconds: float = 0.0, max_tombstones: int = 4096):
        self.budget = int(budget_bytes)
        self.idle_seconds = float(idle_seconds)     # 0: sessions never expire
        self._lock = threading.Lock()
        self._s: "collections.OrderedDict[str, _SessionRec]" = collections.OrderedDict()
        self._by_peer: Dict[bytes, Set[str]] = {}
        self._by_owner: Dict[str, Set[str]] = {}
        self._used = 0
        self.held: Optional[int] = None     # set by the worker from Backend.trim_memory
        # sid -> (why, token, owner): why it is gone is told only to its owner.
        self._gone: "collections.OrderedDict[str, tuple]" = collections.OrderedDict()
        self._max_tombstones = max_tombstones

    def add(self, sid: str, width: int, height: int, channels: int, model: Optional[str],
            nbytes: int, peer: Optional[bytes] = None, owner: str = "",
            token: Optional[str] = None) -> None:
        with self._lock:
            rec = _SessionRec(sid, width, height, channels, model, nbytes, peer, owner, token)
            self._s[sid] = rec
            self._by_owner.setdefault(owner, set()).add(sid)
            self._used += rec.nbytes
            self._index(rec, peer)

    def check(self, sid: str, token: Optional[str], owner: Optional[str] = None
              ) -> _SessionRec:
        """The session, for a request that shows its token and (where ``owner`` is given,
        with CurveZMQ) comes from the client that opened it. Anyone else gets the error of a
        session that never existed, so nobody learns which ids are in use."""
        with self._lock:
            rec = self._s.get(sid)
            gone = self._gone.get(sid)
        held = (rec.token, rec.owner) if rec is not None else gone[1:] if gone else None
        if (held is None or held[0] is None or not isinstance(token, str)
                or not hmac.compare_digest(held[0], token)
                or (owner is not None and held[1] != owner)):
            raise _unknown(sid)
        return self.get(sid)

    def get(self, sid: str) -> _SessionRec:
        with self._lock:
            rec = self._s.get(sid)
            gone = self._gone.get(sid)
        if rec is not None:
            return rec
        why = gone[0] if gone else None
        if why in GONE_MESSAGES:
            msg = GONE_MESSAGES[why] % {"sid": sid, "mib": self.budget >> 20,
                                        "idle": _minutes(self.idle_seconds)}
        else:
            raise _unknown(sid)
        raise ProtocolError(ErrorCode.UNKNOWN_SESSION, msg, {"session": sid, "reason": why})

    def touch(self, sid: str, nbytes: Optional[int] = None, history: Optional[int] = None,
              peer: Optional[bytes] = None) -> None:
        with self._lock:
            rec = self._s.get(sid)
            if rec is None:
                return
            rec.last_used = time.monotonic()
            if nbytes is not None:
                self._used += int(nbytes) - rec.nbytes
                rec.nbytes = int(nbytes)
            if history is not None:
                rec.history = int(history)
            if peer is not None:
                self._index(rec, peer)
            self._s.move_to_end(sid)

    def remove(self, sid: str, why: str = "closed") -> bool:
        with self._lock:
            rec = self._s.pop(sid, None)
            if rec is None:
                return False
            self._used -= rec.nbytes
            self._index(rec, None)
            mine = self._by_owner.get(rec.owner)
            if mine is not None:
                mine.discard(sid)
                if not mine:
                    del self._by_owner[rec.owner]
            self._gone[sid] = (why, rec.token, rec.owner)
            while len(self._gone) > self._max_tombstones:
                self._gone.popitem(last=False)
            return True

    def _index(self, rec: _SessionRec, peer: Optional[bytes]) -> None:
        if rec.peer is not None and rec.peer != peer:
            mine = self._by_peer.get(rec.peer)
            if mine is not None:
                mine.discard(rec.sid)
                if not mine:
                    del self._by_peer[rec.peer]
        rec.peer = peer
        if peer is not None:
            self._by_peer.setdefault(peer, set()).add(rec.sid)

    @property
    def used(self) -> int:
        """Bytes held for sessions: what the backend last counted (with the inversion cache,
        shared generators once), else what the sessions report for themselves."""
        with self._lock:
            return self._used if self.held is None else self.held

    def lru(self, keep: Iterable[str]) -> Optional[str]:
        """The least recently used session not in ``keep`` (None if there is none)."""
        keep = set(keep)
        with self._lock:
            for sid in self._s:              # oldest first; ``keep`` is a few busy sessions
                if sid not in keep:
                    return sid
        return None

    def victims(self, keep: Iterable[str]) -> List[str]:
        """Least recently used sessions (never ``keep``) to evict to get the sessions' own bytes
        under budget: for a backend that holds nothing but what its sessions report."""
        keep = set(keep)
        with self._lock:
            used = self._used
            out = []
            for sid, rec in self._s.items():      # oldest first
                if used <= self.budget:
                    break
                if sid not in keep:
                    out.append(sid)
                    used -= rec.nbytes
            return out

    def idle(self, keep: Iterable[str], now: Optional[float] = None) -> List[str]:
        """Sessions unused for longer than ``idle_seconds`` (not ``keep``), oldest first."""
        if self.idle_seconds <= 0:
            return []
        keep = set(keep)
        cutoff = (time.monotonic() if now is None else now) - self.idle_seconds
        out = []
        with self._lock:
            for sid, rec in self._s.items():
                if rec.last_used > cutoff:
                    break                    # LRU order: the rest were used more recently
                if sid not in keep:
                    out.append(sid)
        return out

    def of_peer(self, peer: bytes) -> List[str]:
        """Sessions the peer used last."""
        with self._lock:
            return sorted(self._by_peer.get(peer, ()))

    def __contains__(self, sid: str) -> bool:
        with self._lock:
            return sid in self._s

    def __len__(self) -> int:
        with self._lock:
            return len(self._s)

    def describe(self, owner: str, limit: int) -> Tuple[List[Dict[str, Any]], int]:
        """The ``limit`` most recently used sessions of ``owner``, newest first, and how many
        sessions belong to anyone else."""
        now = time.monotonic()
        with self._lock:
            mine = [self._s[sid] for sid in self._by_owner.get(owner, ())]
            others = len(self._s) - len(mine)
        newest = heapq.nlargest(limit, mine, key=lambda r: r.last_used)
        return [{"session": r.sid, "width": r.width, "height": r.height,
                 "channels": r.channels, "model": r.model, "bytes": r.nbytes,
                 "idle": max(0.0, now - r.last_used), "history": r.history}
                for r in newest], others


def _unknown(sid: str) -> ProtocolError:
    return ProtocolError(ErrorCode.UNKNOWN_SESSION, "the daemon has no session %s (it may have "
                         "been restarted); open the layer again" % sid,
                         {"session": sid, "reason": "unknown"})


def _minutes(seconds: float) -> str:
    if seconds >= 120:
        return "%d minutes" % round(seconds / 60)
    return "%d seconds" % round(seconds)
