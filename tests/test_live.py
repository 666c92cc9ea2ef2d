"""The live view's session (plugin_common/live.py) against a real `dragd serve` with the tiny
model: open, place points, Start, previews, Stop, Continue, back to history entry 1, Apply;
and the point editing, a refused drag, a daemon that is not there."""
from __future__ import annotations

import time


from daemon_fixture import free_endpoint
from dragd.plugin_common import Arrow, BaseDragSettings, make_mask
from dragd.plugin_common.live import HistoryEntry, LivePoint, LiveSession
from dragd.protocol import Client, Image

W, H = 48, 40
SEL = (8, 6, 30, 28)            # x, y, width, height


def layer() -> Image:
    data = bytearray()
    for y in range(H):
        for x in range(W):
            data += bytes((x * 5 % 256, y * 7 % 256, (x * y) % 256, 255))
    return Image(bytes(data), W, H, 4)


def selection():
    sel = bytearray(W * H)
    x0, y0, w, h = SEL
    for y in range(y0, y0 + h):
        sel[y * W + x0:y * W + x0 + w] = b"\xff" * w
    return make_mask(bytes(sel), W, H)


def settings(endpoint: str, **kw) -> BaseDragSettings:
    s = BaseDragSettings(endpoint=endpoint, paste="resample", preview_every=1, **kw)
    s.invert_fields = lambda: {"method": "pti", "quality": "fast", "w_steps": 20,
                               "tune_steps": 5}
    return s


def run_until(live: LiveSession, cond, timeout: float) -> None:
    t0 = time.monotonic()
    while not cond():
        assert live.tick(20), (live.state, live.error)
        assert time.monotonic() - t0 < timeout, (live.state, live.status_line())


def opened(endpoint: str, **kw) -> LiveSession:
    live = LiveSession(settings(endpoint, **kw), layer(), selection(),
                       arrows=[Arrow((14.0, 12.0), (20.0, 16.0))])
    live.start()
    assert live.state == "connecting"
    run_until(live, lambda: live.state == "idle", 120)
    return live


def test_live_session_start_stop_continue_undo_apply(running_daemon):
    live = opened(running_daemon.endpoint, max_steps=2000)
    assert live.connected and live.connection_line().startswith(
        "Connected to %s (cpu" % running_daemon.endpoint)
    # the view shows the daemon's crop (the selection's box grown to a square), in the layer
    x0, y0, x1, y1 = live.view_box
    assert x0 <= SEL[0] and y0 <= SEL[1] and x1 >= SEL[0] + SEL[2] and y1 >= SEL[1] + SEL[3]
    assert (x0, y0) >= (0, 0) and (x1, y1) <= (W, H)
    assert [e.index for e in live.history] == [0] and not live.can_apply()

    live.click((24.0, 20.0))                       # a second pair: handle, then target
    live.click((26.0, 25.0))
    assert [(p.handle, p.target) for p in live.points][1] == ((24.0, 20.0), (26.0, 25.0))
    assert live.start_drag() and live.state == "dragging"
    run_until(live, lambda: live.timings.frames >= 4 or live.state == "idle", 60)
    assert live.timings.frames >= 4 and live.timings.first_frame_s is not None
    f = live.frame
    assert f.box == live.view_box and f.image.channels == 3
    assert live.shown_points()[0][0] == tuple(live.tracked[0])     # where the tracker is
    live.stop()
    run_until(live, lambda: live.state == "idle", 30)
    first = bytes(live.result.data)
    assert live.position == 1 and live.history[-1].stop == "cancelled", live.history[-1]
    assert live.can_apply()
    # Continue starts where the tracker left the handles
    assert live.points[0].handle == tuple(live.history[1].points[0].handle)

    live.click((30.0, 12.0))                       # a third pair, then Continue
    live.click((33.0, 14.0))
    assert live.start_drag()
    run_until(live, lambda: live.state == "idle", 120)
    assert live.position == 2 and [e.index for e in live.history] == [0, 1, 2]
    assert len(live.history[2].points) == 3
    assert bytes(live.result.data) != first

    assert live.go_to(1) and live.state == "undoing"
    run_until(live, lambda: live.state == "idle", 30)
    assert live.position == 1 and [e.index for e in live.history] == [0, 1]
    assert len(live.points) == 2 and live.frame.image is live.history[1].frame.image
    # Apply writes the daemon's state of entry 1: the layer its first drag returned
    assert live.can_apply() and bytes(live.result.data) == first
    live.close()
    assert live.state == "closed" and live.client is None


