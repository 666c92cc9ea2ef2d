"""The editing-session model of the Krita plug-in: pure Python (no krita, no Qt, no zmq).

What lives here, unit-tested without a host (tests/test_krita_glue.py):

* :class:`DragSettings`: the docker's fields (model, step limit, learning rate, lambda,
  W/W+, inversion quality, daemon address, live preview) and what they become on the wire;
* arrows: vector-layer shapes -> handle->target :class:`Arrow` s in LAYER pixels
  (:func:`arrows_from_shapes`). Krita keeps shapes in points (1/72 inch); a shape's
  ``toSvg()`` holds its outline in the shape's local coordinates and
  ``absoluteTransformation()`` maps local coordinates to document points (it includes the
  shape's own transform, its group's and the vector layer's offset). Document pixels are
  points x resolution / 72; layer pixels are document pixels minus the layer rectangle's
  top-left corner (:class:`LayerRect`);
* the movable mask from the selection (:func:`make_mask`) and pixel helpers: Krita's
  BGRA byte order <-> the protocol's RGBA (:func:`bgra_to_rgba`, :func:`rgba_to_bgra`),
  keeping the source's alpha (:func:`merge_alpha`), copying unselected pixels of a
  converted layer back bit for bit (:func:`splice_by_mask`);
* the job model (:class:`JobModel`): the shared state of one run, worded for the docker.

The host-independent parts both plug-ins share (the drag fields, arrows, the mask, the
job model's event handling, pixels, errors) live in ``..plugin_common``; this module
adds what is Krita's own (shapes, BGRA, messages) and re-exports the rest.

Coordinates: continuous, x right, y down; the pixel in column i, row j covers
[i, i+1) x [j, j+1). The dragd protocol uses the same convention in layer coordinates.
"""
from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..plugin_common import (ALIGN_MODES, ALIGN_SWITCH, CLOSE_TIMEOUT,  # noqa: F401
                             CONNECT_TIMEOUT, DEFAULT_ENDPOINT, INVERSION_QUALITIES, METHODS,
                             OPEN_WEIGHT, PASTE_MODES, PREVIEW_LAYER_NAME, SPACES, START_COMMAND,
                             STOP_GRACE, Arrow, BaseDragSettings, BaseJobModel, Cancelled,
                             Outcome, Point, UserError, merge_alpha, to_rgba)
from ..plugin_common import MaskInfo as _CommonMaskInfo
from ..plugin_common import check_handles_movable as _check_handles_movable
from ..plugin_common import fmt_point as _fmt
from ..plugin_common import make_mask as _make_mask
from ..plugin_common.results import result_name  # noqa: F401

ARROWS_LAYER_NAME = "drag"
CLIENT_NAME = "dragd-krita"
SRGB_PROFILE = "sRGB-elle-V2-srgbtrc.icc"

# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------


@dataclass
class DragSettings(BaseDragSettings):
    """What the docker edits: the shared drag fields
    (:class:`~..plugin_common.BaseDragSettings`); ``learning_rate`` 0 = the model's
    default."""

    def validate(self) -> "DragSettings":
        if not (1 <= int(self.max_steps) <= 5000):
            raise UserError("The step limit must be between 1 and 5000, not %s."
                            % self.max_steps)
        if not (0.0 <= float(self.learning_rate) <= 1.0):
            raise UserError("The learning rate must be between 0 (the model's default) and "
                            "1, not %s." % self.learning_rate)
        if not (0.0 <= float(self.lambda_mask) <= 1e6):
            raise UserError("\u03bb must be between 0 and 1000000, not %s." % self.lambda_mask)
        if self.space not in SPACES:
            raise UserError("The latent space must be W or W+, not %r." % self.space)
        if self.method not in METHODS:
            raise UserError("The drag method must be one of %s, not %r."
                            % (", ".join(METHODS), self.method))
        if self.inversion not in INVERSION_QUALITIES:
            raise UserError("The inversion quality must be one of %s, not %r."
                            % (", ".join(INVERSION_QUALITIES), self.inversion))
        if self.paste not in PASTE_MODES:
            raise UserError("The result pixels must be one of %s, not %r."
                            % (", ".join(PASTE_MODES), self.paste))
        if self.align not in ALIGN_MODES:
            raise UserError("The face alignment must be one of %s, not %r."
                            % (", ".join(ALIGN_MODES), self.align))
        ep = (self.endpoint or "").strip()
        if not ep:
            raise UserError("The daemon address is empty; the default is %s."
                            % DEFAULT_ENDPOINT)
        if not re.match(r"^(tcp|ipc|inproc)://.+", ep):
            raise UserError("The daemon address %r is not a ZeroMQ address such as %s."
                            % (ep, DEFAULT_ENDPOINT))
        self.endpoint = ep
        self.model = (self.model or "").strip()
        return self

    # -- persistence (Krita.readSetting/writeSetting store strings) -------------

    def to_strings(self) -> Dict[str, str]:
        return {k: ("true" if v is True else "false" if v is False else str(v))
                for k, v in asdict(self).items()}

    @classmethod
    def from_strings(cls, values: Dict[str, Optional[str]]) -> "DragSettings":
        """From stored strings; anything missing or unreadable keeps its default."""
        s = cls()
        for f in fields(cls):
            raw = values.get(f.name)
            if raw is None or raw == "":
                continue
            default = getattr(s, f.name)
            try:
                if isinstance(default, bool):
                    v: Any = str(raw).strip().lower() in ("1", "true", "yes", "on")
                elif isinstance(default, int):
                    v = int(float(raw))
                elif isinstance(default, float):
                    v = float(raw)
                else:
                    v = str(raw)
            except ValueError:
                continue
            setattr(s, f.name, v)
        try:
            return s.validate()
        except UserError:
            return cls()


