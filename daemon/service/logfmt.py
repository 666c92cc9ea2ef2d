"""The daemon's log lines: ``event=NAME key=value ...``, greppable and machine-readable.

Values often come from clients (request ids, model names, error sentences that quote a
field), so every one is cut to `MAX_VALUE_CHARS` and anything but printable ASCII is
escaped: a hostile client can neither flood the log nor write terminal control codes or
fake lines into it.
"""
from __future__ import annotations

import json
from typing import Any

MAX_VALUE_CHARS = 300

_PLAIN = frozenset(chr(c) for c in range(0x21, 0x7F)) - set('"=\\')


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "%.4g" % v
    if isinstance(v, (bytes, bytearray, memoryview)):
        v = bytes(v[:MAX_VALUE_CHARS]).hex()
    s = str(v)
    if len(s) > MAX_VALUE_CHARS:
        s = "%s...(%d chars)" % (s[:MAX_VALUE_CHARS], len(s))
    if not s or not _PLAIN.issuperset(s):
        return json.dumps(s)         # ensure_ascii: control and non-ASCII characters escaped
    return s


def kv(event: str, **fields: Any) -> str:
    """One log line: ``event=NAME key=value ...`` (values cut short; any with spaces,
    quotes or characters beyond printable ASCII JSON-quoted)."""
    return " ".join(["event=" + event] + ["%s=%s" % (k, _fmt(v)) for k, v in fields.items()
                                          if v is not None])


def peer_id(peer: bytes) -> str:
    """A short printable name for a ZeroMQ peer in log lines."""
    return peer.hex()[:12]
