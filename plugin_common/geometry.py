"""Drag points in layer coordinates (continuous, x right, y down; the pixel in column i,
row j covers [i, i+1) x [j, j+1), as in the dragd protocol)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

Point = Tuple[float, float]


@dataclass(frozen=True)
class Arrow:
    """A handle->target pair in layer coordinates."""

    handle: Point
    target: Point

    def pair(self) -> Dict[str, List[float]]:
        return {"handle": [self.handle[0], self.handle[1]],
                "target": [self.target[0], self.target[1]]}


def fmt_point(p: Point) -> str:
    """A point for a message, to 0.1 px."""
    return "(%g, %g)" % (round(p[0], 1), round(p[1], 1))
