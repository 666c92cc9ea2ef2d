"""The run both plug-ins drive (plugin_common/task.py: DragTask, DaemonProbe) and what
goes with it: its pacing of the host's redraws, its sentences, loading it without pyzmq.
Real ZeroMQ sockets on 127.0.0.1 against the real dragd server with the recording stand-in
backend (tests/stub_backend.py); each host's loop around it: tests/test_gimp_glue.py,
tests/test_krita_glue.py.
"""
from __future__ import annotations

import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from daemon_fixture import free_endpoint
from dragd.daemon.service.backend import BackendError
from dragd.gimp_plugin import model as gimp_model
from dragd.gimp_plugin import run as gimp_run
from dragd.krita_plugin import model as krita_model
from dragd.krita_plugin import run as krita_run
from dragd.plugin_common import Arrow, BaseDragSettings, BaseJobModel, Outcome, make_mask
from dragd.plugin_common.pacing import Pacer
from dragd.plugin_common.task import DaemonProbe, DragTask
from dragd.protocol import Client, Image
from stub_backend import LONG_DRAG, RecordingBackend, serving


@pytest.fixture(scope="module")
def server():
    backend = RecordingBackend()
    with serving(backend) as endpoint:
        yield endpoint, backend


def drive(task, timeout=20.0, on_tick=None):
    end = time.monotonic() + timeout
    while task.tick():
        if on_tick is not None:
            on_tick(task)
        assert time.monotonic() < end, "the task did not finish in %.0f s" % timeout
        time.sleep(0.01)


def small_image(w=6, h=4):
    return Image(bytes(i % 256 for i in range(w * h * 4)), w, h, 4)


def test_task_runs_connect_open_drag_close(server):
    endpoint, backend = server
    s = BaseDragSettings(endpoint=endpoint, max_steps=40, inversion="fast", lambda_mask=7.0)
    mask = make_mask(b"\x00\xff" * 12, 6, 4)
    task = DragTask(s, [Arrow((1.5, 1.5), (4.0, 2.0))], small_image(), mask)
    task.start()
    phases = []
    drive(task, on_tick=lambda t: phases.append(t.model.phase))
    m = task.model
    assert m.phase == "done", m.error
    assert {"opening", "dragging"} <= set(phases)
    assert m.outcome.steps == 5 and m.outcome.stop == "converged"
    assert m.outcome.image.width == 6 and m.previews_seen >= 1
    sent = backend.drags[-1]
    assert sent["points"] == [[[1.5, 1.5], [4.0, 2.0]]] and sent["mask"] == mask.data
    assert sent["params"]["lambda_mask"] == 7.0 and sent["params"]["preview_every"] == 2
    assert backend.opened[-1]["invert"]["quality"] == "fast"
    assert backend.opened[-1]["roi"] == {"x": 1, "y": 0, "width": 5, "height": 4}
    assert sent["params"]["paste"] == "detail"
    assert set(task.timings) == {"connect", "open", "drag"}
    assert task.client is None                        # closed
    deadline = time.monotonic() + 5
    while backend.sessions and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not backend.sessions                       # close_session reached the daemon


def test_the_inversion_region_is_the_selections_box_or_what_the_host_names(server):
    """The selection's bounding box (feathered pixels included) is the region sent; the
    daemon grows it to its square. No selection: no region. A host may name another."""
    endpoint, backend = server
    w, h = 12, 8
    data = bytearray(w * h)
    data[2 * w + 3] = 1                    # a faint feathered pixel at (3, 2)
    for y in range(3, 6):
        data[y * w + 5:y * w + 9] = b"\xff" * 4
    s = BaseDragSettings(endpoint=endpoint, paste="resample")
    arrow = [Arrow((6.0, 4.0), (7.0, 4.0))]
    for mask, region, sent in (
            (make_mask(bytes(data), w, h), None, {"x": 3, "y": 2, "width": 6, "height": 4}),
            (make_mask(None, w, h), None, None),
            (make_mask(bytes(data), w, h), {"x": 0, "y": 0, "width": 10, "height": 8},
             {"x": 0, "y": 0, "width": 10, "height": 8})):
        task = DragTask(s, arrow, small_image(w, h), mask, region=region)
        task.start()
        drive(task)
        assert task.model.phase == "done", task.model.error
        assert backend.opened[-1]["roi"] == sent
        assert backend.drags[-1]["params"]["paste"] == "resample"


