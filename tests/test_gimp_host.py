"""The GIMP plug-in in a REAL GIMP 3.0 (Debian trixie chroot, tests/hosts): installed with the
real installer into a private profile, called by a python-fu-eval batch script against a
dragd daemon running on this machine (127.0.0.1; the chroot shares the network namespace),
non-interactively and interactively (its GimpUi dialogs, under Xvfb). The batch script
writes what it saw to a JSON file the test reads.

Daemons: the real `dragd serve` process with a tiny model (`running_daemon`, from
tests/daemon_fixture.py) for the end-to-end drag; an in-process server with a scripted
stand-in backend (`daemon`) where a test needs to see what the daemon received or needs a
drag of a known length (Stop at step 2, a plug-in killed mid-drag).

Marked `hosts`: skipped where the chroot cannot be built, except under CI or
DRAGD_REQUIRE_HOSTS=1 (then a failure).
"""
from __future__ import annotations

import base64
import json
import random
import time

import pytest

from daemon_fixture import free_port
from dragd.daemon.cli.install_plugins import install_gimp
from stub_backend import RecordingBackend, serving
from hosts.chroot import (GIMP_PLUGIN_DIR, HostResult, ensure_chroot, new_home,
                          run_gimp_script, run_in_chroot)

pytestmark = pytest.mark.hosts

# ---------------------------------------------------------------------------
# The batch script (runs inside GIMP's python-fu-eval)
#
# Builds a 64x48 image: a background and a 40x30 layer "art" at offset (10, 6) with alpha
# (opaque left half, alpha 160 right half), a path with one two-anchor stroke and a
# rectangular selection; then calls plug-in-dragd-drag once per entry of $DRAGD_CALLS (JSON
# list of {"label", "run_mode", "args": {argument: value}, "variant"}; a variant builds a
# fresh image with another scene: error messages, a layer mask). Writes to $DRAGD_RESULT: per
# call the status, message, elapsed seconds, return values and layer stack, and base64 pixels
# of the source (before and after) and of the new layer, plus the selection mask in layer
# coordinates.
# ---------------------------------------------------------------------------

