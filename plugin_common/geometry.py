"""Drag points and boxes in layer coordinates (continuous, x right, y down; the pixel in
column i, row j covers [i, i+1) x [j, j+1), as in the dragd protocol), and how the live
views show a box."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

Point = Tuple[float, float]
Box = Tuple[float, float, float, float]          # x0, y0, x1, y1


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


def region_box(region: Optional[Dict[str, int]], width: int, height: int) -> Box:
    """The layer box of a protocol region (x, y, width, height); None: the whole layer."""
    if region is None:
        return (0.0, 0.0, float(width), float(height))
    return (float(region["x"]), float(region["y"]), float(region["x"] + region["width"]),
            float(region["y"] + region["height"]))


def view_crop(view: Box, box: Box, size: Tuple[int, int], scale: float
              ) -> Optional[Tuple[Tuple[int, int, int, int], Tuple[int, int], Tuple[int, int]]]:
    """How a picture of ``size`` (w, h) pixels covering the layer box ``box`` is shown in a
    view of the layer box ``view`` at ``scale`` view pixels per layer pixel: the part of it
    to cut (x, y, w, h in its pixels, inside it), where that part goes in the view (x, y)
    and the size to scale it to (w, h); None when the picture is outside the view."""
    vx0, vy0, vx1, vy1 = view
    fx0, fy0, fx1, fy1 = box
    ix0, iy0, ix1, iy1 = max(vx0, fx0), max(vy0, fy0), min(vx1, fx1), min(vy1, fy1)
    if ix1 <= ix0 or iy1 <= iy0:
        return None
    sx, sy = size[0] / (fx1 - fx0), size[1] / (fy1 - fy0)
    px, py = int(math.floor((ix0 - fx0) * sx)), int(math.floor((iy0 - fy0) * sy))
    pw = max(1, min(size[0] - px, int(math.ceil((ix1 - ix0) * sx))))
    ph = max(1, min(size[1] - py, int(math.ceil((iy1 - iy0) * sy))))
    at = (int(round((ix0 - vx0) * scale)), int(round((iy0 - vy0) * scale)))
    scaled = (max(1, int(round((ix1 - ix0) * scale))), max(1, int(round((iy1 - iy0) * scale))))
    return (px, py, pw, ph), at, scaled