def test_a_refused_drag_says_why_and_the_session_goes_on(running_daemon):
    live = opened(running_daemon.endpoint, max_steps=3)
    live.points = []
    live.click((1.0, 1.0))                          # outside the crop the daemon works on
    live.click((2.0, 2.0))
    live.set_use_mask(False)
    assert live.start_drag()
    run_until(live, lambda: live.state == "idle", 30)
    assert "outside the region being edited" in live.notice, live.notice
    assert live.status_line() == live.notice and live.position == 0
    live.points = []
    live.click((20.0, 16.0))
    live.click((22.0, 18.0))
    assert live.start_drag()
    run_until(live, lambda: live.state == "idle", 60)
    assert live.position == 1 and live.notice is None
    live.close()


def test_points_are_placed_grabbed_moved_removed_and_frozen_while_dragging():
    live = LiveSession(settings(free_endpoint()), layer(), None)
    assert not live.can_start()
    live.click((5.0, 5.0))
    assert not live.can_start() and live.points[0].target is None
    live.click((9.0, 5.0))
    live.click((30.0, 30.0))
    assert [(p.handle, p.target) for p in live.points] == [((5.0, 5.0), (9.0, 5.0)),
                                                           ((30.0, 30.0), None)]
    assert live.grab((8.0, 6.0), 2.0) == (0, "target")
    assert live.grab((20.0, 20.0), 2.0) is None
    live.move(0, "handle", (4.0, 4.0))
    assert live.points[0].handle == (4.0, 4.0)
    live.remove(1)
    assert len(live.points) == 1
    live.state = "dragging"
    live.click((1.0, 1.0))
    live.remove(0)
    live.move(0, "target", (0.0, 0.0))
    assert [(p.handle, p.target) for p in live.points] == [((4.0, 4.0), (9.0, 5.0))]


def test_no_daemon_fails_fast_with_the_command_to_start_one():
    endpoint = free_endpoint()
    live = LiveSession(settings(endpoint), layer(), None, connect_timeout=1.0)
    live.start()
    t0 = time.monotonic()
    while live.tick(20):
        assert time.monotonic() - t0 < 10
    assert live.state == "failed" and not live.connected
    assert endpoint in live.error and "dragd serve" in live.error
    assert live.connection_line().startswith("Not connected: ")
    assert time.monotonic() - t0 < 5


def test_reset_points_and_reopening_on_the_result_continues_the_edit(running_daemon):
    live = opened(running_daemon.endpoint, max_steps=3)
    assert live.start_drag()
    run_until(live, lambda: live.state == "idle", 60)
    assert live.position == 1
    log_before = len(running_daemon.log())
    live.reset_points()
    assert live.points == [] and live.state == "idle"
    live.click((20.0, 16.0))
    live.click((21.0, 18.0))
    assert live.start_drag()                  # queued behind the reset: it still runs
    run_until(live, lambda: live.state == "idle", 60)
    assert live.position == 2 and live.notice is None, live.notice
    done = [line for line in running_daemon.log()[log_before:].splitlines()
            if "job_done" in line]
    assert "type=reset_points" in done[0] and "type=drag" in done[1], done
    result = live.result
    live.close()
    # the view opened again on the layer Apply wrote, same selection: no inversion
    again = LiveSession(settings(running_daemon.endpoint), result, selection())
    again.start()
    run_until(again, lambda: again.state == "idle", 30)
    assert again.session_info["info"]["continues_edit"] is True
    again.close()


