"""The live view (gimp_plugin/live.py) in a REAL GIMP 3.0 (Debian trixie chroot, tests/hosts)
under Xvfb, against a real `dragd serve` with the embedded model on this machine.

A batch script (gimp-console under xvfb-run) builds the image (the embedded model's portrait,
a rectangular selection, a path with one stroke) and calls ``plug-in-dragd-live``
interactively; the plug-in process shows the dialog, and its test hook
(``DRAGD_GIMP_TEST_LIVE``) runs DRIVER inside the dialog's GTK loop. The driver clicks
with xdotool (pointer moves and button presses through the X server, as a user's): the
path's stroke is the first point; it is removed with a right click; two pairs are clicked, one target
dragged elsewhere; Start, at least 10 previews, Stop; a third pair, Continue; the first history
entry; Apply. The batch script then checks the new layer against the daemon's state of that
entry pixel for pixel. A 10 ms GLib timeout in the dialog's loop measures its longest stall.
"""
from __future__ import annotations

import json
import random
import shutil
import time

import pytest

from dragd.daemon.cli.install_plugins import install_gimp
from hosts.chroot import (GIMP_PLUGIN_DIR, PROBE_DIR, HostResult, copy_into_home, ensure_chroot,
                          new_home, run_in_chroot)
from test_gimp_host import check_one_undo_group, plugin_processes
from test_krita_live_host import (CALL_TIMES, LINE, MOVED_TARGET, PAIRS, SEL, THIRD, XDO,  # noqa: F401
                                  face_daemon, portrait, stand_in_dragd)

pytestmark = pytest.mark.hosts

SHOTS = ("gimp-live-dragging.png", "gimp-live-history.png")

#: What both drivers wait with: GTK's loop runs (the dialog's timer, the events) meanwhile.
WAITS = r'''
import json, os, time


def spin(ms):
    from gi.repository import GLib
    loop = GLib.MainLoop()
    GLib.timeout_add(ms, lambda: loop.quit() or False)
    loop.run()


def wait(cond, timeout):
    t0 = time.monotonic()
    while not cond() and time.monotonic() - t0 < timeout:
        spin(10)
    return cond()


def screen(widget, x=None, y=None):
    """Screen coordinates of (x, y) in ``widget``'s allocation (its centre by default)."""
    a = widget.get_allocation()
    if x is None:
        x, y = a.width / 2.0, a.height / 2.0
    top = widget.get_toplevel()
    tx, ty = widget.translate_coordinates(top, int(round(x)), int(round(y)))
    origin = top.get_window().get_origin()
    return origin[-2] + tx, origin[-1] + ty


def press(widget):
    """A left click on a button, as the user gives it, once it can take one."""
    wait(lambda: widget.get_sensitive() and widget.get_mapped(), 10)
    spin(50)                                # a new widget gets its place on the next layout
    xdo("mousemove", *screen(widget))
    xdo("click", 1)
'''

