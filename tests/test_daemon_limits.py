"""A real `dragd serve` bounds what one client can make it hold or allocate: memory for sessions
and cached inversions together, idle and orphaned sessions, the size of `status`, the crop and
drag radii a request may ask for; out-of-memory is answered as such."""
from __future__ import annotations

import threading
import time

import pytest
import zmq

from daemon_fixture import start_daemon
from dragd.daemon.edit.session import generator_nbytes
from dragd.daemon.model.checkpoints import load_checkpoint
from dragd.daemon.service.backend import NullBackend
from dragd.daemon.service.server import Server, ServerConfig
from dragd.protocol import Client, Image, RemoteError
from dragd.protocol.messages import STATUS_MAX_SESSIONS

NO_INVERSION = {"method": "none"}


def layer(w: int, h: int, seed: int = 0, channels: int = 3) -> Image:
    data = bytes((x * 7 + y * 13 + seed * 31 + c * 5) % 251
                 for y in range(h) for x in range(w) for c in range(channels))
    return Image(data, w, h, channels)


@pytest.fixture(scope="module")
def daemon(tiny_model_path, tmp_path_factory):
    d = start_daemon(tiny_model_path, tmp_path_factory.mktemp("limits"))
    yield d
    d.stop()


def test_a_thin_layer_is_refused_before_its_square_is_built(daemon):
    """9000×2 px (54 KB on the wire) used to be padded to a 9000² square (~2 GB) before
    anything was checked."""
    with Client(daemon.endpoint, timeout=30) as c:
        with pytest.raises(RemoteError) as ei:
            c.open_session(layer(9000, 2), invert=NO_INVERSION)
        assert ei.value.code == "too_large"
        assert "9000×9000" in ei.value.message and "smaller region" in ei.value.message
        s = c.open_session(layer(9000, 2), roi={"x": 100, "y": 0, "width": 20, "height": 2},
                           invert=NO_INVERSION)
        assert s.id
    assert daemon.proc.poll() is None


def test_drag_radii_are_bounded_by_the_working_image(daemon):
    """r2 = 100 layer px on an 8×8 layer is 400 px of the 32-px working image: refused with
    the largest value that fits, instead of a search over 801² pixels (r2 = 1024 used to
    allocate ~7 GB)."""
    with Client(daemon.endpoint, timeout=30) as c:
        s = c.open_session(layer(8, 8), invert=NO_INVERSION)
        for name in ("r1", "r2"):
            with pytest.raises(RemoteError) as ei:
                c.drag(s, [((2, 2), (5, 5))], max_steps=2, **{name: 100.0})
            assert ei.value.code == "too_large", ei.value
            assert f"{name} = 100 px is 400 px" in ei.value.message
            assert "i.e. 8 px of this layer" in ei.value.message
        r = c.drag(s, [((2, 2), (5, 5))], max_steps=2, r2=8.0)
        assert r["steps"] >= 1


def test_a_second_drag_with_a_new_mask_is_checked_against_its_own_points(daemon):
    """The mask used to be set before the points, so a new mask was checked against the
    previous drag's handles and the error named a point the user had not drawn."""
    w = h = 32
    right = Image(bytes(255 if x >= 16 else 0 for y in range(h) for x in range(w)), w, h, 1)
    with Client(daemon.endpoint, timeout=30) as c:
        s = c.open_session(layer(w, h), invert=NO_INVERSION)
        c.drag(s, [((4.5, 4.5), (6.5, 6.5))], max_steps=3)      # handles now in the left half
        r = c.drag(s, [((24.5, 16.5), (27.5, 16.5))], mask=right, max_steps=3)
        assert r["steps"] >= 1
        with pytest.raises(RemoteError) as ei:                   # a new handle outside the mask
            c.drag(s, [((24.5, 16.5), (27.5, 16.5)), ((8.5, 20.5), (9.5, 20.5))], mask=right,
                   max_steps=3)
        assert ei.value.code == "bad_points"
        assert "handle 1 at (8, 20)" in ei.value.message, ei.value.message


def test_status_stays_small_whatever_the_number_of_sessions(daemon):
    with Client(daemon.endpoint, timeout=30) as c:
        for i in range(STATUS_MAX_SESSIONS + 20):
            c.open_session(layer(4, 4, seed=i), invert=NO_INVERSION)
        st = c.status()
        assert len(st["sessions"]) == STATUS_MAX_SESSIONS
        assert st["sessions"][0]["idle"] <= st["sessions"][-1]["idle"]      # newest first