def test_face_alignment_is_sent_and_what_it_did_is_said():
    """The switch reaches open_session's ``align``; the outcome says the daemon aligned the
    face; its refusal reaches the user with the switch named as the UI names it."""
    backend = RecordingBackend(invert_steps=1, drag_steps=1)
    with serving(backend) as endpoint:
        arrow = [Arrow((1.5, 1.5), (4.0, 2.0))]

        def run(**kw):
            task = DragTask(BaseDragSettings(endpoint=endpoint, **kw), arrow, small_image(), None)
            task.start()
            drive(task)
            return task.model

        backend.info = {"align": "ffhq", "align_quad": [[0, 0], [6, 0], [6, 6], [0, 6]],
                        "tuning": {"psnr": 15.0}, "domain": {"verdict": "good", "psnr": 15.0}}
        m = run()
        assert backend.opened[-1]["align"] == "auto"
        assert m.phase == "done", m.error
        assert m.end_text().endswith("; inversion 15.0 dB; face found, aligned (FFHQ)")
        backend.info = {"align": "none"}
        m = run(align="none")
        assert backend.opened[-1]["align"] == "none"
        assert m.phase == "done" and "align" not in m.end_text()
        backend.open_error = BackendError(
            "bad_value", "no face found in this image, so it cannot be aligned for this face "
            "model; edit with alignment off (`--align none`, or the plug-in's alignment switch), "
            "or use a model made for this kind of picture")
        m = run()
        assert m.phase == "failed"
        assert m.error == ("The dragd daemon refused the request: no face found in this image, "
                           "so it cannot be aligned for this face model; edit with alignment off "
                           "(set Face alignment to Off), or use a model made for this kind of "
                           "picture")


def test_mask_region_of_rows_and_columns():
    assert make_mask(b"\x00\x00\x00\x00\x00\x07", 3, 2).region() == {
        "x": 2, "y": 1, "width": 1, "height": 1}
    assert make_mask(b"\x80\x00\x00\x00\x00\xff", 3, 2).region() == {
        "x": 0, "y": 0, "width": 3, "height": 2}


def test_task_daemon_down_fails_within_the_timeout_naming_the_start_command():
    down = free_endpoint()
    task = DragTask(BaseDragSettings(endpoint=down), [Arrow((1, 1), (2, 2))], small_image(),
                    None, connect_timeout=1.0)
    t0 = time.monotonic()
    task.start()
    drive(task, timeout=10)
    assert time.monotonic() - t0 < 4.0
    assert task.model.phase == "failed"
    assert down in task.model.error and "dragd serve" in task.model.error


def test_task_errors_unknown_model_daemon_refusal_and_bad_address(server):
    endpoint, _ = server
    task = DragTask(BaseDragSettings(endpoint=endpoint, model="nope"), [Arrow((1, 1), (2, 2))],
                    small_image(), None)
    task.start()
    drive(task)
    assert "has no model 'nope'. Its models: toy" in task.model.error
    task = DragTask(BaseDragSettings(endpoint=endpoint), [Arrow((1, 1), (2, 2))],
                    small_image(13, 2), None)
    task.start()
    drive(task)
    assert task.model.phase == "failed" and "too big for the test" in task.model.error
    task = DragTask(BaseDragSettings(endpoint="tcp://nowhere"), [], small_image(), None)
    task.start()
    assert task.done and "Cannot use the daemon address" in task.model.error


def test_task_stop_keep_returns_the_drag_so_far_and_cancel_discards(server):
    endpoint, backend = server
    s = BaseDragSettings(endpoint=endpoint, max_steps=2000)
    for how in ("keep", "discard"):
        task = DragTask(s, [Arrow((1, 1), (2, 2))], small_image(), None)
        task.start()
        stopped = []

        def stop_after_two_steps(t):
            if not stopped and t.model.phase == "dragging" and t.model.step >= 1:
                stopped.append(time.monotonic())
                t.stop(how)
        drive(task, on_tick=stop_after_two_steps)
        assert stopped and time.monotonic() - stopped[0] < 5
        if how == "keep":
            assert task.model.phase == "done" and task.model.outcome.stop == "cancelled"
            assert 1 <= task.model.outcome.steps < 100
        else:
            assert task.model.phase == "cancelled" and task.model.outcome is None


def test_task_cancel_during_inversion_is_immediate(server):
    endpoint, backend = server
    task = DragTask(BaseDragSettings(endpoint=endpoint, model="toy"), [Arrow((1, 1), (2, 2))],
                    small_image(), None)
    task.start()
    drive(task, on_tick=lambda t: t.model.phase == "opening" and t.stop("keep"))
    assert task.model.phase == "cancelled" and task.client is None


