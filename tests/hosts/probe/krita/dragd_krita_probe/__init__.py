"""dragd_krita_probe: a throwaway Krita 5 Python plug-in for the dragd host tests.

It is shaped like the real plug-in: an Extension, and a docker (DockWidgetFactory) whose
QTimer polls a ZeroMQ DEALER socket without ever blocking Krita's event loop. Installed in
pykrita/ (with dragd_krita_probe.desktop, enabled in kritarc) the full Krita GUI loads it; under
kritarunner, which loads no plug-ins, a test module imports it (hello(), Poller).
"""
import time

from krita import DockWidget, DockWidgetFactory, DockWidgetFactoryBase, Extension, Krita
from PyQt5.QtCore import QObject, QTimer
from PyQt5.QtWidgets import QLabel

LOADED_AT = time.time()
DOCKER_ID = "dragd_probe_docker"


def hello():
    return "dragd_krita_probe imported"


class Poller(QObject):
    """Sends one request on a DEALER socket, then polls for the reply from a QTimer with zero
    timeout, so the host's event loop never blocks. `done` holds the reply frames."""

    def __init__(self, endpoint, payload, interval_ms=10, parent=None):
        super().__init__(parent)
        import zmq

        self._zmq = zmq
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.sock.send_multipart([b"", payload])
        self.ticks = 0
        self.done = None
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._poll)
        self.timer.start()

    def _poll(self):
        self.ticks += 1
        if self.sock.poll(0, self._zmq.POLLIN):
            self.done = self.sock.recv_multipart()
            self.timer.stop()
            self.sock.close()


class ProbeExtension(Extension):
    def setup(self):
        pass

    def createActions(self, window):
        pass


class ProbeDocker(DockWidget):
    def __init__(self):
        super().__init__()
        self.setWindowTitle("dragd probe")
        self.label = QLabel("idle")
        self.setWidget(self.label)
        self.poller = None
        self.canvas_changes = 0

    def canvasChanged(self, canvas):
        self.canvas_changes += 1

    def ping(self, endpoint, payload=b"ping-from-docker"):
        self.poller = Poller(endpoint, payload, parent=self)
        self.label.setText("waiting")
        return self.poller


Krita.instance().addExtension(ProbeExtension(Krita.instance()))
Krita.instance().addDockWidgetFactory(
    DockWidgetFactory(DOCKER_ID, DockWidgetFactoryBase.DockRight, ProbeDocker))