# ---------------------------------------------------------------------------
# Geometry: affine transforms, SVG paths, shapes -> arrows
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Affine:
    """x' = a*x + c*y + e, y' = b*x + d*y + f (SVG's matrix(a b c d e f); Qt's QTransform
    m11=a, m12=b, m21=c, m22=d, dx=e, dy=f)."""

    a: float = 1.0
    b: float = 0.0
    c: float = 0.0
    d: float = 1.0
    e: float = 0.0
    f: float = 0.0

    @classmethod
    def from_qtransform(cls, t: Any) -> "Affine":
        return cls(t.m11(), t.m12(), t.m21(), t.m22(), t.dx(), t.dy())

    def map(self, p: Point) -> Point:
        x, y = p
        return (self.a * x + self.c * y + self.e, self.b * x + self.d * y + self.f)

    def then(self, outer: "Affine") -> "Affine":
        """The transform that applies self first, then ``outer``."""
        o = outer
        return Affine(o.a * self.a + o.c * self.b, o.b * self.a + o.d * self.b,
                      o.a * self.c + o.c * self.d, o.b * self.c + o.d * self.d,
                      o.a * self.e + o.c * self.f + o.e, o.b * self.e + o.d * self.f + o.f)


_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_NUM_RE = re.compile(_NUM)
_PATH_TOKEN = re.compile(r"([MmLlHhVvCcSsQqTtAaZz])|(%s)" % _NUM)
_ARGS = {"M": 2, "L": 2, "H": 1, "V": 1, "C": 6, "S": 4, "Q": 4, "T": 2, "A": 7, "Z": 0}


def parse_transform(text: Optional[str]) -> Affine:
    """An SVG transform attribute (matrix, translate, scale, rotate, skewX, skewY)."""
    result = Affine()
    if not text:
        return result
    for name, args in re.findall(r"([a-zA-Z]+)\s*\(([^)]*)\)", text):
        v = [float(x) for x in _NUM_RE.findall(args)]
        if name == "matrix" and len(v) == 6:
            t = Affine(*v)
        elif name == "translate" and v:
            t = Affine(e=v[0], f=v[1] if len(v) > 1 else 0.0)
        elif name == "scale" and v:
            t = Affine(a=v[0], d=v[1] if len(v) > 1 else v[0])
        elif name == "rotate" and v:
            r = math.radians(v[0])
            t = Affine(math.cos(r), math.sin(r), -math.sin(r), math.cos(r))
            if len(v) == 3:
                t = Affine(e=-v[1], f=-v[2]).then(t).then(Affine(e=v[1], f=v[2]))
        elif name == "skewX" and v:
            t = Affine(c=math.tan(math.radians(v[0])))
        elif name == "skewY" and v:
            t = Affine(b=math.tan(math.radians(v[0])))
        else:
            raise ValueError("unsupported transform %r" % text)
        # "A B" in an attribute means x -> A(B(x)): B applies first.
        result = t.then(result)
    return result


@dataclass
class SubPath:
    points: List[Point]          # the on-curve points (anchors), in order
    closed: bool = False


