"""Result layers: their names, and what a run remembers on them so that the next run on the
same pixels continues the edit.

The daemon continues an earlier edit, without inverting again, when it is given exactly
the layer it returned *with the same region* (docs/PROTOCOL.md, ``continues_edit``). The
region is the selection's box, and the user may well select something else (or nothing)
before dragging the result further, so each host tags its result layers with the region
the run used (a GIMP parasite, a Krita document annotation) and a run on a tagged layer
reuses it whenever the new selection and points fit inside.
"""
from __future__ import annotations

import json
import re
from typing import Any, Dict, Optional, Sequence

from .geometry import Arrow
from .mask import MaskInfo

RESULT_SUFFIX = " (dragged)"
# GIMP numbers a name that is taken ("art (dragged) #2"); such numbers and earlier
# suffixes are dropped before one suffix is added.
_SUFFIXES = re.compile(r"(?:\s+#\d+|%s)+$" % re.escape(RESULT_SUFFIX))

Region = Optional[Dict[str, int]]


def result_name(source_name: str) -> str:
    """"art" -> "art (dragged)"; a result dragged again keeps that name, not
    "art (dragged) #2 (dragged)"."""
    base = _SUFFIXES.sub("", source_name).strip()
    return base + RESULT_SUFFIX if base else source_name


def encode_result_tag(region: Region) -> bytes:
    """The tag a result layer carries: the region its run inverted (None: the whole
    layer)."""
    return json.dumps({"region": region}, sort_keys=True).encode("ascii")


def decode_result_tag(data: bytes) -> Optional[Dict[str, Any]]:
    """The tag back, or None for anything else (a foreign or damaged tag counts as none)."""
    try:
        tag = json.loads(bytes(data).decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(tag, dict) or "region" not in tag:
        return None
    r = tag["region"]
    if r is not None and not _is_region(r):
        return None
    return {"region": r}


def _is_region(r: Any) -> bool:
    keys = ("x", "y", "width", "height")
    return (isinstance(r, dict) and all(isinstance(r.get(k), int) for k in keys)
            and r["width"] >= 1 and r["height"] >= 1 and r["x"] >= 0 and r["y"] >= 0)


def _inside(r: Dict[str, int], x: float, y: float) -> bool:
    return r["x"] <= x <= r["x"] + r["width"] and r["y"] <= y <= r["y"] + r["height"]


def region_for(mask: MaskInfo, arrows: Sequence[Arrow], tag: Optional[Dict[str, Any]]
               ) -> Region:
    """The inversion region of a run: the selection's box, except on a layer an earlier
    run made (``tag``), where that run's region is kept when the selection's box and every
    handle and target lie inside it (a whole-layer region holds everything), so that the
    daemon continues the edit instead of inverting the result again."""
    box = mask.region()
    if tag is None:
        return box
    earlier = tag.get("region")
    if earlier is None:
        return None
    if box is not None and not (
            _inside(earlier, box["x"], box["y"])
            and _inside(earlier, box["x"] + box["width"], box["y"] + box["height"])):
        return box
    for a in arrows:
        if not (_inside(earlier, *a.handle) and _inside(earlier, *a.target)):
            return box
    return dict(earlier)