DRIVER = WAITS + XDO + CALL_TIMES + r'''
PAIRS = %(PAIRS)r
MOVED_TARGET = %(MOVED_TARGET)r
THIRD = %(THIRD)r


def main(window):
    R = {}
    reopened = window.layer.get_name().endswith("(dragged)")
    try:
        (reopen if reopened else run)(window, R)
    except Exception:
        import traceback
        R["error"] = traceback.format_exc()
        window.cancel()
    with open(os.environ["DRAGD_LIVE_RESULT"] + (".reopen" if reopened else ""), "w") as f:
        json.dump(R, f)


def reopen(window, R):
    """The view on the result layer: the daemon continues the edit; then Cancel."""
    wait(lambda: window.live.state == "idle", 120)
    R["state"] = window.live.state
    R["continues"] = (window.live.session_info.get("info") or {}).get("continues_edit")
    press(window.cancel_button)
    R["session"] = window.live.state


def run(window, R):
    from gi.repository import Gdk, GLib

    gaps, last, slow = [], [time.monotonic()], []
    cpu = [time.thread_time()]
    R["slow"] = slow

    def tick():
        now, used = time.monotonic(), time.thread_time()
        if last[0] is not None:
            gaps.append(now - last[0])
            if now - last[0] > 0.08:
                # with the CPU time the loop's thread used meanwhile: little means the
                # process was waiting (for a core, for GIMP), not working
                slow.append([round(now - last[0], 3), live.state, live.timings.frames,
                             round(used - cpu[0], 3)])
        last[0], cpu[0] = now, used
        return True

    GLib.timeout_add(10, tick)
    work = []                              # (wall, CPU) seconds of the view's callbacks
    GLib.source_remove(window.timer_id)
    GLib.timeout_add(30, timed(window._tick, work))
    window.redraw = timed(window.redraw, work)

    def shot(name):
        gw = window.dialog.get_window()
        pb = Gdk.pixbuf_get_from_window(gw, 0, 0, gw.get_width(), gw.get_height())
        pb.savev(os.path.join(os.environ["DRAGD_SHOTS"], name), "png", [], [])
        last[0] = None                      # the screenshot is the test's own work

    def view(p):
        return screen(window.area, *window.to_view(p))

    def click(p, button=1):
        xdo("mousemove", *view(p))
        xdo("click", button)

    def stroke(a, b, button=1):
        """Press at a, move to b in steps, release: a drag of the pointer."""
        xdo("mousemove", *view(a))
        xdo("mousedown", button)
        for i in range(1, 5):
            xdo("mousemove", *view((a[0] + (b[0] - a[0]) * i / 4, a[1] + (b[1] - a[1]) * i / 4)))
        xdo("mouseup", button)

    live = window.live
    ok = wait(lambda: live.state == "idle", 300)
    R["open_state"] = live.state
    R["open_status"] = window.status_label.get_text()
    if not ok:
        window.cancel()
        return
    spin(100)
    R["connection"] = window.connection_label.get_text()
    R["view_box"] = list(live.view_box)
    R["prefilled"] = [[list(p.handle), list(p.target)] for p in live.points]
    R["mask_switch"] = [window.mask_check.get_sensitive(), window.mask_check.get_active()]
    fit = window.scale                     # Ctrl + wheel zooms in, Fit goes back
    xdo("mousemove", *screen(window.area, 10, 10))
    xdo("keydown", "ctrl", "click", 4, "keyup", "ctrl")
    R["zoom"] = [window.scale / fit, window.view_size[0]]
    press(window.zoom_fit)
    R["zoom"].append(window.scale / fit)
    click(live.points[0].handle, 3)
    R["after_remove"] = len(live.points)
    for h, t in PAIRS:
        click(h)
        click(t)
    stroke(PAIRS[1][1], MOVED_TARGET)
    R["placed"] = [[list(p.handle), list(p.target)] for p in live.points]
    R["start_enabled"] = window.start_button.get_sensitive()

    serial = live.frame.serial
    t_click = time.monotonic()
    press(window.start_button)
    wait(lambda: live.frame.serial != serial or live.state == "idle", 60)
    R["click_to_first_frame_s"] = time.monotonic() - t_click
    seen, prev, t_first, shot_taken = set(), None, time.monotonic(), False
    while live.state == "dragging" and len(seen) < 12 and time.monotonic() - t_first < 60:
        spin(10)
        if live.frame.serial != prev:
            prev = live.frame.serial
            seen.add(prev)
        if len(seen) == 6 and not shot_taken:
            shot("gimp-live-dragging.png")
            shot_taken = True
    R["frames_seen"] = len(seen)
    R["frames_received"] = live.timings.frames
    R["fps"] = live.timings.fps()
    R["first_frame_s"] = live.timings.first_frame_s
    press(window.stop_button)
    wait(lambda: live.state == "idle", 60)
    R["after_stop"] = {"position": live.position, "stop": live.history[-1].stop,
                       "button": window.start_button.get_label()}
    first = bytes(live.result.data)
    click(THIRD[0])
    click(THIRD[1])
    press(window.start_button)
    wait(lambda: live.state == "idle", 180)
    R["after_continue"] = {"position": live.position, "points": len(live.points),
                           "items": len(window.history_buttons)}
    press(window.history_buttons[1])
    wait(lambda: live.state == "idle", 60)
    spin(100)
    R["after_pick"] = {"position": live.position, "items": len(window.history_buttons),
                       "apply_enabled": window.apply_button.get_sensitive()}
    # the brush takes a stroke of the region away (right button), for the next drag
    press(window.brush_check)
    R["brush_on"] = window.brush_check.get_active()
    stroke((30.0, 40.0), (44.0, 40.0), 3)
    press(window.brush_check)
    spin(100)
    m = live.mask
    R["brushed"] = [m.data[40 * m.width + x] for x in (30, 37, 44)] + [
        m.data[100 * m.width + 100], live.mask_serial, len(live.points)]
    shot("gimp-live-history.png")
    expected = bytes(live.result.data)
    R["equals_first_drag"] = expected == first
    with open(os.environ["DRAGD_LIVE_EXPECTED"], "wb") as f:
        f.write(expected)
    top = sorted(gaps, reverse=True)[:5]
    R["max_gap"], R["top_gaps"] = (top[0] if top else None), [round(g, 3) for g in top]
    R["work_max_s"] = max(w for w, _ in work)
    R["work_cpu_max_s"] = max(c for _, c in work)
    press(window.apply_button)
    R["session_closed"] = live.state
''' % {"PAIRS": PAIRS, "MOVED_TARGET": MOVED_TARGET, "THIRD": THIRD}

