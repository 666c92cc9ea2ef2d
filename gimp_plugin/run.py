"""One run on a layer inside GIMP: reads the pixels, drives the shared run
(:class:`~..plugin_common.task.DragTask`) from a loop, shows progress and previews,
writes the result, all image changes in one undo group.

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
from .host import GimpHost, PreviewLayer, UndoGroup
from .model import CLIENT_NAME, Cancelled, DragSettings, JobModel, Outcome, UserError

POLL_MS = 40
#: A GIMP preview is a new layer each time (created, scaled, the old one removed): fewer
#: of them than the shared pace.
PREVIEW_INTERVAL = 0.4


def task_module() -> Any:
    """The shared run's module; a UserError saying how to install pyzmq and msgpack when
    GIMP's Python lacks them."""
    return load_task("GIMP", "docs/GIMP.md")


def make_task(settings: DragSettings, arrows: list, image: Any, mask: Any, **kw: Any) -> Any:
    """The shared run in GIMP's words, bounded by the settings' time limit."""
    return task_module().DragTask(settings, arrows, image, mask, job_model=JobModel,
                                  client_name=CLIENT_NAME, time_limit=settings.time_limit,
                                  **kw)


def describe_daemon(endpoint: str, timeout: float = 1.5, **kw: Any) -> str:
    """One line about the daemon for the settings dialog (waits at most ~``timeout``)."""
    probe = task_module().DaemonProbe(endpoint, client_name=CLIENT_NAME, timeout=timeout,
                                      **kw)
    probe.start()
    while probe.tick(POLL_MS):
        pass
    return probe.describe()


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
    pacer = Pacer(model, task.clock, preview_interval=PREVIEW_INTERVAL)
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
    """GIMP's progress bar, the preview layer and (in interactive runs) the progress
    dialog with its Stop and Cancel buttons."""

    def __init__(self, host: GimpHost, preview: Optional[PreviewLayer], dialog: Any = None):
        self.host = host
        self.preview_layer = preview
        self.dialog = dialog
        self.model: Any = None

    def progress(self, fraction: float, text: str) -> None:
        self.host.progress(fraction, text)
        if self.dialog is not None:
            self.dialog.progress(fraction, text)
            if self.model is not None:
                self.dialog.test_step(self.model.phase, self.model.step)

    def preview(self, image: Any) -> None:
        if self.preview_layer is not None:
            self.preview_layer.show(image)

    def pump(self) -> None:
        if self.dialog is not None:
            self.dialog.pump()

    def stop_requested(self) -> Optional[str]:
        return self.dialog.stop_requested() if self.dialog is not None else None


def run_on_layer(host: GimpHost, settings: DragSettings, image: Any, layer: Any,
                 arrows: list, mask: Any, dialog_factory: Optional[Callable[[], Any]] = None,
                 task_factory: Callable[..., Any] = make_task) -> Tuple[Any, Any]:
    """Run the drag on ``layer`` and write the result: returns (outcome, new layer).
    Every image change (removing stale previews, the preview layer, the result) happens
    inside one undo group, opened at the first change; a run that changes nothing opens
    none. Raises UserError / Cancelled."""
    g = host.geometry(layer)
    pixels = host.read_pixels(layer)
    undo = UndoGroup(image)
    preview = PreviewLayer(host, image, layer, undo) if settings.live_preview else None
    dialog = dialog_factory() if dialog_factory is not None else None
    ui = HostUi(host, preview, dialog)
    host.progress_start("DragGAN: connecting to %s" % settings.endpoint)
    new_layer = None
    try:
        stale = host.stale_previews(image)
        if stale:
            undo.ensure()
            for lyr in stale:
                image.remove_layer(lyr)
        source = task_module().Image(pixels, g.width, g.height, 4)
        task = task_factory(settings, arrows, source, mask)
        ui.model = task.model
        outcome = drive(task, ui)
        if preview is not None:
            preview.remove()
        undo.ensure()
        rgba = host.result_pixels(outcome.image, pixels)
        new_layer = host.write_result(image, layer, rgba, pixels, masked=mask.data is not None)
        try:
            image.set_selected_layers([new_layer])
        except Exception:
            pass       # selecting the result is a courtesy; the result is written
    finally:
        try:
            if preview is not None:
                preview.remove()
        finally:
            undo.end()
            host.progress_end()
            if dialog is not None:
                dialog.close()
    host.flush()
    return outcome, new_layer
