"""One run on a layer inside GIMP: reads the pixels, drives the shared run
(:class:`~..plugin_common.task.DragTask`) from a loop, shows progress and previews (in the
progress dialog), writes the result, all image changes in one undo group.

A GIMP plug-in is a process of its own whose procedure returns only when the run is over,
so the loop may wait: each poll waits at most ``POLL_MS`` for the daemon, then the progress
dialog gets its events (Stop, Cancel) and the bar is redrawn. Every other wait is bounded
by the task.

Host-neutral orchestration over the glue (:class:`~.host.GimpHost`), so the unit tests run
it against stand-ins. Imports nothing from zmq: the task is loaded when a run starts.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

from ..plugin_common.loader import load_task
from ..plugin_common.pacing import Pacer
from .host import GimpHost, UndoGroup
from .model import (CLIENT_NAME, Cancelled, DragSettings, JobModel, Outcome, UserError,
                    region_for)

POLL_MS = 40


def task_module() -> Any:
    """The shared run's module; a UserError saying how to install pyzmq and msgpack when
    GIMP's Python lacks them."""
    return load_task("GIMP", "docs/GIMP.md")


def make_task(settings: DragSettings, arrows: list, image: Any, mask: Any, **kw: Any) -> Any:
    """The shared run in GIMP's words, bounded by the settings' time limit."""
    return task_module().DragTask(settings, arrows, image, mask, job_model=JobModel,
                                  client_name=CLIENT_NAME, time_limit=settings.time_limit,
                                  **kw)


def probe_daemon(endpoint: str, timeout: float = 1.5, **kw: Any) -> Any:
    """Ask the daemon for its models before the settings dialog opens (waits at most
    ~``timeout``): the finished DaemonProbe (``models``, ``loaded_model`` or ``error``;
    ``describe()`` is the dialog's line about the daemon)."""
    probe = task_module().DaemonProbe(endpoint, client_name=CLIENT_NAME, timeout=timeout,
                                      **kw)
    probe.start()
    while probe.tick(POLL_MS):
        pass
    return probe


class NullUi:
    """What :func:`drive` sees of the host, showing nothing and never asking to stop
    (non-interactive runs, tests)."""

    def progress(self, fraction: float, text: str) -> None:
        pass

    def preview(self, image: Any) -> None:
        pass

    def pump(self) -> None:
        pass

    def stop_requested(self) -> Optional[str]:
        return None


def drive(task: Any, ui: Any = None) -> Outcome:
    """Run ``task`` to its end: returns the outcome, or raises Cancelled / UserError with
    the sentence for the user. ``ui`` (a :class:`NullUi`) shows progress and previews and
    passes on the dialog's Stop ("keep") and Cancel ("discard")."""
    ui = ui or NullUi()
    model = task.model
    pacer = Pacer(model, task.clock)
    try:
        task.start()
        while not task.done:
            _show(pacer, ui)
            how = ui.stop_requested()
            if how is not None:
                task.stop(how)
            task.tick(POLL_MS)
            ui.pump()
    finally:
        task.close()
    if model.phase == "cancelled":
        raise Cancelled(model.end_text())
    if model.phase != "done":
        raise UserError(model.end_text())
    ui.progress(*pacer.progress(force=True))
    return model.outcome


def _show(pacer: Pacer, ui: Any) -> None:
    shown = pacer.progress()
    if shown is not None:
        ui.progress(*shown)
    preview = pacer.preview()
    if preview is not None:
        ui.preview(preview)


def run_drag(settings: DragSettings, arrows: list, image: Any, mask: Any, ui: Any = None,
             **kw: Any) -> Outcome:
    return drive(make_task(settings, arrows, image, mask, **kw), ui)


class HostUi(NullUi):
    """GIMP's progress bar and (in interactive runs) the progress dialog with the preview,
    its Stop and Cancel buttons."""

    def __init__(self, host: GimpHost, dialog: Any = None):
        self.host = host
        self.dialog = dialog
        self.model: Any = None

    def progress(self, fraction: float, text: str) -> None:
        self.host.progress(fraction, text)
        if self.dialog is not None:
            self.dialog.progress(fraction, text)
            if self.model is not None:
                self.dialog.test_step(self.model.phase, self.model.step)

    def preview(self, image: Any) -> None:
        if self.dialog is not None:
            self.dialog.show_preview(image)

    def pump(self) -> None:
        if self.dialog is not None:
            self.dialog.pump()

    def stop_requested(self) -> Optional[str]:
        return self.dialog.stop_requested() if self.dialog is not None else None


def run_on_layer(host: GimpHost, settings: DragSettings, image: Any, layer: Any,
                 arrows: list, mask: Any, dialog_factory: Optional[Callable[[], Any]] = None,
                 task_factory: Callable[..., Any] = make_task) -> Tuple[Any, Any]:
    """Run the drag on ``layer`` and write the result: returns (outcome, new layer).
    The image changes (removing previews earlier versions left, the result) happen after
    the daemon answered, inside one undo group; a run that fails or is cancelled changes
    nothing and opens none. Raises UserError / Cancelled."""
    g = host.geometry(layer)
    pixels = host.read_pixels(layer)
    region = region_for(mask, arrows, host.result_tag(layer))
    dialog = dialog_factory() if dialog_factory is not None else None
    ui = HostUi(host, dialog)
    host.progress_start("DragGAN: connecting to %s" % settings.endpoint)
    undo = UndoGroup(image)
    try:
        source = task_module().Image(pixels, g.width, g.height, 4)
        task = task_factory(settings, arrows, source, mask, region=region)
        ui.model = task.model
        outcome = drive(task, ui)
        undo.ensure()
        for lyr in host.stale_previews(image):
            image.remove_layer(lyr)
        rgba = host.result_pixels(outcome.image, pixels)
        new_layer = host.write_result(image, layer, rgba, task.region)
        try:
            image.set_selected_layers([new_layer])
        except Exception:
            pass       # selecting the result is a courtesy; the result is written
    finally:
        undo.end()
        host.progress_end()
        if dialog is not None:
            dialog.close()
    host.flush()
    return outcome, new_layer
