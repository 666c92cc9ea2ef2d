"""dragd_gui_runner: runs one test inside the full Krita GUI (tests/hosts/chroot.run_krita_gui).

Inert unless $DRAGD_KRITA_GUI_TEST names a Python file. Then, once the first main window exists,
it runs that file's main(window, app) (plug-ins, their dockers and extensions are loaded by
then), writes the JSON-able return value (or {"error": traceback}) to $DRAGD_RESULT, marks every
document unmodified and quits Krita. A hard exit follows if quitting stalls.
"""
import json
import os
import runpy
import traceback

from krita import Extension, Krita
from PyQt5.QtCore import QTimer


def _write(result):
    with open(os.environ["DRAGD_RESULT"], "w") as f:
        json.dump(result, f)


def _quit():
    app = Krita.instance()
    for doc in app.documents():
        doc.setModified(False)   # no "save changes?" dialog
    QTimer.singleShot(50, lambda: app.action("file_quit").trigger())
    QTimer.singleShot(20000, lambda: os._exit(3))


def _run(path):
    try:
        app = Krita.instance()
        # The Window wrapper handed to createActions() is deleted when that call returns: ask
        # for the window again now.
        window = app.activeWindow() or app.windows()[0]
        ns = runpy.run_path(path, run_name="dragd_gui_test")
        result = ns["main"](window, app)
    except BaseException:
        result = {"error": traceback.format_exc()}
    try:
        _write(result)
    except Exception:
        _write({"error": traceback.format_exc()})
    finally:
        _quit()


class GuiTestRunner(Extension):
    def __init__(self, parent):
        super().__init__(parent)
        self._started = False

    def setup(self):
        pass

    def createActions(self, window):
        path = os.environ.get("DRAGD_KRITA_GUI_TEST")
        if path and not self._started:
            self._started = True
            QTimer.singleShot(0, lambda: _run(path))


Krita.instance().addExtension(GuiTestRunner(Krita.instance()))
