"""The bounds a daemon enforces on requests; ``hello`` reports them to the client."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields as dc_fields
from typing import Any, Dict


@dataclass
class Limits:
    """Bounds the daemon enforces (reported by ``hello``); the client checks them too."""

    max_side: int = 16384            # widest/tallest layer, in pixels
    max_pixels: int = 64 * 1024 * 1024   # width * height
    max_points: int = 64             # handle->target pairs per drag
    max_frames: int = 4              # pixel frames per message
    max_header_bytes: int = 256 * 1024
    max_steps: int = 5000            # drag max_steps upper bound
    max_preview_size: int = 2048
    max_queue: int = 16              # queued jobs before 'busy'

    @property
    def max_frame_bytes(self) -> int:
        return self.max_pixels * 4

    @property
    def max_message_bytes(self) -> int:
        """Largest single ZeroMQ frame (ZMQ_MAXMSGSIZE)."""
        return max(self.max_frame_bytes, self.max_header_bytes)

    def to_dict(self) -> Dict[str, int]:
        d = asdict(self)
        d["max_message_bytes"] = self.max_message_bytes
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Limits":
        names = {f.name for f in dc_fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


DEFAULT_LIMITS = Limits()
