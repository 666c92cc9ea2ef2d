"""The GIMP 3 plug-in: registers "Filters > Generative > Drag (DragGAN)..." and runs it.

Wiring only: the host glue (:mod:`.host`) reads the layer, the arrows and the selection
and writes the result; the model (:mod:`.model`) holds settings and job state; :mod:`.run`
drives the shared run against the daemon; :mod:`.ui` holds the dialogs.

Procedure ``plug-in-dragd-drag`` (an image procedure on one layer). Arguments: see
``model.ARGUMENTS`` (model, max-steps, learning-rate, lambda-mask, latent-space, method,
inversion, paste, face-alignment, daemon, time-limit, live-preview). Return values:
new-layer (the result), steps, stop-reason ("converged", "max_steps", "cancelled" when
stopped and kept, "stalled"), outcome (the same in words, with the inversion's PSNR;
interactive runs show it in a message). Run modes: INTERACTIVE shows the settings and
progress dialogs; NONINTERACTIVE (scripts, tests) and WITH_LAST_VALS (Filters > Repeat)
run with the config's values.
"""
from __future__ import annotations

import sys
import traceback
from typing import Any, Optional

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, GLib, GObject, Gimp  # noqa: E402

from ..plugin_common.messages import bug  # noqa: E402
from .host import GimpHost  # noqa: E402
from .model import (ARGUMENTS, MENU_LABEL, MENU_PATH, PROCEDURE_NAME,  # noqa: E402
                    Cancelled, DragSettings, UserError, check_handles_movable, dialog_info,
                    model_choices)
from .live import LIVE_MENU_LABEL, LIVE_PROCEDURE_NAME, run_live  # noqa: E402
from .run import probe_daemon, run_on_layer, task_module  # noqa: E402

RW = GObject.ParamFlags.READWRITE


def add_arguments(procedure: Any) -> None:
    for a in ARGUMENTS:
        if a.kind == "string":
            procedure.add_string_argument(a.name, a.label, a.blurb, a.default, RW)
        elif a.kind == "int":
            procedure.add_int_argument(a.name, a.label, a.blurb, a.lo, a.hi, a.default, RW)
        elif a.kind == "double":
            procedure.add_double_argument(a.name, a.label, a.blurb, a.lo, a.hi, a.default,
                                          RW)
        elif a.kind == "boolean":
            procedure.add_boolean_argument(a.name, a.label, a.blurb, a.default, RW)
        elif a.kind == "choice":
            choice = Gimp.Choice.new()
            for i, (nick, label, _value) in enumerate(a.choices):
                choice.add(nick, i, label, "")
            procedure.add_choice_argument(a.name, a.label, a.blurb, choice, a.default, RW)
        else:  # pragma: no cover
            raise ValueError(a.kind)


def config_values(config: Any) -> dict:
    return {a.name: config.get_property(a.name) for a in ARGUMENTS}


def _error(procedure: Any, status: Any, message: str) -> Any:
    return procedure.new_return_values(status, GLib.Error(message))


def run(procedure: Any, run_mode: Any, image: Any, drawables: Any, config: Any,
        data: Any) -> Any:
    host = GimpHost(Gimp, Gegl)
    try:
        task_module()             # says what is missing before anything else
        layer = host.source_layer(list(drawables))
        arrows, path_name = host.read_arrows(image, layer)
        mask = host.read_mask(image, layer)
        check_handles_movable(arrows, mask)

        interactive = run_mode == Gimp.RunMode.INTERACTIVE
        GimpUi = None
        if interactive:
            gi.require_version("GimpUi", "3.0")
            from gi.repository import GimpUi
            from .ui import settings_dialog
            GimpUi.init(PROCEDURE_NAME)
            endpoint = str(config.get_property("daemon") or "").strip()
            probe = probe_daemon(endpoint)
            info = dialog_info(arrows, path_name, mask, layer.get_name(),
                               len(list(image.get_paths() or [])), probe.describe())
            models = model_choices(str(config.get_property("model") or ""),
                                   None if probe.error else probe.models, probe.loaded_model)
            if not settings_dialog(GimpUi, procedure, config, info,
                                   [a.name for a in ARGUMENTS], models=models):
                return _error(procedure, Gimp.PDBStatusType.CANCEL, "Cancelled.")
        settings = DragSettings.from_values(config_values(config))
        dialog_factory = None
        if GimpUi is not None:
            from .ui import ProgressDialog

            def make_progress_dialog() -> Any:
                return ProgressDialog(GimpUi)
            dialog_factory = make_progress_dialog
        outcome, new_layer = run_on_layer(host, settings, image, layer, arrows, mask,
                                          dialog_factory)
        if interactive:
            Gimp.message("Drag (DragGAN): %s." % outcome.summary())
    except Exception as e:
        return _failed(procedure, e)
    rv = procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, None)
    _set_return(rv, 1, GObject.Value(Gimp.Layer, new_layer))
    _set_return(rv, 2, GObject.Value(GObject.TYPE_INT, int(outcome.steps)))
    _set_return(rv, 3, GObject.Value(GObject.TYPE_STRING, str(outcome.stop)))
    _set_return(rv, 4, GObject.Value(GObject.TYPE_STRING, outcome.summary()))
    return rv


