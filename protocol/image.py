"""Pixel frames: the raw 8-bit images that travel after a message's header."""
from __future__ import annotations

from typing import Any, Dict

from .errors import ErrorCode, ProtocolError

CHANNELS = (1, 3, 4)


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