SCRIPT = r'''
import json, os
from gi.repository import Gegl, Gio, Gimp

SEL = %(SEL)r
LINE = %(LINE)r
RGBA = "R'G'B'A u8"

image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE,
                       Gio.File.new_for_path(os.environ["DRAGD_PICTURE"]))
layer = image.get_layers()[0]
layer.set_name("portrait")
path = Gimp.Path.new(image, "arrows")
image.insert_path(path, None, 0)
sid = path.bezier_stroke_new_moveto(*LINE[0])
path.bezier_stroke_lineto(sid, *LINE[1])
image.select_rectangle(Gimp.ChannelOps.REPLACE, *SEL)
image.set_selected_layers([layer])
w, h = layer.get_width(), layer.get_height()

proc = Gimp.get_pdb().lookup_procedure("plug-in-dragd-live")
R = {"registered": proc is not None,
     "menu": list(proc.get_menu_paths()) if proc else None,
     "label": proc.get_menu_label() if proc else None}
cfg = proc.create_config()
cfg.set_property("run-mode", Gimp.RunMode.INTERACTIVE)
cfg.set_property("image", image)
cfg.set_core_object_array("drawables", [layer])
for k, v in (("daemon", os.environ["DRAGD_ENDPOINT"]), ("inversion", "fast"),
             ("max-steps", 60), ("paste", "resample")):
    cfg.set_property(k, v)
res = proc.run(cfg)
R["status"] = res.index(0).value_nick
R["stack"] = [lyr.get_name() for lyr in image.get_layers()]
if R["status"] == "success":
    new = res.index(1)
    got = bytes(new.get_buffer().get(Gegl.Rectangle.new(0, 0, w, h), 1.0, RGBA,
                                     Gegl.AbyssPolicy.NONE))
    with open(os.environ["DRAGD_LIVE_EXPECTED"], "rb") as f:
        expected = f.read()
    R["result_equal"] = got == expected
    R["result_size"] = [new.get_width(), new.get_height(), len(got), len(expected)]
    src = bytes(layer.get_buffer().get(Gegl.Rectangle.new(0, 0, w, h), 1.0, RGBA,
                                       Gegl.AbyssPolicy.NONE))
    R["changed_pixels"] = sum(1 for i in range(0, len(src), 4) if src[i:i + 3] != got[i:i + 3])
    R["position"] = image.get_item_position(new)
    if os.environ.get("DRAGD_REOPEN"):          # the view again on the result, cancelled
        cfg.set_core_object_array("drawables", [new])
        again = proc.run(cfg)
        R["reopen_status"] = again.index(0).value_nick
        R["stack_after_cancel"] = [lyr.get_name() for lyr in image.get_layers()]
elif res.length() > 1:
    R["message"] = res.index(1)
with open(os.environ["DRAGD_RESULT"], "w") as f:
    json.dump(R, f)
''' % {"SEL": SEL, "LINE": LINE}


@pytest.fixture(scope="module")
def chroot_root():
    return ensure_chroot()


def run_gimp_live(home, env, timeout=900, trace=False):
    """The batch SCRIPT in gimp-console under xvfb-run; with trace, GIMP's undo tracer
    (tests/hosts/probe/gimp/gimp_trace) records every state-changing call -> `.trace`."""
    rel = ".dragd-result-%d.json" % random.getrandbits(40)
    env = dict(env, DRAGD_RESULT=home.chroot_path(rel))
    if trace:
        copy_into_home(home, PROBE_DIR / "gimp" / "gimp_trace" / "sitecustomize.py",
                       ".dragd-trace/sitecustomize.py")
        env.update(DRAGD_GIMP_TRACE=home.chroot_path(".dragd-trace/trace.jsonl"),
                   PYTHONPATH=home.chroot_path(".dragd-trace"))
    t0 = time.monotonic()
    proc = run_in_chroot(["xvfb-run", "-a", "-n", str(random.randrange(200, 900)), "-s",
                          "-nolisten tcp -screen 0 1280x1024x24", "gimp-console-3.0", "-nis",
                          "--batch-interpreter", "python-fu-eval", "-b", "-", "--quit"],
                         timeout=timeout, env=env, input=SCRIPT, home=home)
    r = HostResult(proc.args, proc.returncode, proc.stdout, proc.stderr)
    r.elapsed = time.monotonic() - t0
    if home.path(rel).exists():
        r.result = json.loads(home.path(rel).read_text())
    tr = home.path(".dragd-trace/trace.jsonl")
    r.trace = [json.loads(line) for line in tr.read_text().splitlines()] if tr.exists() else []
    return r