def parse_path_data(d: str) -> List[SubPath]:
    """The subpaths of SVG path data, each as its on-curve points (control points of
    curves are skipped: an arrow is its first and last anchor)."""
    tokens = _PATH_TOKEN.findall(d or "")
    subpaths: List[SubPath] = []
    cur: Optional[SubPath] = None
    x = y = 0.0
    start = (0.0, 0.0)
    cmd = ""
    i = 0
    n = len(tokens)
    while i < n:
        c, num = tokens[i]
        if c:
            cmd = c
            i += 1
            if cmd in "Zz":
                if cur is not None:
                    cur.closed = True
                x, y = start
                cur = None
                continue
        elif not cmd:
            raise ValueError("path data does not start with a command: %r" % d[:40])
        k = _ARGS[cmd.upper()]
        args = []
        while len(args) < k:
            if i >= n or tokens[i][0]:
                raise ValueError("path command %s needs %d numbers: %r" % (cmd, k, d[:60]))
            args.append(float(tokens[i][1]))
            i += 1
        rel = cmd.islower()
        up = cmd.upper()
        if up == "M":
            nx, ny = (x + args[0], y + args[1]) if rel else (args[0], args[1])
            cur = SubPath([(nx, ny)])
            subpaths.append(cur)
            start = (nx, ny)
            x, y = nx, ny
            cmd = "l" if rel else "L"      # further pairs are implicit line-tos
            continue
        if up == "H":
            nx, ny = (x + args[0] if rel else args[0]), y
        elif up == "V":
            nx, ny = x, (y + args[0] if rel else args[0])
        else:
            nx, ny = args[-2], args[-1]
            if rel:
                nx, ny = x + nx, y + ny
        if cur is None:                    # drawing after Z: a new subpath at the start
            cur = SubPath([(x, y)])
            subpaths.append(cur)
        cur.points.append((nx, ny))
        x, y = nx, ny
    return subpaths


_XML_PREFIXES = {
    "sodipodi": "http://sodipodi.sourceforge.net/DTD/sodipodi-0.dtd",
    "inkscape": "http://www.inkscape.org/namespaces/inkscape",
    "krita": "http://krita.org/namespaces/svg/krita",
    "xlink": "http://www.w3.org/1999/xlink",
}


def _parse_svg_fragment(svg: str) -> ET.Element:
    ns = " ".join('xmlns:%s="%s"' % kv for kv in _XML_PREFIXES.items())
    wrapped = '<svg xmlns="http://www.w3.org/2000/svg" %s>%s</svg>' % (ns, svg)
    try:
        return ET.fromstring(wrapped)
    except ET.ParseError:
        # Some other prefixed attribute: drop every prefixed attribute and retry.
        stripped = re.sub(r'\s[A-Za-z_][\w.-]*:[\w.-]+="[^"]*"', "", svg)
        return ET.fromstring('<svg xmlns="http://www.w3.org/2000/svg">%s</svg>' % stripped)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def svg_subpaths(svg: str) -> Tuple[List[Tuple[SubPath, Affine]], List[str]]:
    """Subpaths of a shape's ``toSvg()`` with the transform from the element's coordinates
    to the SHAPE's local coordinates (the outermost element's own transform, which is the
    shape's transformation(), is left out: absoluteTransformation() replaces it). Returns
    (subpaths, kinds of the elements that are not lines or paths)."""
    root = _parse_svg_fragment(svg)
    out: List[Tuple[SubPath, Affine]] = []
    other: List[str] = []

    def walk(el: ET.Element, t: Affine, outermost: bool) -> None:
        tag = _local(el.tag)
        if not outermost:
            t = parse_transform(el.get("transform")).then(t)
        if tag == "g":
            for child in el:
                walk(child, t, False)
        elif tag == "path":
            for sp in parse_path_data(el.get("d", "")):
                out.append((sp, t))
        elif tag == "line":
            p = [float(el.get(k, "0") or 0) for k in ("x1", "y1", "x2", "y2")]
            out.append((SubPath([(p[0], p[1]), (p[2], p[3])]), t))
        elif tag in ("polyline", "polygon"):
            v = [float(s) for s in _NUM_RE.findall(el.get("points", ""))]
            pts = list(zip(v[0::2], v[1::2]))
            out.append((SubPath(pts, closed=tag == "polygon"), t))
        elif tag not in ("title", "desc", "defs", "metadata", "marker"):
            other.append(tag)

    for child in root:
        walk(child, Affine(), True)
    return out, other


