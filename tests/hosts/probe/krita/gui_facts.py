"""A test for the full Krita GUI (tests/hosts/chroot.run_krita_gui): main(window, app) runs once
the first main window exists, with the enabled plug-ins (dragd_krita_probe) loaded. It shows what
only a window gives: an active document/node, the plug-in's docker, and the docker's QTimer
polling a ZeroMQ socket ($DRAGD_ZMQ_ENDPOINT) while Krita's event loop runs.
"""
import os
import time


def spin(ms):
    from PyQt5.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec_()


def main(window, app):
    R = {"windows": len(app.windows()),
         "extensions": sorted(type(e).__name__ for e in app.extensions())}
    doc = app.createDocument(64, 48, "gui", "RGBA", "U8", "", 300.0)
    view = window.addView(doc)
    spin(100)
    R["active_document"] = app.activeDocument().name() if app.activeDocument() else None
    layer = doc.createNode("art", "paintlayer")
    doc.rootNode().addChildNode(layer, None)
    doc.setActiveNode(layer)
    spin(100)
    # Recorded, not relied on: under Xvfb (no window manager, no real focus) Krita 5.2.9 leaves
    # the view without a current node, so activeNode() is None and selectedNodes() empty even
    # after QApplication.setActiveWindow / showView / QMdiArea.setActiveSubWindow.
    R["active_node"] = None if doc.activeNode() is None else doc.activeNode().name()
    R["selected_nodes"] = [n.name() for n in view.selectedNodes()]

    docker = [d for d in window.dockers() if d.objectName() == "dragd_probe_docker"]
    R["docker_found"] = len(docker)
    if docker:
        d = docker[0]
        R["docker_title"] = d.windowTitle()
        R["docker_canvas_changes"] = d.canvas_changes
        endpoint = os.environ.get("DRAGD_ZMQ_ENDPOINT")
        if endpoint:
            poller = d.ping(endpoint)
            t0 = time.monotonic()
            while poller.done is None and time.monotonic() - t0 < 10:
                spin(20)
            R["docker_zmq_reply"] = None if poller.done is None else [f.decode()
                                                                       for f in poller.done]
            R["docker_zmq_ticks"] = poller.ticks
    return R
