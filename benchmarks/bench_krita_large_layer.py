"""Krita's UI thread during a run on a 6000x4000 layer with a 100-px feathered selection,
in the real Krita GUI (the trixie chroot of tests/hosts, under Xvfb), against a `dragd
serve` with the tiny test model:

    python benchmarks/bench_krita_large_layer.py

Krita runs twice: with its default OpenGL canvas (under Xvfb that is Mesa's software
renderer, llvmpipe: texture uploads are CPU copies) and with OpenGL off (the QPainter
canvas, kritadisplayrc OpenGLRenderer=none). Each time it prints the run's longest gap of
Krita's event loop and every gap over 80 ms, the plug-in's longest callback of each kind
(run.timings "ui_*": read, send, poll, write, ...), and the floor under any run that adds
its result as a layer: adding one empty paint layer to a 6000x4000 document whose layer
holds noise, by libkis `Node.addChildNode` (what the plug-in calls: it waits for the
recomposition of the whole image) and by Krita's own "New Paint Layer" action (which does
not wait, but acts on the active layer of the current view only).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_krita_host  # noqa: E402
from daemon_fixture import build_tiny_model, start_daemon  # noqa: E402
from hosts.chroot import ensure_chroot, new_home, run_krita_gui  # noqa: E402

from dragd.daemon.cli.install_plugins import install_krita  # noqa: E402

MAIN = r'''
import random


def timed(doc, fn):
    watch = Watch(doc)
    t0 = time.monotonic()
    fn()
    call = time.monotonic() - t0
    spin(1500)
    return {"call": call, "max_gap": watch.stop()["max_gap"]}


def main(window, app):
    from PyQt5.QtWidgets import QApplication
    from dragd.krita_plugin.ui import DOCKER_ID
    d = [d for d in window.dockers() if d.objectName() == DOCKER_ID][0]
    d.show()
    d.align_box.setCurrentIndex(d.align_box.findData("none"))
    R = {"big": big_run(app, window, d, os.environ["DRAGD_ENDPOINT"], 400)}
    doc = app.createDocument(6000, 4000, "floor", "RGBA", "U8", "", 72.0)
    window.addView(doc)
    spin(1000)
    classes = {w.metaObject().className() for w in QApplication.allWidgets()}
    R["canvas"] = sorted(c for c in classes if c.endswith(("Canvas", "Canvas2")))
    bg = doc.rootNode().childNodes()[0]
    noise = bytes(random.Random(0).getrandbits(8) for _ in range(6000 * 4 * 8))
    for y in range(0, 4000, 8):
        bg.setPixelData(noise, 0, y, 6000, 8)
    doc.refreshProjection()
    spin(1500)
    root = doc.rootNode()
    R["libkis"] = [timed(doc, lambda: root.addChildNode(doc.createNode("e", "paintlayer"),
                                                        None)) for _ in range(3)]
    R["action"] = [timed(doc, lambda: app.action("add_new_paint_layer").trigger())
                   for _ in range(3)]
    R["layers"] = len(root.childNodes())
    doc.setModified(False)
    return R
'''


def run_once(model: Path, tmp: Path, opengl: bool) -> dict:
    daemon = start_daemon(model, tmp / ("daemon-gl" if opengl else "daemon-qp"))
    try:
        test = tmp / "krita_large_layer.py"
        test.write_text(test_krita_host.GUI_TEST + MAIN)
        with new_home("krita-gui") as home:
            install_krita(home.path(".local/share/krita/pykrita"), home.path(".config/kritarc"))
            if not opengl:
                home.path(".config/kritadisplayrc").write_text(
                    "[General]\nOpenGLRenderer=none\n")
            r = run_krita_gui(test, timeout=600, home=home,
                              env={"DRAGD_ENDPOINT": daemon.endpoint})
    finally:
        daemon.stop()
    res = r.result
    if not res or "error" in res:
        raise RuntimeError("the Krita run failed: %s\n%s" % ((res or {}).get("error"),
                                                            r.log()[-3000:]))
    return res


def ms(xs: list, key: str) -> str:
    return "/".join("%.0f" % (1000 * x[key]) for x in xs)


def main() -> int:
    ensure_chroot()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_tiny_model(tmp / "tiny.pkl")
        for opengl in (True, False):
            try:
                res = run_once(model, tmp, opengl)
            except RuntimeError as e:
                print(e)
                return 1
            big = res["big"]
            ui = {k: round(v, 3) for k, v in sorted(big["timings"].items())
                  if k.startswith("ui_")}
            print("== Krita's canvas: %s" % ", ".join(res["canvas"]))
            print("run: %s in %.1f s" % (big["state"], big["elapsed"]))
            print("longest event-loop gap %.0f ms; gaps over 80 ms [at s, s]: %s"
                  % (1000 * big["watch"]["max_gap"], big["watch"]["long_gaps"]))
            print("longest plug-in callback of each kind (s): %s" % ui)
            print("adding an empty layer to a 6000x4000 document (3 times, ms):")
            print("  libkis Node.addChildNode: the call %s, longest gap %s"
                  % (ms(res["libkis"], "call"), ms(res["libkis"], "max_gap")))
            print("  Krita's New Paint Layer action: the call %s, longest gap %s"
                  % (ms(res["action"], "call"), ms(res["action"], "max_gap")))
            if res["layers"] != 7:
                print("  (expected 7 layers after the adds, found %d)" % res["layers"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