SCRIPT = r'''
import base64
import json
import os
import time

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, Gio

W, H = 64, 48
LW, LH = 40, 30
OX, OY = 10, 6
SEL = (20, 10, 16, 14)                 # x, y, w, h in image coordinates
STROKE = ((24.0, 14.0), (30.0, 18.0))  # handle -> target, image coordinates
RGBA = "R'G'B'A u8"


def b64(data):
    return base64.b64encode(bytes(data)).decode("ascii")


def pixels(layer):
    rect = Gegl.Rectangle.new(0, 0, layer.get_width(), layer.get_height())
    return bytes(layer.get_buffer().get(rect, 1.0, RGBA, Gegl.AbyssPolicy.CLAMP))


def build_big():
    """6000x4000, one layer, an elliptical selection feathered by 100 px, one stroke."""
    bw, bh = 6000, 4000
    image = Gimp.Image.new(bw, bh, Gimp.ImageBaseType.RGB)
    art = Gimp.Layer.new(image, "art", bw, bh, Gimp.ImageType.RGBA_IMAGE, 100.0,
                         Gimp.LayerMode.NORMAL)
    image.insert_layer(art, None, 0)
    row = bytes((x * 7 % 256, x % 256, 90, 255)[c] for x in range(bw) for c in range(4))
    buf = art.get_buffer()
    for y0 in range(0, bh, 500):
        buf.set(Gegl.Rectangle.new(0, y0, bw, 500), RGBA, row * 500)
    buf.flush()
    path = Gimp.Path.new(image, "arrows")
    image.insert_path(path, None, 0)
    sid = path.bezier_stroke_new_moveto(3000.0, 2000.0)
    path.bezier_stroke_lineto(sid, 3040.0, 2010.0)
    image.select_ellipse(Gimp.ChannelOps.REPLACE, 2700, 1700, 600, 600)
    Gimp.Selection.feather(image, 100.0)
    image.set_selected_layers([art])
    return image, art


def build_photo():
    """The photo in $DRAGD_PHOTO (a PNG), an elliptical selection over the head unless
    $DRAGD_PHOTO_SEL is empty, and one short stroke inside it."""
    image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE,
                           Gio.File.new_for_path(os.environ["DRAGD_PHOTO"]))
    art = image.get_layers()[0]
    art.set_name("photo")
    if not art.has_alpha():
        art.add_alpha()
    path = Gimp.Path.new(image, "arrows")
    image.insert_path(path, None, 0)
    sid = path.bezier_stroke_new_moveto(205.0, 150.0)
    path.bezier_stroke_lineto(sid, 205.0, 146.0)
    image.select_ellipse(Gimp.ChannelOps.REPLACE, 130, 15, 150, 190)
    image.set_selected_layers([art])
    return image, art


def save_png(image, name, width=480):
    """A flattened copy of the image, at most ``width`` px wide, as a PNG in $DRAGD_SHOTS."""
    dup = image.duplicate()
    dup.flatten()
    w, h = dup.get_width(), dup.get_height()
    if w > width:
        dup.scale(width, max(1, round(h * width / w)))
    Gimp.file_save(Gimp.RunMode.NONINTERACTIVE, dup,
                   Gio.File.new_for_path(os.path.join(os.environ["DRAGD_SHOTS"], name)), None)
    dup.delete()


def build(variant=""):
    if variant == "big":
        return build_big()
    if variant == "photo":
        return build_photo()
    image = Gimp.Image.new(W, H, Gimp.ImageBaseType.RGB)
    bg = Gimp.Layer.new(image, "bg", W, H, Gimp.ImageType.RGB_IMAGE, 100.0,
                        Gimp.LayerMode.NORMAL)
    image.insert_layer(bg, None, 0)
    art = Gimp.Layer.new(image, "art", LW, LH, Gimp.ImageType.RGBA_IMAGE, 100.0,
                         Gimp.LayerMode.NORMAL)
    image.insert_layer(art, None, 0)
    art.set_offsets(OX, OY)
    src = bytearray(LW * LH * 4)
    for y in range(LH):
        for x in range(LW):
            i = (y * LW + x) * 4
            src[i:i + 4] = bytes((x * 6 % 256, y * 8 % 256, (x * y) % 256,
                                  255 if x < 20 else 160))
    buf = art.get_buffer()
    buf.set(Gegl.Rectangle.new(0, 0, LW, LH), RGBA, bytes(src))
    buf.flush()
    if variant != "no-path":
        path = Gimp.Path.new(image, "arrows")
        image.insert_path(path, None, 0)
        sid = path.bezier_stroke_new_moveto(*STROKE[0])
        path.bezier_stroke_lineto(sid, *STROKE[1])
        if variant == "one-anchor":
            path.bezier_stroke_new_moveto(40.0, 20.0)
    if variant == "layer-mask":
        lm = art.create_mask(Gimp.AddMaskType.WHITE)
        art.add_mask(lm)
        mb = lm.get_buffer()
        mb.set(Gegl.Rectangle.new(0, 0, 12, LH), "Y u8", bytes(12 * LH))
        mb.flush()
    if variant == "handle-outside":
        image.select_rectangle(Gimp.ChannelOps.REPLACE, 40, 20, 8, 8)
    else:
        image.select_rectangle(Gimp.ChannelOps.REPLACE, *SEL)
    image.set_selected_layers([art])
    return image, art


R = {"calls": []}
image, art = build()
kept = None
mask = bytes(image.get_selection().get_buffer().get(
    Gegl.Rectangle.new(OX, OY, LW, LH), 1.0, "Y u8", Gegl.AbyssPolicy.NONE))
R["layer"] = {"width": LW, "height": LH, "offsets": [OX, OY]}
R["source_before"] = b64(pixels(art))
R["mask"] = b64(mask)

pdb = Gimp.get_pdb()
proc = pdb.lookup_procedure("plug-in-dragd-drag")
R["registered"] = proc is not None
if proc is not None:
    R["arguments"] = [a.name for a in proc.get_arguments()]
    R["menu_paths"] = list(proc.get_menu_paths())
    R["menu_label"] = proc.get_menu_label()
    for call in json.loads(os.environ.get("DRAGD_CALLS", "[]")):
        if call.get("variant"):
            image, art = build(call["variant"])
        if call.get("deselect"):
            Gimp.Selection.none(image)
        cfg = proc.create_config()
        cfg.set_property("run-mode", getattr(Gimp.RunMode,
                                             call.get("run_mode", "NONINTERACTIVE")))
        cfg.set_property("image", image)
        source = kept if call.get("on") == "result" else art
        cfg.set_core_object_array("drawables", [source])
        for k, v in call.get("args", {}).items():
            cfg.set_property(k, v)
        before = [lyr.get_id() for lyr in image.get_layers()]
        t0 = time.monotonic()
        res = proc.run(cfg)
        elapsed = time.monotonic() - t0
        c = {"label": call.get("label"), "elapsed": elapsed,
             "status": res.index(0).value_nick, "nvalues": res.length(),
             "last_error": pdb.get_last_error(),
             "stack": [lyr.get_name() for lyr in image.get_layers()]}
        if c["status"] == "success":
            new = res.index(1)
            c["steps"] = res.index(2)
            c["stop"] = res.index(3)
            c["outcome"] = res.index(4)
            c["new_layer"] = {"name": new.get_name(), "id": new.get_id(),
                              "offsets": list(new.get_offsets())[1:],
                              "size": [new.get_width(), new.get_height()],
                              "has_alpha": new.has_alpha(),
                              "position": image.get_item_position(new),
                              "pixels": b64(pixels(new)) if new.get_width() < 1000 else ""}
            c["source_after"] = b64(pixels(art)) if art.get_width() < 1000 else ""
            for key, lyr in (("new_mask", new), ("source_mask", art)):
                if lyr.get_mask() is not None:
                    m = lyr.get_mask()
                    c[key] = b64(m.get_buffer().get(Gegl.Rectangle.new(
                        0, 0, m.get_width(), m.get_height()), 1.0, "Y u8",
                        Gegl.AbyssPolicy.CLAMP))
            c["new_layer_ids"] = [i for i in (lyr.get_id() for lyr in image.get_layers())
                                  if i not in before]
            if call.get("save_png"):
                save_png(image, call["save_png"])
            if call.get("keep_result"):      # the next call with "on": "result" edits it
                kept = new
            else:
                image.remove_layer(new)      # the next call starts from the same stack
        elif res.length() > 1:
            c["message"] = res.index(1)
        R["calls"].append(c)

with open(os.environ["DRAGD_RESULT"], "w") as f:
    json.dump(R, f)
image.delete()
'''