def test_live_view_in_gimp(chroot_root, face_daemon, tmp_path):
    with new_home("gimp") as home:
        install_gimp(home.path(GIMP_PLUGIN_DIR))
        portrait(home.path("portrait.png"))
        home.path("driver.py").write_text(DRIVER)
        home.path("shots").mkdir()
        r = run_gimp_live(home, {
            "DRAGD_ENDPOINT": face_daemon.endpoint,
            "DRAGD_PICTURE": home.chroot_path("portrait.png"),
            "DRAGD_GIMP_TEST_DIALOG": "ok",      # the settings dialog before the view
            "DRAGD_GIMP_TEST_LIVE": home.chroot_path("driver.py"),
            "DRAGD_LIVE_RESULT": home.chroot_path("live.json"),
            "DRAGD_LIVE_EXPECTED": home.chroot_path("expected.rgba"),
            "DRAGD_SHOTS": home.chroot_path("shots"),
            "DRAGD_REOPEN": "1"}, trace=True)
        live = (json.loads(home.path("live.json").read_text())
                if home.path("live.json").exists() else None)
        reopened = (json.loads(home.path("live.json.reopen").read_text())
                    if home.path("live.json.reopen").exists() else None)
        for name in SHOTS:
            if home.path("shots/" + name).exists():
                shutil.copy(home.path("shots/" + name), tmp_path / name)
    res = r.result
    assert res is not None and live is not None, r.log()[-4000:]
    assert "error" not in live, live["error"] + r.log()[-3000:]
    assert res["registered"] and res["menu"] == ["<Image>/Filters/Generative"]
    assert live["open_state"] == "idle", (live, face_daemon.log()[-3000:])
    assert live["connection"].startswith("\u25cf Connected to %s (cpu" % face_daemon.endpoint)
    x0, y0, x1, y1 = live["view_box"]
    assert x0 < SEL[0] and y0 < SEL[1] and x1 > SEL[0] + SEL[2] and y1 > SEL[1] + SEL[3]
    assert live["prefilled"] == [[list(LINE[0]), list(LINE[1])]]
    assert live["mask_switch"] == [True, True] and live["after_remove"] == 0
    assert live["zoom"][0] == pytest.approx(1.25) and live["zoom"][1] > 560, live["zoom"]
    assert live["zoom"][2] == pytest.approx(1.0)
    expect = [[list(h), list(t)] for h, t in PAIRS]
    expect[1][1] = list(MOVED_TARGET)
    for got, want in zip(live["placed"], expect):
        assert got == [pytest.approx(want[0], abs=0.5), pytest.approx(want[1], abs=0.5)]
    assert len(live["placed"]) == 2 and live["start_enabled"]
    assert live["frames_seen"] >= 10 and live["frames_received"] >= 10, live
    assert live["after_stop"]["position"] == 1 and live["after_stop"]["button"] == "Continue"
    assert live["after_continue"] == {"position": 2, "points": 3, "items": 3}
    assert live["after_pick"] == {"position": 1, "items": 2, "apply_enabled": True}
    assert live["equals_first_drag"]
    assert live["brushed"][:4] == [0, 0, 0, 255] and live["brushed"][4] >= 2, live["brushed"]
    assert live["brushed"][5] == 2                 # entry 1's points: the brush added none
    assert live["session_closed"] == "closed"
    assert res["status"] == "success", (res, r.log()[-3000:])
    assert res["stack"] == ["portrait (dragged)", "portrait"], res["stack"]
    assert res["position"] == 0
    assert res["result_equal"], res["result_size"]
    assert res["changed_pixels"] > 100
    # the view reopened on the result continues the daemon's edit; Cancel changes nothing
    assert reopened == {"state": "idle", "continues": True, "session": "closed"}, reopened
    assert res["reopen_status"] == "cancel"
    assert res["stack_after_cancel"] == ["portrait (dragged)", "portrait"]
    # Apply is one undo group holding every change; the cancelled view changed nothing (a
    # process that changes nothing leaves no trace)
    (applied,) = plugin_processes(r)
    names = check_one_undo_group(applied)
    assert "Image.insert_layer" in names, names
    for name in SHOTS:
        assert (tmp_path / name).stat().st_size > 1000, name
    print("\nGIMP live view: %d previews shown (%.1f frames/s received), click to first "
          "frame %.0f ms (%.0f ms to arrive), longest stall of the dialog's loop %.0f ms "
          "(top %s; gaps over 80 ms [s, state, frames, CPU s]: %s); the view's longest callback "
          "%.0f ms wall, %.0f ms CPU; screenshots in %s" % (
              live["frames_seen"], live["fps"] or 0, 1000 * live["click_to_first_frame_s"],
              1000 * (live["first_frame_s"] or 0), 1000 * live["max_gap"], live["top_gaps"],
              live["slow"], 1000 * live["work_max_s"], 1000 * live["work_cpu_max_s"],
              tmp_path))