def test_the_connection_line_follows_a_daemon_that_goes_away(tiny_model_path, tmp_path):
    from daemon_fixture import start_daemon

    d = start_daemon(tiny_model_path, tmp_path)
    try:
        # closing the view mid-drag stops the drag and closes the session on the daemon
        live = opened(d.endpoint, max_steps=5000)
        assert live.start_drag()
        run_until(live, lambda: live.step >= 2, 30)
        log_before = len(d.log())
        t0 = time.monotonic()
        live.close()
        assert time.monotonic() - t0 < 0.5 and live.state == "closed"
        with Client(d.endpoint, timeout=5.0) as other:
            t0 = time.monotonic()
            while other.status()["others"] != {"sessions": 0, "jobs": 0}:
                assert time.monotonic() - t0 < 5, other.status()["others"]
                time.sleep(0.05)
        # asked for, not left to the daemon's clean-up of a client that went away
        log = d.log()[log_before:]
        assert "event=cancel " in log and "type=close_session" in log, log
        # closing it while the layer is being opened leaves no session on the daemon (the
        # inversion is cached by now: the open answers before the cancel reaches it)
        live = LiveSession(settings(d.endpoint), layer(), selection())
        live.start()
        run_until(live, lambda: live.state == "opening", 30)
        log_before = len(d.log())
        live.close()
        assert live.state == "closed"
        with Client(d.endpoint, timeout=5.0) as other:
            t0 = time.monotonic()
            while other.status()["others"] != {"sessions": 0, "jobs": 0}:
                assert time.monotonic() - t0 < 5, other.status()["others"]
                time.sleep(0.05)
        assert "type=close_session" in d.log()[log_before:]
        live = opened(d.endpoint, max_steps=3)
        assert live.connected
        d.stop()
        t0 = time.monotonic()
        # (a ping in the daemon's last moments is answered "shutting down"; then none is)
        while "not reachable" not in live.connection_line() and time.monotonic() - t0 < 20:
            live.tick(20)
        assert live.connected is False and live.state == "idle"
        assert live.connection_line().startswith("Not connected: dragd daemon not reachable")
        assert "dragd serve" in live.connection_line()
        live.close()
    finally:
        d.stop()


def test_the_brush_grows_and_shrinks_the_movable_region_softly_and_the_drag_uses_it(
        running_daemon):
    live = LiveSession(settings(free_endpoint()), layer(), selection())
    x0, y0, w, h = SEL
    inside, outside = (y0 + 10) * W + x0 + 10, 2 * W + 2
    assert live.mask.data[inside] == 255 and live.mask.data[outside] == 0
    assert live.brush((2.5, 2.5), 2.0, grow=True)
    assert live.mask.data[outside] == 255                 # the centre: fully
    assert 0 < live.mask.data[3 * W + 3] < 255            # the soft edge
    assert live.mask.data[2 * W + 5] == 0                 # beyond the brush: untouched
    assert live.brush((x0 + 10.5, y0 + 10.5), 3.0, grow=False)
    assert live.mask.data[inside] == 0 and live.mask_serial == 2
    assert not live.brush((-50.0, -50.0), 3.0)            # off the layer
    assert live.brush_line((x0 + 2.5, y0 + 20.5), (x0 + 20.5, y0 + 20.5), 2.0, grow=False)
    assert live.mask.data[(y0 + 20) * W + x0 + 2:(y0 + 20) * W + x0 + 21] == bytes(19)

    unselected = LiveSession(settings(free_endpoint()), layer(), None)
    assert unselected.mask is None and not unselected.use_mask
    unselected.brush((10.5, 10.5), 2.0, grow=False)     # the whole layer, less a spot
    m = unselected.mask.data
    assert unselected.use_mask and m[10 * W + 10] == 0 and m.count(255) > W * H - 30

    # a handle where the brush took the region away is refused, then allowed again
    live = opened(running_daemon.endpoint, max_steps=3)
    live.points = []
    live.click((20.0, 16.0))
    live.click((22.0, 17.0))
    live.brush((20.0, 16.0), 4.0, grow=False)
    assert live.start_drag()
    run_until(live, lambda: live.state == "idle", 30)
    assert live.position == 0 and "outside the movable region" in live.notice, live.notice
    live.brush((20.0, 16.0), 4.0, grow=True)
    assert live.start_drag()
    run_until(live, lambda: live.state == "idle", 60)
    assert live.position == 1, live.notice
    live.close()