# ---------------------------------------------------------------------------
# The daemon
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon():
    """A dragd server on 127.0.0.1 with the recording stand-in backend: six 0.25-s steps per
    drag (240 for a long one), an 8x6 preview per step. Yields (endpoint, backend)."""
    backend = RecordingBackend(models=("stub",), invert_steps=2, invert_wait=0.0, drag_steps=6,
                               step_wait=0.25, long_drag_steps=240, long_step_wait=0.25,
                               preview_size=(8, 6), honour_mask=True)
    with serving(backend) as endpoint:
        yield endpoint, backend


@pytest.fixture(scope="module")
def chroot_root():
    return ensure_chroot()


@pytest.fixture
def home(chroot_root):
    """A private GIMP profile in the chroot, the plug-in installed by the real installer."""
    with new_home("gimp") as h:
        root = install_gimp(h.path(GIMP_PLUGIN_DIR))
        assert (root / "dragd-gimp.py").is_file()
        assert (root / "dragd" / "protocol" / "client.py").is_file()
        assert (root / "dragd" / "gimp_plugin" / "plugin.py").is_file()
        yield h


def unb64(s):
    return base64.b64decode(s)


def run_calls(home, calls, *, timeout=180, trace=False, xvfb=False, env=None):
    env = dict(env or {})
    env["DRAGD_CALLS"] = json.dumps(calls)
    if not xvfb:
        r = run_gimp_script(SCRIPT, timeout=timeout, home=home, env=env, trace=trace)
        r.check()
        return r
    # Interactive runs need a display for the plug-in's GTK dialogs: the same batch run
    # under xvfb-run (gimp-console opens no window itself; the plug-in process does).
    rel = ".dragd-result-%d.json" % random.getrandbits(40)
    env["DRAGD_RESULT"] = home.chroot_path(rel)
    t0 = time.monotonic()
    proc = run_in_chroot(["xvfb-run", "-a", "-n", str(random.randrange(200, 900)), "-s",
                          "-nolisten tcp -screen 0 1280x1024x24", "gimp-console-3.0", "-nis",
                          "--batch-interpreter", "python-fu-eval", "-b", "-", "--quit"],
                         timeout=timeout, env=env, input=SCRIPT, home=home)
    r = HostResult(proc.args, proc.returncode, proc.stdout, proc.stderr)
    r.elapsed = time.monotonic() - t0
    res = home.path(rel)
    if res.exists():
        r.result = json.loads(res.read_text())
        res.unlink()
    r.check()
    return r