@dataclass(frozen=True)
class LayerRect:
    """The part of a paint layer that is sent to the daemon, in document pixels: the
    layer's content bounds clipped to the canvas. Layer coordinates are document
    coordinates minus (x, y)."""

    name: str
    x: int
    y: int
    width: int
    height: int

    def describe(self) -> str:
        return "%r (%dx%d at %d,%d)" % (self.name, self.width, self.height, self.x, self.y)

    @classmethod
    def clip(cls, name: str, bounds: Tuple[int, int, int, int], doc_width: int,
             doc_height: int) -> "LayerRect":
        """``bounds`` (x, y, w, h) of the layer's content intersected with the canvas."""
        bx, by, bw, bh = (int(v) for v in bounds)
        x0, y0 = max(bx, 0), max(by, 0)
        x1, y1 = min(bx + bw, int(doc_width)), min(by + bh, int(doc_height))
        if bw <= 0 or bh <= 0 or x1 <= x0 or y1 <= y0:
            raise UserError("The layer %r is empty inside the canvas: there is nothing to "
                            "drag. Select the paint layer that holds the picture." % name)
        return cls(name, x0, y0, x1 - x0, y1 - y0)


@dataclass(frozen=True)
class ShapeInfo:
    """What the glue reads from one Krita shape."""

    svg: str                     # shape.toSvg()
    transform: Affine            # shape.absoluteTransformation(): local -> document pt
    type: str = "KoPathShape"    # shape.type()
    name: str = ""


def arrows_from_shapes(shapes: Sequence[ShapeInfo], xres: float, yres: float,
                       rect: LayerRect, layer_name: str = ARROWS_LAYER_NAME
                       ) -> Tuple[List[Arrow], List[str]]:
    """Every open line/path (sub)path is one arrow: first anchor = handle, last = target.
    Converted: local -> document points (the shape's absolute transform) -> document
    pixels (x resolution / 72) -> layer pixels (minus the layer rectangle's corner).
    Returns (arrows, notes about shapes that were skipped). Raises UserError when there
    is no arrow or an arrow end lies outside the layer."""
    sx, sy = float(xres) / 72.0, float(yres) / 72.0
    arrows: List[Arrow] = []
    notes: List[str] = []
    skipped_closed = skipped_other = 0
    for n, sh in enumerate(shapes, 1):
        try:
            subpaths, other = svg_subpaths(sh.svg)
        except (ValueError, ET.ParseError) as e:
            notes.append("shape %d (%s) could not be read: %s" % (n, sh.type, e))
            continue
        skipped_other += len(other)
        for sp, inner in subpaths:
            if sp.closed or len(sp.points) < 2:
                skipped_closed += 1
                continue
            t = inner.then(sh.transform)
            ends = []
            for p in (sp.points[0], sp.points[-1]):
                px, py = t.map(p)
                # Points -> pixels leaves float noise (10.000000000000007): 1e-4 px is
                # far below anything a drag can resolve.
                ends.append((round(px * sx - rect.x, 4) + 0.0, round(py * sy - rect.y, 4) + 0.0))
            for which, p in (("start (handle)", ends[0]), ("end (target)", ends[1])):
                if not (0.0 <= p[0] <= rect.width and 0.0 <= p[1] <= rect.height):
                    doc_p = (p[0] + rect.x, p[1] + rect.y)
                    raise UserError(
                        "The %s of arrow %d on the vector layer %r, at %s in the image, lies "
                        "outside the layer %s. Move it onto the layer."
                        % (which, len(arrows) + 1, layer_name, _fmt(doc_p), rect.describe()))
            arrows.append(Arrow(ends[0], ends[1]))
    if skipped_closed:
        notes.append("%d closed or single-point shape%s ignored" % (
            skipped_closed, "" if skipped_closed == 1 else "s"))
    if skipped_other:
        notes.append("%d shape%s that %s not lines ignored" % (
            skipped_other, "" if skipped_other == 1 else "s",
            "is" if skipped_other == 1 else "are"))
    if not arrows:
        raise UserError(
            "The vector layer %r holds no arrows. Draw each drag as a straight line with the "
            "Line tool on that layer: start at the handle (what to move), end at the target "
            "(where it should go)." % layer_name)
    return arrows, notes


def is_arrow_shape(svg: str) -> bool:
    """Whether a shape holds at least one arrow (an open (sub)path of two points or more)."""
    try:
        subpaths, _ = svg_subpaths(svg)
    except (ValueError, ET.ParseError):
        return False
    return any(not sp.closed and len(sp.points) >= 2 for sp, _ in subpaths)


ARROW_COLOUR = "#ff3b30"