class _Result:
    """A drag's result event as the client hands it over."""

    def __init__(self, history, image):
        self.fields = {"history": history, "handles": [[1.0, 1.0]], "steps": 1}
        self.images = {"image": image}


def test_the_strip_follows_the_daemons_bounded_history():
    """The daemon keeps the start and its last 63 drags: when a drag pushes the oldest out,
    its answer's history index stays the same and the strip drops that entry too."""
    live = LiveSession(settings(free_endpoint()), layer(), None)
    live.history = [HistoryEntry(0, None, [])]
    live.state = "dragging"
    for n in range(1, 4):
        live._drag_points = [LivePoint((0.0, 0.0), (2.0, 2.0))]
        live.state = "dragging"
        live._on_dragged(_Result(n, live.image))
    assert [e.index for e in live.history] == [0, 1, 2, 3] and live.position == 3
    steps = [e.steps for e in live.history]
    live.history[1].steps, live.history[2].steps = 11, 22          # to tell them apart
    live.state = "dragging"
    live._on_dragged(_Result(3, live.image))       # full: the daemon dropped its drag 1
    assert [e.index for e in live.history] == [0, 1, 2, 3] and live.position == 3
    assert [e.steps for e in live.history][1] == 22, steps


class _Refusing:
    """A client whose daemon answers the hello with ``error``."""

    def __init__(self, error):
        self.error, self.job = error, None

    def __call__(self, endpoint, **kw):
        return self

    def start(self, kind, fields, **kw):
        self.job = type("Job", (), {"done": False})()
        return self.job

    def poll(self, timeout_ms):
        ev = type("Event", (), {"job": self.job, "kind": "error", "final": True,
                                "error": self.error, "fields": {}, "images": {}})()
        return [ev]

    def close(self):
        pass


def test_a_daemon_that_refuses_our_key_gets_no_hint_to_copy_keys(tmp_path, monkeypatch):
    from dragd.protocol.client import DaemonRefused, DaemonUnavailable

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    endpoint = "tcp://192.0.2.7:5555"           # remote: its errors carry the keys hint
    for err, hinted in ((DaemonUnavailable(endpoint), True),
                        (DaemonRefused(endpoint, "key"), False)):
        live = LiveSession(settings(endpoint), layer(), client_factory=_Refusing(err))
        live.start()
        assert not live.tick(0)
        assert live.state == "failed" and live.connected is False
        assert ("copy the daemon's server.key" in live.error) is hinted, live.error


def test_a_picture_is_cut_to_the_view_and_scaled_to_it():
    from dragd.plugin_common.geometry import region_box, view_crop

    view = (10.0, 10.0, 30.0, 30.0)
    assert view_crop(view, (0.0, 0.0, 40.0, 40.0), (40, 40), 2.0) == (
        (10, 10, 20, 20), (0, 0), (40, 40))
    # A half-resolution preview of a box reaching past the view: its corner, where it lies.
    assert view_crop(view, (20.0, 20.0, 60.0, 60.0), (20, 20), 2.0) == (
        (0, 0, 5, 5), (20, 20), (20, 20))
    assert view_crop(view, (30.0, 0.0, 40.0, 40.0), (10, 40), 2.0) is None
    assert region_box(None, 48, 40) == (0.0, 0.0, 48.0, 40.0)
    assert region_box({"x": 8, "y": 6, "width": 30, "height": 28}, 48, 40) == (
        8.0, 6.0, 38.0, 34.0)
