"""The editing-session model of the GIMP plug-in: pure Python, no Gimp, no zmq.

What lives here (and is unit-tested without a host):

* the procedure's arguments (:data:`ARGUMENTS`) and the :class:`DragSettings` they fill;
* turning path strokes into handle->target :class:`Arrow` s in layer coordinates, and
  turning a selection into a movable mask (:func:`arrows_from_strokes`, :func:`make_mask`);
* the job model (:class:`JobModel`): the shared state of one run, worded for GIMP's
  progress bar;
* small pixel helpers (:func:`merge_alpha`).

The host-independent parts both plug-ins share (the drag fields, arrows, the mask, the
job model's event handling, pixels, errors) live in ``..plugin_common``; this module
adds what is GIMP's own (arguments, path strokes, messages) and re-exports the rest.

Coordinates. GIMP path coordinates are continuous image coordinates: pixel (i, j) covers
[j, j+1) x [i, i+1). The dragd protocol uses the same continuous convention in layer
coordinates (a point is on a W x H layer when 0 <= x <= W and 0 <= y <= H), so a point in
layer coordinates is the path point minus the layer offsets, nothing more.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..plugin_common import (ALIGN_MODES, ALIGN_SWITCH, CLOSE_TIMEOUT,  # noqa: F401
                             CONNECT_TIMEOUT, DEFAULT_ENDPOINT, INVERSION_QUALITIES, METHODS,
                             OPEN_WEIGHT, PASTE_MODES, PREVIEW_LAYER_NAME,
                             START_COMMAND, STOP_GRACE, Arrow, BaseDragSettings, BaseJobModel,
                             Cancelled, Outcome, Point, UserError, merge_alpha)
from ..plugin_common import MaskInfo as _CommonMaskInfo
from ..plugin_common import check_handles_movable as _check_handles_movable
from ..plugin_common import fmt_point as _fmt_pt
from ..plugin_common import make_mask as _make_mask
from ..plugin_common.results import (decode_result_tag, encode_result_tag,  # noqa: F401
                                    region_for, result_name)

PROCEDURE_NAME = "plug-in-dragd-drag"
MENU_LABEL = "_Drag (DragGAN)..."
MENU_PATH = "<Image>/Filters/Generative"
PREVIEW_PARASITE = "dragd-preview"
#: The longest side of the preview in the progress dialog: the daemon sends it this size.
PREVIEW_SIZE = 320
#: Tags a result layer with the region its run inverted (plugin_common/results.py).
RESULT_PARASITE = "dragd-result"

# Inversion presets: the daemon owns what each means (daemon/edit/inversion.py PRESETS).
INVERSION_PRESETS: Dict[str, Dict[str, Any]] = {
    name: {"method": "pti", "quality": name} for name in INVERSION_QUALITIES
}

SPACE_CHOICES = (("w-plus", "W+ (one latent per layer, more freedom)", "w+"),
                 ("w", "W (one latent, stays closer to the model)", "w"))
METHOD_CHOICES = (("dragd", "DragGAN, arrived handles held in place", "dragd"),
                  ("draggan", "DragGAN as published", "draggan"),
                  ("freedrag", "FreeDrag (no point tracking)", "freedrag"))
PASTE_CHOICES = (("detail", "Keep the photo's detail (warp its own pixels)", "detail"),
                 ("resample", "Generated pixels (the model's resolution, scaled up)",
                  "resample"))
ALIGN_CHOICES = (("auto", "Automatic (what the model wants)", "auto"),
                 ("off", "Off", "none"))
INVERSION_CHOICES = (("fast", "Fast", "fast"),
                     ("balanced", "Balanced", "balanced"),
                     ("quality", "Best quality (slow)", "quality"))


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
        "Name of the model on the daemon ('dragd models list' names them); empty: the model the "
        "daemon has loaded", ""),
    Arg("max-steps", "max_steps", "int", "Ste_p limit",
        "Most optimisation steps of the drag (it usually stops earlier, when every handle "
        "reached its target)", 300, 1, 5000),
    Arg("learning-rate", "learning_rate", "double", "Lear_ning rate (0: the model's)",
        "Adam learning rate of the drag; 0: the model's default (2e-3 for faces, cats, cars; "
        "1e-3 otherwise)", 0.0, 0.0, 1.0),
    Arg("lambda-mask", "lambda_mask", "double", "Keep-outside _weight (\u03bb)",
        "How strongly the unselected part of the layer is held in place (the paper's "
        "\u03bb, 20)", 20.0, 0.0, 10000.0),
    Arg("latent-space", "space", "choice", "Latent spac_e",
        "W+: one latent per generator layer (more freedom); W: one shared latent",
        "w-plus", choices=SPACE_CHOICES),
    Arg("method", "method", "choice", "Drag _method",
        "The drag's rules: DragGAN with handles that arrived held in place while the others "
        "are pulled, DragGAN exactly as published, or FreeDrag (adaptive feature templates, "
        "no point tracking)", "dragd", choices=METHOD_CHOICES),
    Arg("inversion", "inversion", "choice", "_Inversion quality",
        "How hard the daemon works to reproduce the layer before dragging (PTI)",
        "balanced", choices=INVERSION_CHOICES),
    Arg("paste", "paste", "choice", "_Result pixels",
        "How the edit goes back into the layer: the layer's own pixels moved along the "
        "generator's correspondence (keeps a photo sharp), or the generated image scaled up "
        "to the selection", "detail", choices=PASTE_CHOICES),
    Arg("face-alignment", "align", "choice", "_" + ALIGN_SWITCH,
        "Automatic: for a face model (FFHQ) the daemon finds the face and aligns it as the "
        "model's training faces before editing; Off: edit the selection's square as it is",
        "auto", choices=ALIGN_CHOICES),
    Arg("daemon", "endpoint", "string", "_Daemon address",
        "ZeroMQ address of the dragd daemon (start it with: dragd serve)", DEFAULT_ENDPOINT),
    Arg("time-limit", "time_limit", "int", "_Time limit (seconds)",
        "Give up inverting, or stop dragging and keep the result so far, after this many "
        "seconds", 900, 5, 86400),
    Arg("live-preview", "live_preview", "boolean", "Li_ve preview",
        "Show the drag as it happens in the progress window (interactive runs)", True),
)
ARG_BY_NAME = {a.name: a for a in ARGUMENTS}


@dataclass
class DragSettings(BaseDragSettings):
    """The shared drag fields (:class:`~..plugin_common.BaseDragSettings`) plus the run's
    time limit, filled from the procedure's arguments."""

    time_limit: float = 900.0
    preview_max_size: int = PREVIEW_SIZE

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
        if self.method not in METHODS:
            raise UserError("method must be one of %s" % ", ".join(METHODS))
        if self.paste not in PASTE_MODES:
            raise UserError("paste must be one of %s" % ", ".join(PASTE_MODES))
        if self.align not in ALIGN_MODES:
            raise UserError("face-alignment must be one of %s" % ", ".join(ALIGN_MODES))
        if self.inversion not in INVERSION_PRESETS:
            raise UserError("inversion must be one of %s" % ", ".join(INVERSION_PRESETS))
        if not self.endpoint:
            raise UserError("the daemon address is empty; the default is %s"
                            % DEFAULT_ENDPOINT)
        if "://" not in self.endpoint:
            raise UserError("the daemon address %r is not a ZeroMQ address such as %s"
                            % (self.endpoint, DEFAULT_ENDPOINT))