def arrows_svg(arrows: Sequence[Arrow], rect: LayerRect, doc_size: Tuple[int, int]) -> str:
    """Thin arrows with arrowheads, handle -> target, in document pixels (what
    ``addShapesFromSvg`` reads): one line per arrow, its width a 400th of the document's
    shorter side (at least 1 px), so it marks the points without hiding the picture."""
    width = max(1.0, round(min(doc_size) / 400.0, 1))
    lines = "".join(
        '<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="%s" stroke-width="%g" '
        'stroke-linecap="round" fill="none" marker-end="url(#dragd-head)"/>'
        % (a.handle[0] + rect.x, a.handle[1] + rect.y, a.target[0] + rect.x,
           a.target[1] + rect.y, ARROW_COLOUR, width) for a in arrows)
    return ('<svg xmlns="http://www.w3.org/2000/svg"><defs><marker id="dragd-head" '
            'viewBox="0 0 10 10" refX="9" refY="5" markerWidth="4" markerHeight="4" '
            'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="%s"/></marker></defs>%s</svg>'
            % (ARROW_COLOUR, lines))


# ---------------------------------------------------------------------------
# Mask: selection -> movable region
# ---------------------------------------------------------------------------


class MaskInfo(_CommonMaskInfo):
    """The movable region in layer coordinates (``data`` None = the whole layer),
    described in the docker's words."""

    WHOLE_TEXT = "no selection: the whole layer may move"
    SOFT_TEXT = "feathered selection (%.0f%% of the layer) may move"
    HARD_TEXT = "selection (%.0f%% of the layer) may move"


DESELECT = "Select \u25b8 Deselect"


def make_mask(data: Optional[bytes], width: int, height: int,
              layer_name: str = "layer") -> MaskInfo:
    """From ``Selection.pixelData`` over the layer rectangle (1 byte per pixel, 0..255),
    or None for no selection (see :func:`..plugin_common.make_mask`)."""
    return _make_mask(data, width, height, layer_name, deselect=DESELECT,
                      mask_class=MaskInfo)  # type: ignore[return-value]


def check_handles_movable(arrows: Sequence[Arrow], mask: _CommonMaskInfo) -> None:
    _check_handles_movable(arrows, mask, handle_of="handle (start) of arrow",
                           deselect=DESELECT)


# ---------------------------------------------------------------------------
# Pixels (slicing and regular expressions run at C speed: no per-pixel Python loop
# except over partially selected pixels)
# ---------------------------------------------------------------------------


def bgra_to_rgba_array(data: bytes) -> bytearray:
    """Swap the 1st and 3rd byte of every 4-byte pixel (its own inverse)."""
    if len(data) % 4:
        raise ValueError("%d bytes is not a whole number of 4-byte pixels" % len(data))
    out = bytearray(data)
    out[0::4] = data[2::4]
    out[2::4] = data[0::4]
    return out


def bgra_to_rgba(data: bytes) -> bytes:
    return bytes(bgra_to_rgba_array(data))


rgba_to_bgra = bgra_to_rgba


_ZERO_RUNS = re.compile(rb"\x00+")


def splice_by_mask(inside: bytes, outside: bytes, mask: bytes, pixel_size: int) -> bytes:
    """``inside`` where the mask is nonzero, ``outside`` (copied bit for bit) where it is
    0. Works for any pixel size (e.g. 8 bytes for RGBA/U16)."""
    n = len(mask)
    if len(inside) != n * pixel_size or len(outside) != n * pixel_size:
        raise ValueError("splice: %d/%d bytes for %d pixels of %d bytes"
                         % (len(inside), len(outside), n, pixel_size))
    out = bytearray(inside)
    for m in _ZERO_RUNS.finditer(mask):
        s, e = m.start() * pixel_size, m.end() * pixel_size
        out[s:e] = outside[s:e]
    return bytes(out)


# ---------------------------------------------------------------------------
# The job model
# ---------------------------------------------------------------------------


class JobModel(BaseJobModel):
    """State of one run (:class:`~..plugin_common.BaseJobModel`) in the docker's words:
    capitalised status lines, the stages spelt out (the docker has room for them)."""

    ITEM = "arrow"
    STAGE_TEXT = {"load": "loading the model", "invert": "inverting the layer",
                  "tune": "tuning the generator", "drag": "dragging", "undo": "undoing"}
    DRAG_TEXT = "dragging: step %d/%d"
    DONE_TEXT = "done: %s"
    TOO_MANY_POINTS = "There are %d arrows; the daemon takes at most %d."
    SCALE_WHAT = "image"

    def queued_text(self, fields: Dict[str, Any]) -> str:
        ahead = int(fields.get("position", 0) or 0)
        return "waiting for the daemon" + (
            " (%d job%s ahead in its queue)" % (ahead, "" if ahead == 1 else "s")
            if ahead else "")

    def line(self, text: str) -> str:
        return text[:1].upper() + text[1:]
