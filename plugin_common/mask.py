"""The movable region: the selection over the layer -> :class:`MaskInfo`.

The hosts name their menu command differently ("Select > None" in GIMP, "Select \u25b8
Deselect" in Krita) and word the description of the mask differently: they pass the
command to :func:`make_mask` / :func:`check_handles_movable` and subclass
:class:`MaskInfo` for :meth:`MaskInfo.describe`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Type

from .errors import UserError
from .geometry import Arrow, Point, fmt_point

_NONZERO = re.compile(rb"[^\x00]")
#: Partial pixels beyond EDGE_FACTOR * sqrt(selected pixels) make a selection "feathered"
#: (soft) rather than one with an antialiased edge.
EDGE_FACTOR = 10.0
#: A selection byte -> the alpha of a live view's overlay: the unselected part dimmed, the
#: selected part clear (``mask.data.translate(DIM_ALPHA)``).
DIM_ALPHA = bytes(int((255 - v) * 0.55) for v in range(256))


@dataclass
class MaskInfo:
    """The movable region in layer coordinates (``data`` None = the whole layer)."""

    data: Optional[bytes]
    width: int
    height: int
    soft: bool = False
    coverage: float = 1.0

    #: describe() texts; %.0f%% takes the coverage in percent.
    WHOLE_TEXT = "no selection: the whole layer may move"
    SOFT_TEXT = "feathered selection (%.0f%% of the layer) may move"
    HARD_TEXT = "selection (%.0f%% of the layer) may move"

    @property
    def whole_layer(self) -> bool:
        return self.data is None

    def value_at(self, p: Point) -> int:
        if self.data is None:
            return 255
        x = min(max(int(p[0]), 0), self.width - 1)
        y = min(max(int(p[1]), 0), self.height - 1)
        return self.data[y * self.width + x]

    def region(self) -> Optional[Dict[str, int]]:
        """The selection's bounding box (every pixel it covers at all, feathered ones
        included) as the protocol's ``roi``; None for the whole layer. The daemon grows it
        by its own rule (a square with a margin, daemon/edit/image_prep.py square_box), so
        the working image is the selected part at the model's resolution, not the layer."""
        if self.data is None:
            return None
        w, h, data = self.width, self.height, self.data
        rows = [y for y in range(h) if data[y * w:(y + 1) * w].count(0) != w]
        if not rows:
            return None
        y0, y1 = rows[0], rows[-1] + 1
        x0, x1 = w, 0
        for y in range(y0, y1):
            row = data[y * w:(y + 1) * w]
            m = _NONZERO.search(row)
            if m is None:
                continue
            x0 = min(x0, m.start())
            x1 = max(x1, len(row.rstrip(b"\x00")))
        return {"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0}

    def describe(self) -> str:
        if self.data is None:
            return self.WHOLE_TEXT
        pct = 100.0 * self.coverage
        return (self.SOFT_TEXT if self.soft else self.HARD_TEXT) % pct


def make_mask(data: Optional[bytes], width: int, height: int, layer_name: str = "layer",
              *, deselect: str = "Select > None",
              mask_class: Type[MaskInfo] = MaskInfo) -> MaskInfo:
    """From the selection's coverage bytes over the layer (1 byte per pixel, 0..255), or
    None for no selection. A selection that covers the whole layer fully is the same as
    none; one that misses the layer is an error (naming the host's ``deselect``
    command)."""
    if data is None:
        return mask_class(None, width, height)
    data = bytes(data)
    n = width * height
    if len(data) != n:
        raise ValueError("mask has %d bytes, %dx%d needs %d" % (len(data), width, height, n))
    zeros = data.count(0)
    if zeros == n:
        raise UserError(
            "The selection does not cover any of the layer %r. Select the region that may "
            "move (%s lets the whole layer move)." % (layer_name, deselect))
    full = data.count(255)
    if full == n:
        return mask_class(None, width, height)
    partial, covered = n - zeros - full, n - zeros
    # An antialiased edge is about one partial pixel per edge pixel (>= 3.5 sqrt(area) for
    # any shape); feathering by f px gives ~7f sqrt(area) of them. Tiny masks: any counts.
    soft = partial > (EDGE_FACTOR * covered ** 0.5 if covered > 100 else 0)
    coverage = _mean_coverage(data) if soft else full / float(n)
    return mask_class(data, width, height, soft=soft, coverage=coverage)


def _mean_coverage(data: bytes) -> float:
    """Mean coverage 0..1 for the description's percentage: summing a large selection
    byte by byte takes a second of the host's UI thread (24 MB for 6000x4000), so a
    layer of more than a million pixels is sampled on an even grid of ~1 M of them."""
    step = max(1, len(data) // (1 << 20))
    sample = data[::step]
    return sum(sample) / (255.0 * len(sample))


def check_handles_movable(arrows: Sequence[Arrow], mask: MaskInfo, *,
                          handle_of: str = "handle of stroke",
                          deselect: str = "Select > None") -> None:
    """Every handle must lie where the mask lets it move; ``handle_of`` names the n-th
    handle in the host's words ("handle of stroke" -> "The handle of stroke 2")."""
    for n, a in enumerate(arrows, 1):
        if mask.value_at(a.handle) == 0:
            raise UserError(
                "The %s %d, at %s on the layer, lies outside the selection, where nothing "
                "may move. Enlarge the selection to include it, or %s."
                % (handle_of, n, fmt_point(a.handle), deselect))