def test_daemon_probe_lists_models_or_reports_the_daemon_down(server):
    endpoint, _ = server
    p = DaemonProbe(endpoint)
    p.start()
    drive(p)
    assert p.error is None and p.models == ["toy"] and "models toy" in p.describe()
    p = DaemonProbe(free_endpoint(), timeout=0.5)
    p.start()
    drive(p)
    assert "not reachable" in p.error and "dragd serve" in p.error


# ---------------------------------------------------------------------------
# Bounds: the time limit, the poll timeout, closing
# ---------------------------------------------------------------------------


def test_time_limit_during_the_inversion_fails_with_advice():
    with serving(RecordingBackend(invert_steps=20, invert_wait=0.2)) as endpoint:
        task = DragTask(BaseDragSettings(endpoint=endpoint), [Arrow((1, 1), (2, 2))],
                        small_image(), None, time_limit=1)
        t0 = time.monotonic()
        task.start()
        drive(task)
        assert time.monotonic() - t0 < 3.0
    assert task.model.phase == "failed" and task.client is None
    assert task.model.error == ("The time limit of 1 s ran out while the daemon was inverting "
                                "the layer. Raise the time limit or choose a faster inversion "
                                "quality.")


def test_time_limit_during_the_drag_keeps_the_drag_so_far(server):
    endpoint, backend = server
    task = DragTask(BaseDragSettings(endpoint=endpoint, max_steps=LONG_DRAG),
                    [Arrow((1, 1), (2, 2))], small_image(), None, time_limit=1.5)
    t0 = time.monotonic()
    task.start()
    drive(task)
    m = task.model
    assert m.phase == "done", m.error
    assert m.outcome.stop == "cancelled" and 1 <= m.outcome.steps < backend.long_drag_steps
    assert m.stop_requested == "keep" and m.stop_reason == "time limit"
    assert time.monotonic() - t0 < 6.0


def test_tick_waits_at_most_its_timeout():
    task = DragTask(BaseDragSettings(endpoint=free_endpoint()), [Arrow((1, 1), (2, 2))],
                    small_image(), None, connect_timeout=2.0)
    task.start()
    for timeout_ms, bound in ((0, 0.1), (100, 0.5)):
        t0 = time.monotonic()
        assert task.tick(timeout_ms)
        assert time.monotonic() - t0 < bound, timeout_ms
    task.close()
    assert task.model.phase == "cancelled" and task.client is None and not task.tick()


class UnansweredClose(Client):
    """The real client, except that close_session gets no answer."""

    def start(self, type, fields=None, images=None, **kw):
        if type == "close_session":
            return SimpleNamespace(done=False, result=None, error=None)
        return super().start(type, fields, images, **kw)


def test_an_unanswered_close_ends_the_run_within_the_close_timeout(server):
    endpoint, _ = server
    task = DragTask(BaseDragSettings(endpoint=endpoint, max_steps=3), [Arrow((1, 1), (2, 2))],
                    small_image(), None, client_factory=UnansweredClose, close_timeout=0.5)
    task.start()
    closing = []
    drive(task, on_tick=lambda t: t.model.phase == "closing" and not closing and
          closing.append(time.monotonic()))
    assert task.model.phase == "done" and task.model.outcome.steps == 3
    assert closing and time.monotonic() - closing[0] < 2.0


class BrokenPoll(Client):
    """The real client, broken once the daemon said hello (a bug, or an odd reply)."""

    def poll(self, timeout_ms=0):
        events = super().poll(timeout_ms)
        if any(ev.kind == "result" and ev.job.type == "open_session" for ev in events):
            raise RuntimeError("boom")
        return events


def test_an_unexpected_error_ends_the_run_with_a_sentence_not_a_traceback(server):
    endpoint, _ = server
    task = DragTask(BaseDragSettings(endpoint=endpoint), [Arrow((1, 1), (2, 2))],
                    small_image(), None, client_factory=BrokenPoll)
    task.start()
    drive(task)
    assert task.model.phase == "failed" and task.client is None
    assert task.model.error == ("The DragGAN plug-in failed (RuntimeError: boom). Please "
                                "report this bug.")


# ---------------------------------------------------------------------------
# One run, each host's words
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("run_mod, words", [
    (gimp_run, "The path has 70 strokes; the daemon takes at most 64 drag points."),
    (krita_run, "There are 70 arrows; the daemon takes at most 64.")], ids=["gimp", "krita"])
