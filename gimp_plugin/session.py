"""The editing-session model of the GIMP plug-in: pure Python, no Gimp, no zmq.

What lives here (and is unit-tested without a host):

* the procedure's arguments (:data:`ARGUMENTS`) and the :class:`DragSettings` they fill;
* turning path strokes into handle->target :class:`Arrow` s in layer coordinates, and
  turning a selection into a movable mask (:func:`arrows_from_strokes`, :func:`make_mask`);
* the job model (:class:`JobModel`): the state of one run (connect, invert, drag), driven
  by protocol events, with the progress fraction and text the host shows;
* small pixel helpers (:func:`merge_alpha`).

Coordinates. GIMP path coordinates are continuous image coordinates: pixel (i, j) covers
[j, j+1) x [i, i+1). The dragd protocol uses the same continuous convention in layer
coordinates (a point is on a W x H layer when 0 <= x <= W and 0 <= y <= H), so a point in
layer coordinates is the path point minus the layer offsets, nothing more.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

PROCEDURE_NAME = "plug-in-dragd-drag"
MENU_LABEL = "_Drag (DragGAN)..."
MENU_PATH = "<Image>/Filters/Generative"
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5557"
START_COMMAND = "dragd serve"
PREVIEW_LAYER_NAME = "DragGAN preview (temporary)"
PREVIEW_PARASITE = "dragd-preview"

#: How long to wait for the daemon to answer at all (hello, and the liveness limit of the
#: client while a job runs: a daemon silent that long counts as gone).
CONNECT_TIMEOUT = 5.0
#: After a stop/cancel request, how long to wait for the daemon to hand back the drag.
STOP_GRACE = 20.0
#: How long to wait for close_session at the end (best effort).
CLOSE_TIMEOUT = 2.0

# Inversion presets: the daemon owns what each means (daemon/inversion.py PRESETS).
INVERSION_PRESETS: Dict[str, Dict[str, Any]] = {
    name: {"method": "pti", "quality": name} for name in ("fast", "balanced", "quality")
}

SPACE_CHOICES = (("w-plus", "W+ (one latent per layer, more freedom)", "w+"),
                 ("w", "W (one latent, stays closer to the model)", "w"))
INVERSION_CHOICES = (("fast", "Fast", "fast"),
                     ("balanced", "Balanced", "balanced"),
                     ("quality", "Best quality (slow)", "quality"))


class UserError(Exception):
    """Something the user can fix; the message is shown as it is."""


class Cancelled(UserError):
    """The user (or a script) cancelled the run."""


# ---------------------------------------------------------------------------
# Arguments and settings
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    """One argument of the GIMP procedure (also a field of :class:`DragSettings`)."""

    name: str           # GIMP argument / config property name
    attr: str           # DragSettings attribute
    kind: str           # "string" | "int" | "double" | "choice" | "boolean"
    label: str
    blurb: str
    default: Any
    lo: Any = None
    hi: Any = None
    choices: Tuple[Tuple[str, str, str], ...] = ()   # (nick, label, value)


ARGUMENTS: Tuple[Arg, ...] = (
    Arg("model", "model", "string", "_Model",
        "Name of the model on the daemon (dragd models lists them); empty: the model the "
        "daemon has loaded", ""),
    Arg("max-steps", "max_steps", "int", "Ste_p limit",
        "Most optimisation steps of the drag (it usually stops earlier, when every handle "
        "reached its target)", 300, 1, 5000),
    Arg("learning-rate", "learning_rate", "double", "Lear_ning rate",
        "Adam learning rate of the drag; 0: the model's default (2e-3 for faces, cats, cars; "
        "1e-3 otherwise)", 0.0, 0.0, 1.0),
    Arg("lambda-mask", "lambda_mask", "double", "Keep-outside _weight (\u03bb)",
        "How strongly the unselected part of the layer is held in place (the paper's "
        "\u03bb, 20)", 20.0, 0.0, 10000.0),
    Arg("latent-space", "space", "choice", "Latent spac_e",
        "W+: one latent per generator layer (more freedom); W: one shared latent",
        "w-plus", choices=SPACE_CHOICES),
    Arg("inversion", "inversion", "choice", "_Inversion quality",
        "How hard the daemon works to reproduce the layer before dragging (PTI)",
        "balanced", choices=INVERSION_CHOICES),
    Arg("daemon", "endpoint", "string", "_Daemon address",
        "ZeroMQ address of the dragd daemon (start it with: dragd serve)", DEFAULT_ENDPOINT),
    Arg("time-limit", "time_limit", "int", "_Time limit (seconds)",
        "Give up inverting, or stop dragging and keep the result so far, after this many "
        "seconds", 900, 5, 86400),
    Arg("live-preview", "live_preview", "boolean", "Li_ve preview",
        "Show the drag as it happens in a temporary layer above the source", True),
)
ARG_BY_NAME = {a.name: a for a in ARGUMENTS}


@dataclass
class DragSettings:
    model: str = ""
    max_steps: int = 300
    learning_rate: float = 0.0
    lambda_mask: float = 20.0
    space: str = "w+"
    inversion: str = "balanced"
    endpoint: str = DEFAULT_ENDPOINT
    time_limit: float = 900.0
    live_preview: bool = True
    preview_every: int = 2
    preview_max_size: int = 256

    @classmethod
    def from_values(cls, values: Dict[str, Any]) -> "DragSettings":
        """From ``{argument name: value}`` as a procedure config holds them (choice
        arguments as their nicks); missing names keep their defaults; bad values raise
        UserError."""
        s = cls()
        for a in ARGUMENTS:
            if a.name not in values:
                continue
            v = values[a.name]
            if a.kind == "choice":
                by_nick = {nick: val for nick, _, val in a.choices}
                if v not in by_nick:
                    raise UserError("%s: %r is not one of %s" % (
                        a.name, v, ", ".join(by_nick)))
                v = by_nick[v]
            elif a.kind == "string":
                v = "" if v is None else str(v).strip()
            elif a.kind == "boolean":
                v = bool(v)
            elif a.kind == "int":
                v = int(v)
            elif a.kind == "double":
                v = float(v)
            setattr(s, a.attr, v)
        s.validate()
        return s

    def validate(self) -> None:
        for a in ARGUMENTS:
            v = getattr(self, a.attr)
            if a.lo is not None and not (a.lo <= v <= a.hi):
                raise UserError("%s must be between %s and %s, not %s"
                                % (a.name, a.lo, a.hi, v))
        if self.space not in ("w", "w+"):
            raise UserError("latent-space must be W or W+")
        if self.inversion not in INVERSION_PRESETS:
            raise UserError("inversion must be one of %s" % ", ".join(INVERSION_PRESETS))
        if not self.endpoint:
            raise UserError("the daemon address is empty; the default is %s"
                            % DEFAULT_ENDPOINT)
        if "://" not in self.endpoint:
            raise UserError("the daemon address %r is not a ZeroMQ address such as %s"
                            % (self.endpoint, DEFAULT_ENDPOINT))

    def invert_fields(self) -> Dict[str, Any]:
        return dict(INVERSION_PRESETS[self.inversion])

    def drag_params(self) -> Dict[str, Any]:
        p: Dict[str, Any] = {
            "max_steps": int(self.max_steps),
            "lr": float(self.learning_rate) if self.learning_rate > 0 else None,
            "lambda_mask": float(self.lambda_mask),
            "space": self.space,
            "preview_every": int(self.preview_every) if self.live_preview else 0,
            "preview_max_size": int(self.preview_max_size),
        }
        return p


# ---------------------------------------------------------------------------
# Points: path strokes -> arrows
# ---------------------------------------------------------------------------

Point = Tuple[float, float]


@dataclass(frozen=True)
class Arrow:
    """A handle->target pair in layer coordinates."""

    handle: Point
    target: Point

    def pair(self) -> Dict[str, List[float]]:
        return {"handle": [self.handle[0], self.handle[1]],
                "target": [self.target[0], self.target[1]]}


@dataclass(frozen=True)
class Stroke:
    """One stroke of a path as read from the host: anchors in image coordinates."""

    anchors: Tuple[Point, ...]
    closed: bool = False


def bezier_anchors(control_points: Sequence[float]) -> List[Point]:
    """Anchors of a GIMP bezier stroke: the control points come as (in-handle, anchor,
    out-handle) triples of x, y pairs, six numbers per anchor."""
    pts = list(control_points)
    if len(pts) % 6 != 0:
        raise UserError("a path stroke has %d coordinates, not a multiple of 6; redraw the "
                        "path with the Paths tool" % len(pts))
    return [(float(pts[i + 2]), float(pts[i + 3])) for i in range(0, len(pts), 6)]


@dataclass(frozen=True)
class LayerGeometry:
    name: str
    width: int
    height: int
    offset_x: int
    offset_y: int

    def describe(self) -> str:
        return "%r (%dx%d at %d,%d)" % (self.name, self.width, self.height,
                                        self.offset_x, self.offset_y)


def _fmt_pt(p: Point) -> str:
    return "(%g, %g)" % (round(p[0], 1), round(p[1], 1))


def arrows_from_strokes(strokes: Sequence[Stroke], layer: LayerGeometry,
                        path_name: str = "path") -> List[Arrow]:
    """Every stroke is one arrow: first anchor = handle, last anchor = target, both
    converted to layer coordinates. Raises UserError with a message naming the stroke."""
    if not strokes:
        raise UserError("The path %r has no strokes. Draw one stroke per point with the "
                        "Paths tool: click the handle, then click the target." % path_name)
    arrows = []
    for n, st in enumerate(strokes, 1):
        if len(st.anchors) < 2:
            raise UserError(
                "Stroke %d of path %r has only one anchor. Each stroke is one drag: click "
                "the handle (the point to move), then the target (where it should go)."
                % (n, path_name))
        (hx, hy), (tx, ty) = st.anchors[0], st.anchors[-1]
        handle = (hx - layer.offset_x, hy - layer.offset_y)
        target = (tx - layer.offset_x, ty - layer.offset_y)
        for which, p, img_p in (("handle", handle, (hx, hy)), ("target", target, (tx, ty))):
            if not (0.0 <= p[0] <= layer.width and 0.0 <= p[1] <= layer.height):
                raise UserError(
                    "The %s of stroke %d of path %r, at %s in the image, lies outside the "
                    "layer %s. Move it onto the layer." % (
                        which, n, path_name, _fmt_pt(img_p), layer.describe()))
        arrows.append(Arrow(handle, target))
    return arrows


def pick_path(selected: Sequence[Any], all_paths: Sequence[Any], name_of=lambda p: p
              ) -> Any:
    """The path holding the arrows: the selected one, else the only one."""
    if len(selected) == 1:
        return selected[0]
    if len(selected) > 1:
        raise UserError("%d paths are selected (%s). Select only the path that holds the "
                        "drag arrows in the Paths dialog." % (
                            len(selected), ", ".join(repr(name_of(p)) for p in selected)))
    if len(all_paths) == 1:
        return all_paths[0]
    if not all_paths:
        raise UserError(
            "The image has no path. Draw the drag points with the Paths tool: one stroke "
            "per point, click the handle (what to move), then the target (where it goes); "
            "Shift+click starts the next stroke.")
    raise UserError("The image has %d paths and none is selected. Select the path that "
                    "holds the drag arrows in the Paths dialog." % len(all_paths))


# ---------------------------------------------------------------------------
# Mask: selection -> movable region
# ---------------------------------------------------------------------------


@dataclass
class MaskInfo:
    """The movable region in layer coordinates (None data = the whole layer may move)."""

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
            return "No selection: the whole layer may move."
        pct = 100.0 * self.coverage
        if self.soft:
            return ("Feathered selection (%.0f%% of the layer): used as soft weights, "
                    "partly selected pixels are partly held in place and the result is "
                    "blended through the selection." % pct)
        return ("Selection (%.0f%% of the layer): only the selected part may move; the rest "
                "is kept exactly." % pct)


def make_mask(data: Optional[bytes], width: int, height: int,
              layer_name: str = "layer") -> MaskInfo:
    """From the selection's coverage bytes over the layer (1 byte per pixel, 0..255), or
    None for no selection. A selection that covers the whole layer fully is the same as
    none; one that misses the layer is an error."""
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
            "move (Select > None lets the whole layer move)." % layer_name)
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
                "The handle of stroke %d, at %s on the layer, lies outside the selection, "
                "where nothing may move. Enlarge the selection to include it, or "
                "Select > None." % (n, _fmt_pt(a.handle)))


# ---------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------


def merge_alpha(result: bytes, channels: int, source_rgba: bytes) -> bytes:
    """RGB of ``result`` (3 or 4 channels, or 1 = gray) with the source's alpha: the
    drag moves content, the layer keeps its own transparency. Slicing runs at C speed."""
    n = len(source_rgba) // 4
    if len(result) != n * channels:
        raise ValueError("result has %d bytes, expected %d" % (len(result), n * channels))
    out = bytearray(source_rgba)
    if channels in (3, 4):
        for c in range(3):
            out[c::4] = result[c::channels]
    elif channels == 1:
        for c in range(3):
            out[c::4] = result
    else:
        raise ValueError("unsupported channel count %d" % channels)
    return bytes(out)


# ---------------------------------------------------------------------------
# The job model
# ---------------------------------------------------------------------------

STAGE_TEXT = {"load": "loading the model", "invert": "inverting", "tune": "tuning",
              "drag": "dragging", "undo": "undoing"}
# Where each stage of opening a session starts and ends on the opening part of the bar.
OPEN_STAGES = {"load": (0.0, 0.0), "invert": (0.0, 0.5), "tune": (0.5, 1.0)}
OPEN_WEIGHT = 0.4        # share of the progress bar taken by opening (inversion)


@dataclass
class Outcome:
    image: Any                      # protocol Image: the edited layer
    steps: int
    stop: str
    distance: Optional[float]
    handles: List[List[float]] = field(default_factory=list)


class JobModel:
    """State of one run: ``phase`` goes connecting -> opening -> dragging -> done (or
    failed / cancelled). Fed with protocol events (:meth:`on_event`); read
    :meth:`progress` for the bar and :meth:`take_preview` for the preview layer."""

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
        self.stop_requested: Optional[str] = None    # None | "keep" | "discard"
        self.stop_reason: Optional[str] = None
        self.outcome: Optional[Outcome] = None
        self.error: Optional[str] = None
        self._preview: Any = None
        self.previews_seen = 0

    # -- transitions ------------------------------------------------------

    def connected(self, hello: Dict[str, Any]) -> None:
        self.daemon = dict(hello)
        self.phase = "opening"
        self.stage, self.step, self.total = None, 0, None

    def opened(self, fields: Dict[str, Any]) -> None:
        self.session_info = dict(fields)
        self.phase = "dragging"
        self.stage, self.step, self.total = "drag", 0, self.settings.max_steps

    def finished(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.phase = "done"
        self.step = outcome.steps
        self.distance = outcome.distance

    def failed(self, message: str) -> None:
        self.error = message
        self.phase = "failed"

    def request_stop(self, how: str, why: str = "stopped") -> bool:
        """Ask to stop: "keep" keeps the drag so far, "discard" drops it. Returns True
        the first time (when a cancel must be sent)."""
        if how not in ("keep", "discard"):
            raise ValueError(how)
        first = self.stop_requested is None
        if first or how == "discard":
            self.stop_requested = how
        if first:
            self.stop_reason = why
        return first

    # -- events -----------------------------------------------------------

    def on_event(self, kind: str, fields: Dict[str, Any], images: Dict[str, Any]) -> None:
        if kind == "queued":
            self.stage = "queued"
            self.message = ("waiting for the daemon (position %d in its queue)"
                            % fields.get("position", 0))
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
            if d is not None and d == d and d != float("inf"):
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

    # -- display ----------------------------------------------------------

    def _stage_fraction(self) -> float:
        if not self.total:
            return 0.0
        return min(1.0, max(0.0, (self.step + 1) / float(self.total)))

    def progress(self) -> Tuple[float, str]:
        """(fraction 0..1, text) for the host's progress bar."""
        if self.phase == "connecting":
            return 0.0, "DragGAN: connecting to %s" % self.settings.endpoint
        if self.phase == "opening":
            f = 0.0
            if self.stage in OPEN_STAGES:
                lo, hi = OPEN_STAGES[self.stage]
                f = lo + (hi - lo) * self._stage_fraction()
            text = "DragGAN: %s" % STAGE_TEXT.get(self.stage or "", "opening the layer")
            if self.stage == "queued" and self.message:
                text = "DragGAN: %s" % self.message
            elif self.total:
                text += " %d/%d" % (min(self.step + 1, self.total), self.total)
            return OPEN_WEIGHT * f, text
        if self.phase == "dragging":
            f = self._stage_fraction()
            if self.first_distance and self.distance is not None and self.first_distance > 0:
                f = max(f, 1.0 - self.distance / self.first_distance)
            text = "DragGAN: step %d/%d" % (self.step, self.total or self.settings.max_steps)
            if self.distance is not None:
                text += ", %.1f px to go" % self.distance
            if self.stop_requested:
                text += " (stopping)"
            return OPEN_WEIGHT + (1.0 - OPEN_WEIGHT) * min(1.0, f), text
        if self.phase == "done":
            o = self.outcome
            text = "DragGAN: done"
            if o is not None:
                text = "DragGAN: %s after %d steps" % (o.stop.replace("_", " "), o.steps)
            return 1.0, text
        return 1.0, "DragGAN: %s" % (self.error or self.phase)

    def summary(self) -> str:
        n = len(self.arrows)
        return "%d drag point%s" % (n, "" if n == 1 else "s")
