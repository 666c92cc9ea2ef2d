"""Pixel helpers (slicing runs at C speed: no per-pixel Python loop)."""
from __future__ import annotations

from typing import Optional


def to_rgba(data: bytes, channels: int, alpha: Optional[bytes] = None) -> bytes:
    """1 (gray), 3 (RGB) or 4 (RGBA) channel bytes as RGBA; ``alpha`` (RGBA bytes of the
    same size) supplies the alpha channel when given, else it is opaque / kept."""
    data = bytes(data)
    n = len(data) // channels
    if len(data) != n * channels:
        raise ValueError("%d bytes is not a whole number of %d-byte pixels"
                         % (len(data), channels))
    if channels == 4 and alpha is None:
        return data
    out = bytearray(b"\xff" * (4 * n))
    if channels in (3, 4):
        for c in range(3):
            out[c::4] = data[c::channels]
        if channels == 4:
            out[3::4] = data[3::4]
    elif channels == 1:
        for c in range(3):
            out[c::4] = data
    else:
        raise ValueError("unsupported channel count %d" % channels)
    if alpha is not None:
        if len(alpha) != 4 * n:
            raise ValueError("alpha source has %d bytes, expected %d" % (len(alpha), 4 * n))
        out[3::4] = alpha[3::4]
    return bytes(out)


def merge_alpha(result: bytes, channels: int, source_rgba: bytes) -> bytes:
    """RGB of ``result`` (3 or 4 channels, or 1 = gray) with the source's alpha: the drag
    moves content, the layer keeps its own transparency. A size mismatch is a
    ValueError."""
    return to_rgba(result, channels, alpha=source_rgba)