def test_each_host_drives_the_same_task_in_its_own_words(server, run_mod, words):
    endpoint, _ = server
    settings = run_mod.DragSettings(endpoint=endpoint)
    task = run_mod.make_task(settings, [Arrow((1, 1), (2, 2))] * 70, small_image(), None)
    assert type(task) is DragTask and task.model.ITEM in ("drag point", "arrow")
    task.start()
    drive(task)
    assert task.model.phase == "failed" and task.model.error == words


def test_end_texts_of_each_host():
    gimp = gimp_model.JobModel(gimp_model.DragSettings(), [])
    krita = krita_model.JobModel(krita_model.DragSettings(), [])
    for m in (gimp, krita):
        m.cancelled()
    assert gimp.end_text() == "DragGAN: cancelled; the layer was not changed."
    assert krita.end_text() == "Cancelled; the layer was not changed."
    for m in (gimp, krita):
        m.failed("The daemon said no.")
        assert m.end_text() == "The daemon said no."          # shown as it is
        m.phase = "closing"
        m.outcome = Outcome(None, 4, "converged", 0.5)
    assert gimp.end_text() == "DragGAN: converged after 4 steps, 0.5 px from the targets"
    assert krita.end_text() == "Done: converged after 4 steps, 0.5 px from the targets"


def test_probe_of_a_bad_address_says_what_an_address_looks_like():
    p = DaemonProbe("tcp://")
    p.start()
    assert p.done and p.error.startswith("Cannot use the daemon address 'tcp://'")
    assert "tcp://127.0.0.1:5557" in p.describe()


# ---------------------------------------------------------------------------
# Pacing the host's redraws
# ---------------------------------------------------------------------------


def test_pacer_redraws_progress_at_a_new_phase_on_change_and_at_most_every_interval():
    now = [0.0]
    m = BaseJobModel(BaseDragSettings(max_steps=10), [Arrow((1, 1), (5, 5))])
    p = Pacer(m, lambda: now[0])
    assert p.progress() == (0.0, "connecting to tcp://127.0.0.1:5557")
    assert p.progress() is None                                  # unchanged
    m.connected({})
    assert p.progress() == (0.0, "opening the layer")           # a new phase: at once
    m.on_event("progress", {"stage": "invert", "step": 4, "total": 10}, {})
    assert p.progress() is None                                  # too soon
    assert p.progress(force=True)[1] == "inverting 5/10, part 1 of 2"
    m.on_event("progress", {"stage": "invert", "step": 5, "total": 10}, {})
    now[0] += 0.05
    assert p.progress() is None
    now[0] += 0.06
    assert p.progress()[1] == "inverting 6/10, part 1 of 2"


def test_pacer_hands_out_the_newest_preview_at_most_every_interval_never_after_the_result():
    now = [0.0]
    m = BaseJobModel(BaseDragSettings(max_steps=10), [])
    m.connected({})
    m.opened({})
    p = Pacer(m, lambda: now[0], preview_interval=0.5)
    assert p.preview() is None                                   # none yet
    m.on_event("progress", {"step": 0}, {"preview": "P0"})
    assert p.preview() == "P0"
    m.on_event("progress", {"step": 1}, {"preview": "P1"})
    m.on_event("progress", {"step": 2}, {"preview": "P2"})
    now[0] += 0.4
    assert p.preview() is None
    now[0] += 0.2
    assert p.preview() == "P2"                                   # the newest
    now[0] += 1.0
    m.on_event("progress", {"step": 3}, {"preview": "P3"})
    m.dragged(Outcome(None, 4, "converged", 0.1))
    assert p.preview() is None
    quiet = BaseJobModel(BaseDragSettings(live_preview=False), [])
    quiet.on_event("progress", {"step": 0}, {"preview": "P"})
    assert Pacer(quiet, lambda: 0.0).preview() is None


# ---------------------------------------------------------------------------
# Loading the task where pyzmq is missing
# ---------------------------------------------------------------------------

HIDE_ZMQ = """
import sys

class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "zmq":
            raise ImportError("No module named %r" % name, name=name)
        return None

sys.meta_path.insert(0, Hide())
from dragd.plugin_common import UserError
from dragd.plugin_common.loader import load_task
try:
    load_task("GIMP", "docs/GIMP.md")
except UserError as e:
    print(e)
print("zmq" in sys.modules)
"""


