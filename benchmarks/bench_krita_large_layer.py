"""Krita's UI thread during a run on a 6000x4000 layer with a 100-px feathered selection,
in the real Krita GUI (the trixie chroot of tests/hosts, under Xvfb), against a `dragd
serve` with the tiny test model:

    python benchmarks/bench_krita_large_layer.py

Prints the longest gap of Krita's event loop and every gap over 80 ms, the plug-in's
longest callback of each kind (run.timings "ui_*": read, send, poll, write, added, ...),
and what adding one empty paint layer to the same 6000x4000 document costs (libkis
addChildNode waits for the image's recomposition: the floor under any run that adds its
result as a layer).
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
def main(window, app):
    from dragd.krita_plugin.ui import DOCKER_ID
    d = [d for d in window.dockers() if d.objectName() == DOCKER_ID][0]
    d.show()
    d.align_box.setCurrentIndex(d.align_box.findData("none"))
    R = {"big": big_run(app, window, d, os.environ["DRAGD_ENDPOINT"], 400)}
    doc = app.createDocument(6000, 4000, "floor", "RGBA", "U8", "", 72.0)
    window.addView(doc)
    spin(1000)
    empty = doc.createNode("empty", "paintlayer")
    watch = Watch(doc)
    t0 = time.monotonic()
    doc.rootNode().addChildNode(empty, None)
    R["add_call"] = time.monotonic() - t0
    spin(1500)
    R["add_watch"] = watch.stop()
    doc.setModified(False)
    return R
'''


def main() -> int:
    ensure_chroot()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        daemon = start_daemon(build_tiny_model(tmp / "tiny.pkl"), tmp / "daemon")
        try:
            test = tmp / "krita_large_layer.py"
            test.write_text(test_krita_host.GUI_TEST + MAIN)
            with new_home("krita-gui") as home:
                install_krita(home.path(".local/share/krita/pykrita"),
                              home.path(".config/kritarc"))
                r = run_krita_gui(test, timeout=600, home=home,
                                  env={"DRAGD_ENDPOINT": daemon.endpoint})
        finally:
            daemon.stop()
    res = r.result
    if not res or "error" in res:
        print("the Krita run failed:", (res or {}).get("error"), r.log()[-3000:])
        return 1
    big = res["big"]
    ui = {k: round(v, 3) for k, v in sorted(big["timings"].items()) if k.startswith("ui_")}
    print("run: %s in %.1f s" % (big["state"], big["elapsed"]))
    print("longest event-loop gap %.0f ms; gaps over 80 ms [at s, s]: %s"
          % (1000 * big["watch"]["max_gap"], big["watch"]["long_gaps"]))
    print("longest plug-in callback of each kind (s): %s" % ui)
    print("adding an empty layer to a 6000x4000 document: the call %.0f ms, longest gap "
          "%.0f ms" % (1000 * res["add_call"], 1000 * res["add_watch"]["max_gap"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