def test_memory_budget_counts_tuned_generators_and_the_cache(tiny_model_path, tmp_path):
    """Each PTI session holds a tuned copy of the generator, and the in-memory inversion
    cache kept those of evicted sessions: both are counted against one budget."""
    gen = generator_nbytes(load_checkpoint(tiny_model_path, device="cpu").G)
    budget_gb = 3.5 * gen / (1 << 30)
    d = start_daemon(tiny_model_path, tmp_path, extra_args=("--memory-budget-gb", "%.9f" % budget_gb))
    try:
        with Client(d.endpoint, timeout=60) as c:
            quick = {"method": "pti", "w_steps": 2, "tune_steps": 2}
            sessions = [c.open_session(layer(16, 16, seed=i), invert=quick) for i in range(6)]
            st = c.status()
            mem = st["memory"]
            assert mem["used"] <= mem["budget"]
            kept = len(st["sessions"])
            assert 1 <= kept <= 3
            assert mem["used"] >= kept * gen            # the tuned copies are counted
            with pytest.raises(RemoteError) as ei:
                c.auto_reopen = False
                c.drag(sessions[0], [((4, 4), (6, 6))], max_steps=1)
            assert ei.value.details["reason"] == "evicted"
    finally:
        d.stop()


def test_idle_sessions_expire_and_the_client_reopens_them(tiny_model_path, tmp_path):
    d = start_daemon(tiny_model_path, tmp_path, extra_args=("--session-idle-minutes", "0.02"))
    try:
        with Client(d.endpoint, timeout=30, auto_reopen=False) as c:
            s = c.open_session(layer(16, 16), invert=NO_INVERSION)
            time.sleep(3.0)                              # 1.2 s limit, swept once a second
            with pytest.raises(RemoteError) as ei:
                c.drag(s, [((4, 4), (6, 6))], max_steps=1)
            assert ei.value.code == "unknown_session"
            assert ei.value.details["reason"] == "expired"
            assert "without use" in ei.value.message
            c.auto_reopen = True
            events = []
            r = c.drag(s, [((4, 4), (6, 6))], max_steps=1, progress=events.append)
            assert r["steps"] >= 0 and s.reopened == 1
        assert "event=session_expired" in d.log()
    finally:
        d.stop()


def test_a_vanished_clients_sessions_are_freed(tiny_model_path, tmp_path):
    """A client that disappears mid-drag: the daemon's next progress event cannot be
    delivered (EHOSTUNREACH), and the sessions that client used are closed."""
    d = start_daemon(tiny_model_path, tmp_path)
    try:
        c = Client(d.endpoint, timeout=30)
        s = c.open_session(layer(16, 16), invert=NO_INVERSION)
        c.start_drag(s, [((4, 4), (12, 12))], max_steps=5000, stall_steps=0, stop_distance=0.0001)
        time.sleep(0.5)
        c.close()                                        # as if the plug-in was killed
        deadline = time.monotonic() + 20
        while "event=session_client_gone session=%s" % s.id not in d.log():
            assert time.monotonic() < deadline, d.log()
            time.sleep(0.2)
        with Client(d.endpoint, timeout=10) as other:
            assert other.hello()["protocol"]
    finally:
        d.stop()


class _OutOfMemoryBackend(NullBackend):
    """torch on the CPU reports a failed allocation as a plain RuntimeError."""

    def __init__(self):
        super().__init__()
        self.released = threading.Event()

    def drag(self, session_id, points, mask, params, progress, cancel):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:118] . DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 7247757312 bytes. Error code 12")

    def release_memory(self, collect=True):
        self.released.set()


def test_running_out_of_memory_is_answered_as_such_and_memory_is_given_back():
    backend = _OutOfMemoryBackend()
    with Server(backend, ServerConfig(endpoint="tcp://127.0.0.1:0")) as srv, \
            Client(srv.endpoint, timeout=10) as c:
        s = c.open_session(layer(8, 8))
        with pytest.raises(RemoteError) as ei:
            c.drag(s, [((1, 1), (2, 2))])
        assert ei.value.code == "out_of_memory"
        assert backend.released.is_set()
        assert c.hello()["protocol"]