OFFER_DRIVER = WAITS + XDO + CALL_TIMES + r'''

def main(window):
    R = {}
    try:
        wait(lambda: window.offer_button.get_visible(), 30)
        R["offer_visible"] = window.offer_button.get_visible()
        R["offer_text"] = window.offer_label.get_text()
        R["connection"] = window.connection_label.get_text()
        t0 = time.monotonic()
        press(window.offer_button)
        R["starting_status"] = window.status_label.get_text()
        ok = wait(lambda: window.launcher is None and window.live.state == "idle", 150)
        R["ready_s"] = time.monotonic() - t0
        R["state"] = window.live.state
        spin(100)
        R["connected"] = window.connection_label.get_text()
        if ok:
            window.live.points = []
            for p in ((96.0, 100.0), (100.0, 100.0)):
                xdo("mousemove", *screen(window.area, *window.to_view(p)))
                xdo("click", 1)
            R["points"] = len(window.live.points)
            press(window.start_button)
            wait(lambda: window.live.state == "idle" and window.live.position == 1, 120)
            with open(os.environ["DRAGD_LIVE_EXPECTED"], "wb") as f:
                f.write(bytes(window.live.result.data))
            press(window.apply_button)
        else:
            window.cancel()
    except Exception:
        import traceback
        R["error"] = traceback.format_exc()
        window.cancel()
    with open(os.environ["DRAGD_LIVE_RESULT"], "w") as f:
        json.dump(R, f)
'''


def test_no_daemon_the_gimp_live_view_offers_to_start_one(chroot_root, tmp_path):
    """As in Krita: no daemon on the default address, a stand-in dragd in the chroot; the
    offer names the log, accepting runs `dragd serve`, then a drag and Apply work."""
    with new_home("gimp") as home:
        install_gimp(home.path(GIMP_PLUGIN_DIR))
        portrait(home.path("portrait.png"))
        home.path("driver.py").write_text(OFFER_DRIVER)
        with stand_in_dragd(home, tmp_path / "daemon") as ran:
            r = run_gimp_live(home, {
                "DRAGD_ENDPOINT": "tcp://127.0.0.1:5557",
                "DRAGD_PICTURE": home.chroot_path("portrait.png"),
                "DRAGD_COMMAND": home.chroot_path("bin/dragd"),
                "DRAGD_GIMP_TEST_DIALOG": "ok",
                "DRAGD_GIMP_TEST_LIVE": home.chroot_path("driver.py"),
                "DRAGD_LIVE_RESULT": home.chroot_path("live.json"),
                "DRAGD_LIVE_EXPECTED": home.chroot_path("expected.rgba")}, timeout=600)
        live = (json.loads(home.path("live.json").read_text())
                if home.path("live.json").exists() else None)
    res = r.result
    assert res is not None and live is not None, r.log()[-4000:]
    assert "error" not in live, live["error"] + r.log()[-3000:]
    assert live["offer_visible"], live
    assert "No dragd daemon answers at tcp://127.0.0.1:5557" in live["offer_text"]
    assert "/.cache/dragd/serve.log" in live["offer_text"], live["offer_text"]
    assert live["connection"].startswith("\u25cb Not connected")
    assert ran["invoked"][1:] == ["serve"] and ran["log"]
    assert live["starting_status"].startswith("Starting the dragd daemon (log: ")
    assert live["state"] == "idle", live
    assert live["connected"].startswith("\u25cf Connected to tcp://127.0.0.1:5557")
    assert res["status"] == "success" and res["result_equal"], res
    assert res["stack"] == ["portrait (dragged)", "portrait"], res["stack"]
    print("\nGIMP, no daemon: offer shown, accepted, the daemon answered %.1f s later, "
          "the edit applied" % live["ready_s"])
