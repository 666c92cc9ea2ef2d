"""One run on a layer: reads the pixels, drives the runner, shows previews, writes the
result, all image changes in one undo group. Host-neutral orchestration over the glue
(:class:`~.glue.GimpHost`), so the unit tests run it against stand-ins. Imports nothing
from zmq: the runner module (which needs pyzmq) is passed in."""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

from .glue import GimpHost, PreviewLayer, UndoGroup
from .session import DragSettings


class HostUi:
    """What the runner sees of the host: GIMP's progress bar, the preview layer and (in
    interactive runs) the progress dialog with its Stop and Cancel buttons."""

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


def run_on_layer(host: GimpHost, runner_mod: Any, settings: DragSettings, image: Any,
                 layer: Any, arrows: list, mask: Any,
                 dialog_factory: Optional[Callable[[], Any]] = None) -> Tuple[Any, Any]:
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
        source = runner_mod.Image(pixels, g.width, g.height, 4)
        runner = runner_mod.Runner(settings, arrows, source, mask, ui)
        ui.model = runner.model
        outcome = runner.run()
        if preview is not None:
            preview.remove()
        undo.ensure()
        rgba = host.result_pixels(outcome.image, pixels)
        new_layer = host.write_result(image, layer, rgba, pixels, masked=mask.data is not None)
        try:
            image.set_selected_layers([new_layer])
        except Exception:
            pass
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