# ---------------------------------------------------------------------------
# Points: path strokes -> arrows
# ---------------------------------------------------------------------------

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


def dialog_info(arrows: Sequence[Arrow], path_name: str, mask: Any, layer_name: str,
                n_paths: int, daemon_line: str) -> List[str]:
    """The settings dialog's lines: the points and the path they come from (and, when the
    image has more paths, that only this one is used and how to use another), the
    selection, the daemon."""
    n = len(arrows)
    points = ("Layer %r: %d drag point%s from path %r (each stroke: first anchor = handle, "
              "last anchor = target)." % (layer_name, n, "" if n == 1 else "s", path_name))
    if n_paths > 1:
        points += (" The image has %d paths: only this one, selected in the Paths dialog, is "
                   "used. Select another there, or draw every stroke into this one "
                   "(Shift+click starts a stroke)." % n_paths)
    return [points, mask.describe(), daemon_line]


def model_choices(current: str, models: Optional[Sequence[str]], loaded: Optional[str]
                  ) -> Tuple[List[Tuple[str, str]], str]:
    """The settings dialog's Model list: (value, label) items (value "" = the model the
    daemon has loaded) and a note to show beside it. ``models``: the daemon's list, None
    when it could not be fetched: then the list keeps the last used model (``current``)
    and the note says so, as it does when ``current`` is not among the daemon's models."""
    items = [("", "The daemon's loaded model (%s)" % loaded if loaded
              else "The model the daemon has loaded")]
    if models is None:
        if current:
            items.append((current, current))
        return items, ("The daemon's model list could not be fetched; %s"
                       % ("the last used model, %r, is kept." % current if current
                          else "the daemon's loaded model is used."))
    items += [(m, m) for m in models]
    if current and current not in models:
        items.append((current, "%s (not on this daemon)" % current))
        return items, ("The last used model, %r, is not on this daemon: choose one of its "
                       "models." % current)
    return items, ""


# ---------------------------------------------------------------------------
# Mask: selection -> movable region
# ---------------------------------------------------------------------------


class MaskInfo(_CommonMaskInfo):
    """The movable region in layer coordinates (None data = the whole layer may move),
    described in the GIMP plug-in's words."""

    WHOLE_TEXT = "No selection: the whole layer may move."
    SOFT_TEXT = ("Feathered selection (%.0f%% of the layer): used as soft weights, partly "
                 "selected pixels are partly held in place and the result is blended "
                 "through the selection.")
    HARD_TEXT = ("Selection (%.0f%% of the layer): only the selected part may move; the "
                 "rest is kept exactly.")


DESELECT = "Select > None"


def make_mask(data: Optional[bytes], width: int, height: int,
              layer_name: str = "layer") -> MaskInfo:
    """From the selection's coverage bytes over the layer (1 byte per pixel, 0..255), or
    None for no selection (see :func:`..plugin_common.make_mask`)."""
    return _make_mask(data, width, height, layer_name, deselect=DESELECT,
                      mask_class=MaskInfo)  # type: ignore[return-value]


def check_handles_movable(arrows: Sequence[Arrow], mask: _CommonMaskInfo) -> None:
    _check_handles_movable(arrows, mask, handle_of="handle of stroke", deselect=DESELECT)


# ---------------------------------------------------------------------------
# The job model
# ---------------------------------------------------------------------------

CLIENT_NAME = "dragd-gimp"


class JobModel(BaseJobModel):
    """State of one run (:class:`~..plugin_common.BaseJobModel`) in the GIMP plug-in's
    words: its status lines go to GIMP's progress bar, after "DragGAN: "."""

    ITEM = "drag point"
    TOO_MANY_POINTS = "The path has %d strokes; the daemon takes at most %d drag points."
    SCALE_WHAT = "layer"

    def line(self, text: str) -> str:
        return "DragGAN: " + text
