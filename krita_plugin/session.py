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
  keeping the source's alpha (:func:`merge_alpha`), compositing the result through the
  selection (:func:`composite_through_mask`, :func:`splice_by_mask`);
* the job model (:class:`JobModel`): the state of one run (connect, invert, drag, close),
  driven by protocol events, with the progress fraction and text the docker shows.

Coordinates: continuous, x right, y down; the pixel in column i, row j covers
[i, i+1) x [j, j+1). The dragd protocol uses the same convention in layer coordinates.
"""
from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5557"
START_COMMAND = "dragd serve"
ARROWS_LAYER_NAME = "drag"
PREVIEW_LAYER_NAME = "DragGAN preview (temporary)"
RESULT_SUFFIX = " (dragged)"
CLIENT_NAME = "dragd-krita"
SRGB_PROFILE = "sRGB-elle-V2-srgbtrc.icc"

#: Nothing at all from the daemon for this long (hello unanswered, or no reply to the
#: client's pings while a job runs) counts as "the daemon is gone".
CONNECT_TIMEOUT = 5.0
#: After Stop/Cancel, how long the daemon may take to hand back the drag.
STOP_GRACE = 20.0
#: How long to wait for close_session at the end (best effort, never blocks the UI).
CLOSE_TIMEOUT = 2.0

INVERSION_QUALITIES = ("fast", "balanced", "quality")
SPACES = ("w+", "w")


class UserError(Exception):
    """Something the user can fix; the message is shown as it is."""


class Cancelled(UserError):
    """The user cancelled the run; nothing was changed."""


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------


@dataclass
class DragSettings:
    """What the docker edits. ``learning_rate`` 0 = the model's default."""

    model: str = ""
    max_steps: int = 300
    learning_rate: float = 0.0
    lambda_mask: float = 20.0
    space: str = "w+"
    inversion: str = "balanced"
    endpoint: str = DEFAULT_ENDPOINT
    live_preview: bool = True
    preview_every: int = 2
    preview_max_size: int = 256

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
        if self.inversion not in INVERSION_QUALITIES:
            raise UserError("The inversion quality must be one of %s, not %r."
                            % (", ".join(INVERSION_QUALITIES), self.inversion))
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

    def invert_fields(self) -> Dict[str, Any]:
        return {"method": "pti", "quality": self.inversion}

    def drag_params(self) -> Dict[str, Any]:
        return {
            "max_steps": int(self.max_steps),
            "lr": float(self.learning_rate) if self.learning_rate > 0 else None,
            "lambda_mask": float(self.lambda_mask),
            "space": self.space,
            "preview_every": int(self.preview_every) if self.live_preview else 0,
            "preview_max_size": int(self.preview_max_size),
        }

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

Point = Tuple[float, float]


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


@dataclass(frozen=True)
class Arrow:
    """A handle->target pair in layer coordinates."""

    handle: Point
    target: Point

    def pair(self) -> Dict[str, List[float]]:
        return {"handle": [self.handle[0], self.handle[1]],
                "target": [self.target[0], self.target[1]]}


def _fmt(p: Point) -> str:
    return "(%g, %g)" % (round(p[0], 1), round(p[1], 1))


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


# ---------------------------------------------------------------------------
# Mask: selection -> movable region
# ---------------------------------------------------------------------------


@dataclass
class MaskInfo:
    """The movable region in layer coordinates (``data`` None = the whole layer)."""

    data: Optional[bytes]
    width: int
    height: int
    soft: bool = False
    coverage: float = 1.0

    @property
    def whole_layer(self) -> bool:
        return self.data is None

    def value_at(self, p: Point) -> int:
        if self.data is None:
            return 255
        x = min(max(int(p[0]), 0), self.width - 1)
        y = min(max(int(p[1]), 0), self.height - 1)
        return self.data[y * self.width + x]

    def describe(self) -> str:
        if self.data is None:
            return "no selection: the whole layer may move"
        pct = 100.0 * self.coverage
        if self.soft:
            return "feathered selection (%.0f%% of the layer) may move" % pct
        return "selection (%.0f%% of the layer) may move" % pct


def make_mask(data: Optional[bytes], width: int, height: int,
              layer_name: str = "layer") -> MaskInfo:
    """From ``Selection.pixelData`` over the layer rectangle (1 byte per pixel, 0..255),
    or None for no selection. A selection covering the whole layer equals none; one that
    misses the layer is an error."""
    if data is None:
        return MaskInfo(None, width, height)
    data = bytes(data)
    n = width * height
    if len(data) != n:
        raise ValueError("mask has %d bytes, %dx%d needs %d" % (len(data), width, height, n))
    zeros = data.count(0)
    if zeros == n:
        raise UserError(
            "The selection does not cover any of the layer %r. Select the region that may "
            "move (Select \u25b8 Deselect lets the whole layer move)." % layer_name)
    full = data.count(255)
    if full == n:
        return MaskInfo(None, width, height)
    soft = zeros + full != n
    coverage = sum(data) / (255.0 * n) if soft else full / float(n)
    return MaskInfo(data, width, height, soft=soft, coverage=coverage)


