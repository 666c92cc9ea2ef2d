"""Registers the plug-in with Krita: the "Drag (DragGAN)" action (Tools > Scripts) and
the DragGAN docker. Imported by the entry module Krita loads (``dragd_krita``)."""
from __future__ import annotations

from typing import Any, Optional

from krita import DockWidgetFactory, DockWidgetFactoryBase, Extension, Krita

from .ui import DOCKER_ID, DragDocker, find_docker, load_settings
from .run import DragRun, start_drag

ACTION_ID = "dragd_drag"
ACTION_TEXT = "Drag (DragGAN)"
MENU_LOCATION = "tools/scripts"

_registered = False


class DragExtension(Extension):
    """The "Drag (DragGAN)" action: runs the docker's Run (showing the docker); without
    a docker (hidden window layouts) it runs with the saved settings and reports in a
    message box."""

    def __init__(self, parent: Any) -> None:
        super().__init__(parent)
        self.last_run: Optional[DragRun] = None

    def setup(self) -> None:
        pass

    def createActions(self, window: Any) -> None:
        action = window.createAction(ACTION_ID, ACTION_TEXT, MENU_LOCATION)
        action.setToolTip("Move the handles of the arrows on the 'drag' vector layer to "
                          "their targets (DragGAN)")
        action.triggered.connect(self.trigger)

    def trigger(self) -> Optional[DragRun]:
        app = Krita.instance()
        # The Window given to createActions() is deleted when that call returns: look the
        # window up now.
        docker = find_docker(app.activeWindow())
        if docker is not None:
            docker.setVisible(True)
            docker.raise_()
            self.last_run = docker.run()
            return self.last_run
        self.last_run = start_drag(app.activeDocument(), load_settings(),
                                   on_finished=self._report)
        return self.last_run

    def _report(self, run: DragRun) -> None:
        from PyQt5.QtWidgets import QMessageBox

        if run.state == "done":
            return
        QMessageBox.warning(None, ACTION_TEXT, run.message)


def register() -> None:
    """Add the extension and the docker factory to Krita (once)."""
    global _registered
    if _registered:
        return
    app = Krita.instance()
    app.addExtension(DragExtension(app))
    app.addDockWidgetFactory(DockWidgetFactory(DOCKER_ID, DockWidgetFactoryBase.DockRight,
                                               DragDocker))
    _registered = True