def check_result_layer(res, call, min_changed=1.0):
    """The new layer is directly above the source with its offsets and size; the source is
    untouched; outside the selection the new layer equals the source exactly, inside it
    changed (at least the fraction min_changed of the pixels); the layer kept the source's
    alpha."""
    lw, lh = res["layer"]["width"], res["layer"]["height"]
    src = unb64(res["source_before"])
    mask = unb64(res["mask"])
    new = call["new_layer"]
    assert call["stack"] == ["art (dragged)", "art", "bg"], call["stack"]
    assert new["name"] == "art (dragged)" and new["position"] == 0
    assert new["offsets"] == res["layer"]["offsets"] == [10, 6]
    assert new["size"] == [lw, lh] and new["has_alpha"] is True
    assert unb64(call["source_after"]) == src
    out = unb64(new["pixels"])
    assert len(out) == len(src) == lw * lh * 4
    n_in = n_in_changed = 0
    for i in range(lw * lh):
        px, sp = out[4 * i:4 * i + 4], src[4 * i:4 * i + 4]
        assert px[3] == sp[3], i                       # alpha kept
        if mask[i] == 0:
            assert px == sp, (i % lw, i // lw)         # outside: exactly the source
        else:
            n_in += 1
            n_in_changed += px[:3] != sp[:3]
    assert n_in == 16 * 14 and n_in_changed >= min_changed * n_in, (n_in_changed, n_in)
    return n_in_changed / n_in


def plugin_processes(r):
    """The undo-tracer lines of each plug-in process (one per call), in order."""
    assert not [t for t in r.trace if "error" in t], r.trace[:5]
    by_pid = {}
    for t in r.trace:
        if t.get("prog") == "dragd-gimp.py":
            by_pid.setdefault(t["pid"], []).append(t)
    return list(by_pid.values())


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


def check_one_undo_group(proc_trace):
    names = [t["call"] for t in proc_trace]
    assert names.count("Image.undo_group_start") == 1, names
    assert names.count("Image.undo_group_end") == 1, names
    assert names[0] == "Image.undo_group_start" and names[-1] == "Image.undo_group_end"
    assert all(t["depth"] == 1 for t in proc_trace[1:-1]), proc_trace
    return names


def test_real_daemon_drag_and_daemon_down(running_daemon, home):
    """The whole path with the real `dragd serve` (tiny model, real PTI and drag on the
    CPU): a new layer, the source untouched, one undo group; then the daemon down."""
    down = "tcp://127.0.0.1:%d" % free_port()
    args = {"daemon": running_daemon.endpoint, "inversion": "fast", "max-steps": 20,
            "live-preview": True, "time-limit": 300}
    calls = [
        {"label": "drag", "args": args, "keep_result": True},
        {"label": "again", "args": args, "on": "result"},      # a second drag on its result
        # the same result without a selection: its layer remembers the region, the daemon
        # continues (the first run's region holds the points)
        {"label": "unselected", "args": args, "on": "result", "deselect": True},
        # the source again: its new result goes above the earlier one, not under it
        {"label": "source", "args": args},
        {"label": "down", "args": {"daemon": down}},
    ]
    log_before = len(running_daemon.log())
    r = run_calls(home, calls, trace=True, timeout=400)
    res = r.result
    assert res["registered"] is True, r.log()
    assert res["arguments"] == ["run-mode", "image", "drawables", "model", "max-steps",
                                "learning-rate", "lambda-mask", "latent-space", "method",
                                "inversion", "paste", "face-alignment", "daemon", "time-limit",
                                "live-preview"]
    assert res["menu_paths"] == ["<Image>/Filters/Generative"]
    assert res["menu_label"] == "_Drag (DragGAN)..."
    drag, again, unselected, source, fail = res["calls"]

    assert drag["status"] == "success", (drag, r.log(), running_daemon.log()[-3000:])
    assert drag["stop"] in ("converged", "max_steps", "stalled") and drag["steps"] <= 20
    changed = check_result_layer(res, drag, min_changed=0.5)   # a GAN's output, not a filter
    assert len(drag["new_layer_ids"]) == 1

    assert drag["outcome"].startswith(drag["stop"].replace("max_steps", "step limit")), drag
    assert "px from the targets; inversion " in drag["outcome"] and " dB" in drag["outcome"]

    # The second run, on the layer the first one made, continued that edit: the daemon found
    # GIMP's pixels byte for byte as it returned them (in the same region) and inverted
    # nothing. Its layer sits above the first result, with the same clean name (GIMP
    # numbers a name that is taken).
    assert again["status"] == "success", (again, r.log(), running_daemon.log()[-3000:])
    assert again["stack"][1:] == ["art (dragged)", "art", "bg"], again["stack"]
    assert again["stack"][0].startswith("art (dragged)") and "(dragged) (" not in again["stack"][0]
    assert "continues an earlier edit" in running_daemon.log()[log_before:]
    assert "continued the earlier edit" in again["outcome"], again["outcome"]
    assert unselected["status"] == "success", unselected
    assert "continued the earlier edit" in unselected["outcome"], unselected["outcome"]
    assert source["status"] == "success", source
    assert source["stack"][1:] == ["art (dragged)", "art", "bg"], source["stack"]
    assert source["new_layer"]["position"] == 0, source["new_layer"]

    procs = plugin_processes(r)
    assert len(procs) == 4, procs                      # the failing call changed nothing
    names = check_one_undo_group(procs[0])
    # no preview layers (previews go to the progress dialog): the result is the one layer
    assert names.count("Image.insert_layer") == 1 and "Image.remove_layer" not in names, names
    assert "left image undo in inconsistent state" not in r.stderr

    # Daemon down: an error status with the start command, within the connect timeout.
    assert fail["status"] == "execution-error", fail
    assert "dragd serve" in fail["message"] and down in fail["message"]
    assert fail["last_error"] == fail["message"]
    assert fail["elapsed"] < 9.0, fail["elapsed"]
    assert fail["stack"][-3:] == ["art (dragged)", "art", "bg"], fail["stack"]
    print("\nGIMP batch run %.1f s: real drag call %.1f s (%d steps, %s, %.0f%% of the "
          "selected pixels changed), again on its result %.1f s, daemon-down call %.1f s" % (
              r.elapsed, drag["elapsed"], drag["steps"], drag["stop"], 100 * changed,
              again["elapsed"], fail["elapsed"]))


def test_request_contents_region_and_no_preview_layer(daemon, home):
    """What the daemon receives (points in layer coordinates, the mask, the selection's box
    as the region, the settings); no preview layer (stand-in daemon that streams a preview
    every step), the result the one change in the one undo group."""
    endpoint, backend = daemon
    calls = [{"label": "drag", "args": {"daemon": endpoint, "inversion": "fast",
                                        "max-steps": 40, "lambda-mask": 12.5,
                                        "latent-space": "w", "live-preview": True,
                                        "face-alignment": "off"}}]
    r = run_calls(home, calls, trace=True)
    res = r.result
    (drag,) = res["calls"]
    assert drag["status"] == "success", (drag, r.log())
    assert drag["stop"] == "converged" and drag["steps"] == 6
    check_result_layer(res, drag)
    sent = backend.drags[-1]
    # path anchors (24, 14) -> (30, 18) in the image; the layer sits at (10, 6)
    assert sent["points"] == [[[14.0, 8.0], [20.0, 12.0]]]
    p = sent["params"]
    assert p["max_steps"] == 40 and p["lambda_mask"] == 12.5 and p["space"] == "w"
    assert p["lr"] is None and p["preview_every"] > 0
    assert sent["mask"] == unb64(res["mask"])
    assert backend.opened[-1]["invert"]["quality"] == "fast"
    assert backend.opened[-1]["size"][2] == 4
    # the selection (20, 10) 16x14 in the image is (10, 4) on the layer at (10, 6)
    assert backend.opened[-1]["roi"] == {"x": 10, "y": 4, "width": 16, "height": 14}
    assert backend.opened[-1]["align"] == "none"          # the Face alignment switch, Off
    assert p["paste"] == "detail"
    assert drag["outcome"] == "converged after 6 steps, 0.5 px from the targets", drag
    (proc,) = plugin_processes(r)
    names = check_one_undo_group(proc)
    assert "Layer.scale" not in names and "Image.remove_layer" not in names, names
    assert names.count("Image.insert_layer") == 1, names


def test_interactive_dialogs_stop_and_remembered_settings(daemon, home):
    endpoint, backend = daemon
    # 1. INTERACTIVE under Xvfb: the settings dialog opens (the test hook sets the step
    #    limit to 5 and the inversion to "quality" as a user would, then presses OK); the
    #    progress dialog opens and the hook presses Stop at step 2: the drag so far is kept.
    r = run_calls(home, [{"label": "interactive", "run_mode": "INTERACTIVE",
                          "args": {"daemon": endpoint}}], xvfb=True,
                  env={"DRAGD_GIMP_TEST_DIALOG": "ok max-steps=5 inversion=quality",
                       "DRAGD_GIMP_TEST_STOP": "2"})
    (call,) = r.result["calls"]
    assert call["status"] == "success", (call, r.log())
    assert call["stop"] == "cancelled" and 2 <= call["steps"] < 5, call
    check_result_layer(r.result, call)
    assert backend.drags[-1]["params"]["max_steps"] == 5
    assert backend.opened[-1]["invert"]["quality"] == "quality"
    last = home.path(".config/GIMP/3.0/plug-in-settings/"
                     "GimpProcedureConfigRun-plug-in-dragd-drag.last")
    text = last.read_text()
    assert "(max-steps 5)" in text and '(inversion "quality")' in text, text
    t_interactive = r.elapsed

    # 2. A new GIMP process, WITH_LAST_VALS (Filters > Repeat): the remembered values are
    #    used (5 steps, not the default 300; the stand-in runs min(max_steps, 6) steps).
    r = run_calls(home, [{"label": "repeat", "run_mode": "WITH_LAST_VALS",
                          "args": {"daemon": endpoint}}])
    (call,) = r.result["calls"]
    assert call["status"] == "success", (call, r.log())
    assert call["steps"] == 5 and call["stop"] == "converged"
    assert backend.drags[-1]["params"]["max_steps"] == 5
    print("\nGIMP interactive run (Xvfb) %.1f s, repeat run %.1f s" % (t_interactive,
                                                                        r.elapsed))


def test_dialog_model_list_when_the_daemon_is_down(home):
    """The daemon is not running when the dialog opens: within the probe's bounded wait
    the dialog shows the last used model (given as the model argument) and the loaded
    model's entry, with words saying the list could not be fetched; OK then ends the run
    with the daemon's start command."""
    down = "tcp://127.0.0.1:%d" % free_port()
    shots = home.path("downshots")
    shots.mkdir()
    t0 = time.monotonic()
    r = run_calls(home, [{"label": "down", "run_mode": "INTERACTIVE",
                          "args": {"daemon": down, "model": "stylegan2-ffhq-512x512"}}],
                  xvfb=True, env={"DRAGD_GIMP_TEST_DIALOG": "ok",
                                  "DRAGD_GIMP_TEST_SHOTS": home.chroot_path("downshots")})
    (call,) = r.result["calls"]
    assert call["status"] == "execution-error" and "dragd serve" in call["message"], call
    models = json.loads((shots / "models.json").read_text())
    assert [v for v, _ in models["items"]] == ["", "stylegan2-ffhq-512x512"], models
    assert "could not be fetched" in models["note"], models
    print("\nGIMP dialog with the daemon down: %.1f s in all; %s" % (
        time.monotonic() - t0, models["note"]))


def _photo_psnr(call, width, height, ellipse):
    """PSNR (dB) of the new layer against the source inside the ellipse (x, y, w, h)."""
    import numpy as np

    out = np.frombuffer(unb64(call["new_layer"]["pixels"]), np.uint8).reshape(height, width, 4)
    src = np.frombuffer(unb64(call["source_after"]), np.uint8).reshape(height, width, 4)
    x, y, w, h = ellipse
    yy, xx = np.mgrid[0:height, 0:width]
    inside = ((xx + 0.5 - x - w / 2) / (w / 2 - 1)) ** 2 + ((yy + 0.5 - y - h / 2) / (h / 2 - 1)) ** 2 <= 1
    d = out[..., :3].astype(np.float64)[inside] - src[..., :3].astype(np.float64)[inside]
    return 10 * np.log10(255.0 ** 2 / max(1e-9, float((d ** 2).mean())))


@pytest.fixture(scope="module")
def face_daemon(tmp_path_factory):
    """`dragd serve` with the embedded 64-px face model (what a user starts by default)."""
    from daemon_fixture import start_daemon
    from dragd.daemon.model.registry import DEFAULT_MODEL_PATH

    d = start_daemon(DEFAULT_MODEL_PATH, tmp_path_factory.mktemp("face-daemon"))
    yield d
    d.stop()


def test_photo_the_selection_is_the_region_and_reconstructs_better_than_the_whole_layer(
        face_daemon, home, tmp_path):
    """scikit-image's astronaut (512x512), an elliptical selection over the head, the face
    model, the same preset: with one drag step and paste "resample" the result inside the
    selection is the reconstruction; sending the selection's box as the region reproduces
    the head better than inverting the whole layer (the run without a selection). Then an
    interactive run under Xvfb with the defaults (paste "detail") takes the screenshots of
    the settings dialog, the progress dialog with its preview, and the result."""
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image as PILImage

    photo = home.path("astronaut.png")
    PILImage.fromarray(skimage_data.astronaut()).save(photo)
    shots = home.path("shots")
    shots.mkdir()
    one_step = {"daemon": face_daemon.endpoint, "inversion": "fast", "max-steps": 1,
                "paste": "resample", "live-preview": False}
    calls = [{"label": "region", "variant": "photo", "args": one_step},
             {"label": "whole", "variant": "photo", "deselect": True, "args": one_step},
             {"label": "interactive", "variant": "photo", "run_mode": "INTERACTIVE",
              "args": {"daemon": face_daemon.endpoint}, "save_png": "gimp-result.png"}]
    r = run_calls(home, calls, xvfb=True, timeout=900,
                  env={"DRAGD_PHOTO": home.chroot_path("astronaut.png"),
                       "DRAGD_SHOTS": home.chroot_path("shots"),
                       "DRAGD_GIMP_TEST_SHOTS": home.chroot_path("shots"),
                       "DRAGD_GIMP_TEST_DIALOG": "ok inversion=fast max-steps=40"})
    region, whole, inter = r.result["calls"]
    for c in (region, whole, inter):
        assert c["status"] == "success", (c, r.log(), face_daemon.log()[-3000:])
    ellipse = (130, 15, 150, 190)
    p_region, p_whole = _photo_psnr(region, 512, 512, ellipse), _photo_psnr(whole, 512, 512, ellipse)
    assert p_region > p_whole + 1.0, (p_region, p_whole)
    assert " dB" in region["outcome"] and " dB" in whole["outcome"]
    previews = json.loads((shots / "previews.json").read_text())
    assert previews["shown"] >= 1
    assert all(max(wh) <= 320 for wh in previews["sizes"]), previews
    # the dialog's Model is a list: the daemon's loaded model, then each of its models
    models = json.loads((shots / "models.json").read_text())
    assert models["items"][0][0] == "" and "loaded model" in models["items"][0][1], models
    assert len(models["items"]) >= 2 and models["note"] == "", models
    for name in ("settings.png", "progress.png", "gimp-result.png"):
        assert (shots / name).stat().st_size > 1000, name
        (tmp_path / name).write_bytes((shots / name).read_bytes())
    print("\nastronaut, head selected, fast preset: reconstruction PSNR inside the selection "
          "%.2f dB with the region sent, %.2f dB inverting the whole layer; interactive "
          "(paste detail): %s; previews %s; screenshots in %s" % (
              p_region, p_whole, inter["outcome"], sorted(set(map(tuple, previews["sizes"]))),
              tmp_path))


def test_large_layer_with_live_preview_succeeds(running_daemon, home):
    """A 6000x4000 layer, an elliptical selection feathered by 100 px, Live preview in the
    interactive progress dialog, the real daemon: the run succeeds (the plug-in never
    stops answering the daemon to draw a preview), previews arrive at the dialog's size,
    and the result is the one layer added."""
    shots = home.path("bigshots")
    shots.mkdir()
    r = run_calls(home, [{"label": "big", "variant": "big", "run_mode": "INTERACTIVE",
                          "args": {"daemon": running_daemon.endpoint}}],
                  xvfb=True, timeout=600,
                  env={"DRAGD_GIMP_TEST_SHOTS": home.chroot_path("bigshots"),
                       "DRAGD_GIMP_TEST_DIALOG": "ok inversion=fast max-steps=30"})
    (call,) = r.result["calls"]
    assert call["status"] == "success", (call, r.log(), running_daemon.log()[-3000:])
    assert call["stack"] == ["art (dragged)", "art"], call["stack"]
    assert call["new_layer"]["size"] == [6000, 4000]
    previews = json.loads((shots / "previews.json").read_text())
    assert previews["shown"] >= 1, previews
    # the selection's box grown to the daemon's square: at most 320 px on the dialog
    assert all(max(wh) == 320 for wh in previews["sizes"]), previews
    print("\nGIMP 6000x4000, 100-px feathered selection, live preview: %.1f s, %s, "
          "%d previews" % (call["elapsed"], call["outcome"], previews["shown"]))


def test_clear_messages_and_layer_mask(daemon, home):
    endpoint, backend = daemon
    n = len(backend.opened)
    expect = {"no-path": ["no path", "Paths tool"],
              "one-anchor": ["Stroke 2", "only one anchor"],
              "handle-outside": ["handle of stroke 1", "outside the selection"]}
    calls = [{"label": v, "variant": v, "args": {"daemon": endpoint}} for v in expect]
    calls.append({"label": "layer-mask", "variant": "layer-mask",
                  "args": {"daemon": endpoint, "live-preview": False}})
    r = run_calls(home, calls)
    for call, (variant, words) in zip(r.result["calls"], expect.items()):
        assert call["status"] == "execution-error", call
        for w in words:
            assert w in call["message"], (variant, call["message"])
        assert call["stack"] == ["art", "bg"]
    assert len(backend.opened) == n + 1     # only the layer-mask run reached the daemon
    # A source with a layer mask: the new layer gets the same mask.
    masked = r.result["calls"][-1]
    assert masked["status"] == "success", masked
    assert masked["new_mask"] == masked["source_mask"]
    assert unb64(masked["new_mask"])[:12] == bytes(12)


def _plugin_pids(home):
    """Host pids of this profile's dragd plug-in processes (the chroot shares the host's
    pid namespace; the profile path tells our GIMP from anyone else's)."""
    import os

    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if "dragd-gimp.py" in cmd and home.inside in cmd:
            pids.append(int(d))
    return pids


def test_plugin_killed_mid_drag_like_progress_cancel(daemon, home):
    """GIMP's progress-bar Cancel ends a plug-in by killing its process. Emulate it
    mid-drag: GIMP survives, the daemon notices the client is gone and stops the job, the
    killed run left the image as it was (previews are never layers), and the next run
    works."""
    import os
    import signal
    import threading

    endpoint, backend = daemon
    n_drags = len(backend.drags)
    killed = {}

    def killer():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if len(backend.drags) > n_drags and backend.previews >= 4:
                time.sleep(1.0)                  # previews are being shown
                pids = _plugin_pids(home)
                if pids:
                    for pid in pids:
                        os.kill(pid, signal.SIGKILL)
                    killed["t"] = time.monotonic()
                    killed["pids"] = pids
                    return
            time.sleep(0.1)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    r = run_calls(home, [
        {"label": "killed", "args": {"daemon": endpoint, "max-steps": 1000}},
        {"label": "next", "args": {"daemon": endpoint, "max-steps": 3}},
    ], trace=True)
    th.join(5)
    assert killed.get("pids"), "the plug-in process was never found"
    dead, nxt = r.result["calls"]
    assert dead["status"] != "success", dead
    assert dead["stack"] == ["art", "bg"], dead["stack"]
    long_drag = backend.drags[n_drags]
    assert long_drag["cancel_reason"] == "client_gone", long_drag
    assert long_drag["ended"] - killed["t"] < 5.0
    assert nxt["status"] == "success", nxt
    assert nxt["stack"] == ["art (dragged)", "art", "bg"], nxt["stack"]
    check_result_layer(r.result, nxt)
    procs = plugin_processes(r)
    check_one_undo_group(procs[-1])
    print("\nkill -> daemon stopped the job in %.2f s" % (long_drag["ended"] - killed["t"]))


def test_missing_pyzmq_is_reported_not_a_silent_failure(daemon, home):
    """With pyzmq unimportable in GIMP's Python the procedure still registers, and running
    it says what to install (and where)."""
    fake = home.path(".nozmq/zmq/__init__.py")
    fake.parent.mkdir(parents=True)
    fake.write_text("raise ImportError('No module named zmq (test)', name='zmq')\n")
    endpoint, _ = daemon
    r = run_calls(home, [{"label": "nozmq", "args": {"daemon": endpoint}}],
                  env={"PYTHONPATH": home.chroot_path(".nozmq")})
    assert r.result["registered"] is True
    (call,) = r.result["calls"]
    assert call["status"] == "execution-error", call
    msg = call["message"]
    assert "cannot import zmq" in msg and "python3-zmq python3-msgpack" in msg, msg
    assert "dragd-gimp/site-packages" in msg and "docs/GIMP.md" in msg, msg
