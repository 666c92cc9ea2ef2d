"""CurveZMQ key files: reading and formatting (pure Python, no zmq needed).

The files use the ZPL certificate layout that czmq and ``zmq.auth`` use, so keys made
by either tool work here and vice versa::

    NAME.key          public key only (safe to share; copy to the other side)
    NAME.key_secret   public + secret key (mode 0600, never share)

Keys are Z85 text, 40 characters.
"""
from __future__ import annotations

import os
import re
import time
from typing import Optional, Tuple, Union

Z85_ALPHABET = frozenset(
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")
KEY_LEN = 40
_LINE = re.compile(r'^\s*(public|secret)-key\s*=\s*"([^"]*)"\s*$')

KeyLike = Union[str, bytes]


def normalise_key(key: KeyLike, what: str = "key") -> bytes:
    """Z85 key as bytes; raises ValueError for anything that is not a 40-char Z85 key."""
    if isinstance(key, bytes):
        try:
            key = key.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("%s is not a Z85 CurveZMQ key" % what)
    if not isinstance(key, str):
        raise ValueError("%s must be a string" % what)
    key = key.strip()
    if len(key) != KEY_LEN or not set(key) <= Z85_ALPHABET:
        raise ValueError("%s is not a 40-character Z85 CurveZMQ key" % what)
    return key.encode("ascii")


def parse_key_text(text: str) -> Tuple[Optional[bytes], Optional[bytes]]:
    public = secret = None
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        key = normalise_key(m.group(2), "%s-key" % m.group(1))
        if m.group(1) == "public":
            public = key
        else:
            secret = key
    return public, secret


def read_key_file(path: Union[str, "os.PathLike[str]"]) -> Tuple[bytes, Optional[bytes]]:
    """(public, secret or None) from a ``.key`` / ``.key_secret`` file."""
    with open(path, "r", encoding="utf-8") as f:
        public, secret = parse_key_text(f.read(64 * 1024))
    if public is None:
        raise ValueError("%s holds no public-key line" % os.fspath(path))
    return public, secret


def format_key_file(public: KeyLike, secret: Optional[KeyLike] = None,
                    name: str = "dragd") -> str:
    public_s = normalise_key(public, "public key").decode()
    lines = [
        "#   ****  Generated on %s by dragd  ****" % time.strftime("%Y-%m-%d %H:%M:%S"),
        "#   ZeroMQ CURVE %s Certificate" % ("**Secret**" if secret else "Public"),
    ]
    if secret:
        lines.append("#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.")
    else:
        lines.append("#   Copy this file to the other side (daemon: its clients/ folder).")
    lines += ["", "metadata", '    name = "%s"' % name.replace('"', "'"), "curve",
              '    public-key = "%s"' % public_s]
    if secret:
        lines.append('    secret-key = "%s"' % normalise_key(secret, "secret key").decode())
    return "\n".join(lines) + "\n"