def run_live_view(procedure: Any, run_mode: Any, image: Any, drawables: Any, config: Any,
                  data: Any) -> Any:
    """The live view (gimp_plugin/live.py) with the procedure's settings; returns the layer
    Apply wrote, or CANCEL when the image was left as it was."""
    if run_mode != Gimp.RunMode.INTERACTIVE:
        return _error(procedure, Gimp.PDBStatusType.CALLING_ERROR,
                      "The live view is interactive: open it from Filters > Generative > "
                      "Drag live (DragGAN); scripts call plug-in-dragd-drag.")
    host = GimpHost(Gimp, Gegl)
    try:
        task_module()
        layer = host.source_layer(list(drawables))
        gi.require_version("GimpUi", "3.0")
        from gi.repository import GimpUi
        from .ui import settings_dialog
        GimpUi.init(LIVE_PROCEDURE_NAME)
        # The drag's settings first (the same dialog as the filter's; GIMP keeps them as
        # this procedure's last values), then the live view.
        probe = probe_daemon(str(config.get_property("daemon") or "").strip())
        models = model_choices(str(config.get_property("model") or ""),
                               None if probe.error else probe.models, probe.loaded_model)
        info = [probe.describe(),
                "OK opens the live view: click the points on the picture there."]
        if not settings_dialog(GimpUi, procedure, config, info, [a.name for a in ARGUMENTS],
                               title="Drag live (DragGAN)", models=models):
            return _error(procedure, Gimp.PDBStatusType.CANCEL, "Cancelled.")
        new_layer = run_live(GimpUi, host, image, layer,
                             DragSettings.from_values(config_values(config)))
    except Exception as e:
        return _failed(procedure, e)
    if new_layer is None:
        return _error(procedure, Gimp.PDBStatusType.CANCEL, "Cancelled.")
    rv = procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, None)
    _set_return(rv, 1, GObject.Value(Gimp.Layer, new_layer))
    return rv


def _failed(procedure: Any, e: Exception) -> Any:
    """The return values for what a run raised: Cancelled is CANCEL, a UserError says its
    sentence, anything else is a bug (said so, its details on stderr). Call it in the
    except block: the traceback is the one being handled."""
    if isinstance(e, Cancelled):
        return _error(procedure, Gimp.PDBStatusType.CANCEL, str(e))
    if isinstance(e, UserError):
        return _error(procedure, Gimp.PDBStatusType.EXECUTION_ERROR, str(e))
    traceback.print_exc()
    return _error(procedure, Gimp.PDBStatusType.EXECUTION_ERROR,
                  bug(e, " with GIMP's error output"))


def _set_return(rv: Any, index: int, value: Any) -> None:
    """Put a return value at ``index`` (new_return_values(SUCCESS) already holds a
    default for every declared return value)."""
    if rv.length() > index:
        rv.remove(index)
        rv.insert(index, value)
    else:
        rv.append(value)


class DragdGimp(Gimp.PlugIn):
    def do_query_procedures(self):
        return [PROCEDURE_NAME, LIVE_PROCEDURE_NAME]

    def do_set_i18n(self, name):
        return False

    def do_create_procedure(self, name):
        if name == LIVE_PROCEDURE_NAME:
            return self._procedure(
                name, run_live_view, LIVE_MENU_LABEL,
                "Drag points of a layer interactively with DragGAN",
                "Opens the live view: click a handle and then its target on the picture, "
                "Start, watch the picture follow, Stop, add points and Continue, go back to an "
                "earlier drag, Apply. Served by the dragd daemon (start it with: dragd serve). "
                "The selection is the region that may move; the strokes of the path are the "
                "first points. Apply adds the result as a new layer above the source, in one "
                "undo step.")
        proc = self._procedure(
            name, run, MENU_LABEL, "Drag points of a layer with DragGAN",
            "Moves handle points of the active layer to target points with DragGAN, served "
            "by the dragd daemon (start it with: dragd serve). The points come from the "
            "selected path (else the only path): every stroke is one drag, its first anchor "
            "the handle and its last anchor the target. The selection is the region that "
            "may move (none: the whole layer) and, with a margin, the part the model "
            "works on; a feathered selection gives soft weights. The result is a new layer "
            "above the source, in one undo step.")
        proc.add_int_return_value("steps", "Steps", "Optimisation steps the drag took",
                                  0, 1 << 30, 0, RW)
        proc.add_string_return_value("stop-reason", "Stop reason",
                                     "converged, max_steps, cancelled (stopped, kept) or "
                                     "stalled", "", RW)
        proc.add_string_return_value("outcome", "Outcome",
                                     "The outcome in words: how the drag ended, how far the "
                                     "handles are from the targets, the inversion's quality",
                                     "", RW)
        return proc

    def _procedure(self, name, run_fn, label, blurb, help_text):
        """What the filter and the live view declare alike: an image procedure on a layer
        under MENU_PATH with the drag's arguments, returning the result layer."""
        proc = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run_fn, None)
        proc.set_image_types("RGB*, GRAY*")
        proc.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
        proc.set_menu_label(label)
        proc.add_menu_path(MENU_PATH)
        proc.set_documentation(blurb, help_text, name)
        proc.set_attribution("dragd", "dragd contributors", "2025")
        add_arguments(proc)
        proc.add_layer_return_value("new-layer", "New layer", "The layer holding the result",
                                    True, RW)
        return proc


def main(argv: Optional[list] = None) -> None:
    Gimp.main(DragdGimp.__gtype__, list(argv if argv is not None else sys.argv))