def check_handles_movable(arrows: Sequence[Arrow], mask: MaskInfo) -> None:
    for n, a in enumerate(arrows, 1):
        if mask.value_at(a.handle) == 0:
            raise UserError(
                "The handle (start) of arrow %d, at %s on the layer, lies outside the "
                "selection, where nothing may move. Enlarge the selection to include it, "
                "or Select \u25b8 Deselect." % (n, _fmt(a.handle)))


# ---------------------------------------------------------------------------
# Pixels (slicing and regular expressions run at C speed: no per-pixel Python loop
# except over partially selected pixels)
# ---------------------------------------------------------------------------


def bgra_to_rgba(data: bytes) -> bytes:
    """Swap the 1st and 3rd byte of every 4-byte pixel (its own inverse)."""
    if len(data) % 4:
        raise ValueError("%d bytes is not a whole number of 4-byte pixels" % len(data))
    out = bytearray(data)
    out[0::4] = data[2::4]
    out[2::4] = data[0::4]
    return bytes(out)


rgba_to_bgra = bgra_to_rgba


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
    """RGB of ``result`` with the source's alpha: the drag moves content, the layer keeps
    its own transparency."""
    return to_rgba(result, channels, alpha=source_rgba)


_ZERO_RUNS = re.compile(rb"\x00+")
_SOFT_RUNS = re.compile(rb"[\x01-\xfe]+")


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


def composite_through_mask(result_rgba: bytes, source_rgba: bytes,
                           mask: Optional[bytes]) -> bytes:
    """The result blended into the source through the movable mask, RGBA: where the mask
    is 0 the source exactly, where 255 the result, in between a linear blend; the alpha
    channel is always the source's. ``mask`` None = the result everywhere."""
    out = bytearray(merge_alpha(result_rgba, 4, source_rgba))
    if mask is None:
        return bytes(out)
    out = bytearray(splice_by_mask(bytes(out), source_rgba, mask, 4))
    for m in _SOFT_RUNS.finditer(mask):
        for i in range(m.start(), m.end()):
            w = mask[i]
            k = 4 * i
            for c in range(k, k + 3):
                out[c] = (result_rgba[c] * w + source_rgba[c] * (255 - w) + 127) // 255
    return bytes(out)


# ---------------------------------------------------------------------------
# The job model
# ---------------------------------------------------------------------------

STAGE_TEXT = {"load": "loading the model", "invert": "inverting the layer",
              "tune": "tuning the generator", "drag": "dragging", "undo": "undoing"}
OPEN_STAGES = {"load": (0.0, 0.0), "invert": (0.0, 0.5), "tune": (0.5, 1.0)}
OPEN_WEIGHT = 0.4            # share of the progress bar taken by opening (inversion)


@dataclass
class Outcome:
    image: Any                       # protocol Image: the edited layer (RGBA or RGB)
    steps: int
    stop: str
    distance: Optional[float]
    handles: List[List[float]] = field(default_factory=list)