def test_loading_the_task_without_pyzmq_says_how_to_install_it():
    r = subprocess.run([sys.executable, "-c", HIDE_ZMQ], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    msg, loaded = r.stdout.strip().split("\n")
    assert loaded == "False"
    assert "needs the Python packages pyzmq and msgpack" in msg
    assert "GIMP's Python (%d.%d) cannot import zmq." % sys.version_info[:2] in msg
    assert "python3-zmq python3-msgpack" in msg and "site-packages" in msg
    assert msg.endswith("See docs/GIMP.md for Flatpak, AppImage, Windows and macOS.")


PRELOAD = """
import sys, threading
from dragd.plugin_common.loader import preload
before = [m in sys.modules for m in ("zmq", "dragd.plugin_common.task", "dragd.plugin_common.live")]
t = preload()
print(t.name, t.daemon, t is not threading.current_thread())
t.join(60)
print(before, [m in sys.modules for m in ("zmq", "dragd.plugin_common.task", "dragd.plugin_common.live")])
"""


def test_preload_imports_the_machinery_on_a_background_thread():
    """What the Krita docker starts when it is built, so a first click finds the modules
    imported; without pyzmq the thread ends quietly and load_task still says what to do."""
    r = subprocess.run([sys.executable, "-c", PRELOAD], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    thread, modules = r.stdout.strip().split("\n")
    assert thread == "dragd-preload True True"
    assert modules == "[False, False, False] [True, True, True]"
    hidden = HIDE_ZMQ.replace("from dragd.plugin_common.loader import load_task",
                              "from dragd.plugin_common.loader import load_task, preload\n"
                              "preload().join(60)")
    r = subprocess.run([sys.executable, "-c", hidden], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr, r.stderr
    msg, loaded = r.stdout.strip().split("\n")
    assert "needs the Python packages pyzmq and msgpack" in msg and loaded == "False"


def test_previews_from_the_real_daemon_are_the_region_at_display_size_through_the_mask(
        running_daemon):
    """The real `dragd serve` (tiny model, no inversion): the open reply has no
    reconstruction (the task asks for none); every preview is the selection's
    region (the daemon's square for the selection's box, within the layer) at most
    preview_max_size on a side; where the selection excludes a pixel, the preview is the
    source there."""
    from dragd.daemon.edit.image_prep import make_geometry

    w, h = 120, 80
    rows = [bytes(((x * 2) % 256, (y * 3) % 256, 90, 255)) for y in range(h) for x in range(w)]
    src = Image(b"".join(rows), w, h, 4)
    data = bytearray(w * h)
    for y in range(30, 50):
        data[y * w + 60:y * w + 80] = b"\xff" * 20
    mask = make_mask(bytes(data), w, h)
    s = BaseDragSettings(endpoint=running_daemon.endpoint, max_steps=4, preview_every=1,
                         preview_max_size=24, paste="resample")
    s.invert_fields = lambda: {"method": "none"}
    task = DragTask(s, [Arrow((70.0, 40.0), (74.0, 40.0))], src, mask)
    sizes, firsts = [], []
    real_on_event = task.model.on_event

    def on_event(kind, fields, images):
        if images.get("preview") is not None:
            p = images["preview"]
            sizes.append((p.width, p.height))
            firsts.append(bytes(p.data)[:3])
        real_on_event(kind, fields, images)
    task.model.on_event = on_event
    open_images = []
    real_on_result = task._on_event

    def on_result(ev):
        if ev.kind == "result" and task.model.phase == "opening":
            open_images.append(ev.job.result.image)
        real_on_result(ev)
    task._on_event = on_result
    task.start()
    drive(task, timeout=60)
    assert task.model.phase == "done", task.model.error
    # The plug-ins show none of the reconstruction: the open reply carries no copy of the
    # layer (for a 6000x4000 layer, 72 MB for the host's UI thread to take in).
    assert open_images == [None]
    geo = make_geometry(h, w, 32, (60, 30, 80, 50))
    vx0, vy0, vx1, vy1 = geo.valid
    scale = min(1.0, 24 / max(vx1 - vx0, vy1 - vy0))
    assert sizes and set(sizes) == {(round((vx1 - vx0) * scale), round((vy1 - vy0) * scale))}
    # The preview's top-left pixel lies outside the selection: the source's colour there
    # (downscaled), not the generator's.
    want = rows[vy0 * w + vx0][:3]
    assert all(max(abs(a - b) for a, b in zip(f, want)) <= 8 for f in firsts), (firsts, want)
