"""The daemon's log lines: ``event=NAME key=value ...``, greppable and machine-readable."""
from __future__ import annotations

import json
from typing import Any


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "%.4g" % v
    if isinstance(v, bytes):
        v = v.hex()
    s = str(v)
    if not s or any(c in s for c in ' "=\n\t'):
        return json.dumps(s)
    return s


def kv(event: str, **fields: Any) -> str:
    """One log line: ``event=NAME key=value ...`` (values with spaces JSON-quoted)."""
    return " ".join(["event=" + event] + ["%s=%s" % (k, _fmt(v)) for k, v in fields.items()
                                          if v is not None])


def peer_id(peer: bytes) -> str:
    """A short printable name for a ZeroMQ peer in log lines."""
    return peer.hex()[:12]