class JobModel:
    """State of one run. ``phase``: connecting -> opening -> dragging -> closing -> done,
    or failed / cancelled. Fed with protocol events (:meth:`on_event`); read
    :meth:`progress` for the bar and :meth:`take_preview` for the preview layer."""

    TERMINAL = ("done", "failed", "cancelled")

    def __init__(self, settings: DragSettings, arrows: Sequence[Arrow]):
        self.settings = settings
        self.arrows = list(arrows)
        self.phase = "connecting"
        self.stage: Optional[str] = None
        self.step = 0
        self.total: Optional[int] = None
        self.distance: Optional[float] = None
        self.first_distance: Optional[float] = None
        self.handles: List[List[float]] = [list(a.handle) for a in self.arrows]
        self.message: Optional[str] = None
        self.notice: Optional[str] = None
        self.daemon: Dict[str, Any] = {}
        self.session_info: Dict[str, Any] = {}
        self.stop_requested: Optional[str] = None     # None | "keep" | "discard"
        self.outcome: Optional[Outcome] = None
        self.error: Optional[str] = None
        self._preview: Any = None
        self.previews_seen = 0

    @property
    def finished(self) -> bool:
        return self.phase in self.TERMINAL

    # -- transitions ----------------------------------------------------------

    def connected(self, hello: Dict[str, Any]) -> None:
        self.daemon = dict(hello)
        self.phase = "opening"
        self.stage, self.step, self.total = None, 0, None

    def opened(self, fields: Dict[str, Any]) -> None:
        self.session_info = dict(fields)
        self.phase = "dragging"
        self.stage, self.step, self.total = "drag", 0, int(self.settings.max_steps)

    def dragged(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.phase = "closing"
        self.step = outcome.steps
        if outcome.distance is not None:
            self.distance = outcome.distance

    def closed(self) -> None:
        if self.outcome is None:
            raise RuntimeError("closed() before the drag finished")
        self.phase = "done"

    def failed(self, message: str) -> None:
        self.error = message
        self.phase = "failed"

    def cancelled(self, message: str = "cancelled; the layer was not changed") -> None:
        self.error = message
        self.phase = "cancelled"

    def request_stop(self, how: str) -> bool:
        """"keep" keeps the drag so far (a new layer), "discard" drops everything.
        Returns True the first time (when a cancel must be sent)."""
        if how not in ("keep", "discard"):
            raise ValueError(how)
        first = self.stop_requested is None
        if first or how == "discard":
            self.stop_requested = how
        return first

    # -- events ---------------------------------------------------------------

    def on_event(self, kind: str, fields: Dict[str, Any], images: Dict[str, Any]) -> None:
        if kind == "queued":
            self.stage = "queued"
            ahead = int(fields.get("position", 0) or 0)
            self.message = "waiting for the daemon" + (
                " (%d job%s ahead in its queue)" % (ahead, "" if ahead == 1 else "s")
                if ahead else "")
        elif kind == "notice":
            self.notice = str(fields.get("message", ""))
        elif kind == "progress":
            self.stage = str(fields.get("stage") or self.stage or "")
            self.step = int(fields.get("step", self.step))
            total = fields.get("total")
            self.total = int(total) if total is not None else self.total
            self.message = fields.get("message") or None
            if fields.get("handles"):
                self.handles = [list(h) for h in fields["handles"]]
            d = fields.get("distance")
            if isinstance(d, (int, float)) and math.isfinite(d):
                self.distance = float(d)
                if self.first_distance is None:
                    self.first_distance = self.distance
            prev = images.get("preview") if images else None
            if prev is not None:
                self._preview = prev
                self.previews_seen += 1

    def take_preview(self) -> Any:
        p, self._preview = self._preview, None
        return p

    # -- display --------------------------------------------------------------

    def _stage_fraction(self) -> float:
        if not self.total:
            return 0.0
        return min(1.0, max(0.0, (self.step + 1) / float(self.total)))

    def progress(self) -> Tuple[float, str]:
        """(fraction 0..1, text) for the docker's progress bar and status line."""
        stopping = " (stopping)" if self.stop_requested else ""
        if self.phase == "connecting":
            return 0.0, "Connecting to %s" % self.settings.endpoint
        if self.phase == "opening":
            f = 0.0
            if self.stage in OPEN_STAGES:
                lo, hi = OPEN_STAGES[self.stage]
                f = lo + (hi - lo) * self._stage_fraction()
            text = STAGE_TEXT.get(self.stage or "", "opening the layer").capitalize()
            if self.stage == "queued" and self.message:
                text = self.message.capitalize()
            elif self.total:
                text += " %d/%d" % (min(self.step + 1, self.total), self.total)
            return OPEN_WEIGHT * f, text + stopping
        if self.phase == "dragging":
            f = self._stage_fraction()
            if self.first_distance and self.distance is not None:
                f = max(f, 1.0 - self.distance / self.first_distance)
            text = "Dragging: step %d/%d" % (self.step, self.total or self.settings.max_steps)
            if self.distance is not None:
                text += ", %.1f px to go" % self.distance
            return OPEN_WEIGHT + (1.0 - OPEN_WEIGHT) * min(1.0, max(0.0, f)), text + stopping
        if self.phase in ("closing", "done"):
            o = self.outcome
            text = "Done"
            if o is not None:
                text = "Done: %s after %d step%s" % (o.stop.replace("_", " "), o.steps,
                                                    "" if o.steps == 1 else "s")
                if o.distance is not None:
                    text += ", %.1f px from the targets" % o.distance
            return 1.0, text
        if self.phase == "cancelled":
            return 0.0, "Cancelled: %s" % (self.error or "the layer was not changed")
        return 0.0, "Error: %s" % (self.error or "failed")

    def summary(self) -> str:
        n = len(self.arrows)
        return "%d arrow%s" % (n, "" if n == 1 else "s")
