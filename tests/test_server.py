"""The daemon's ZeroMQ server and the protocol client, over real sockets on 127.0.0.1.

The backend here is a small deterministic stand-in for the GPU engine: a "drag" moves
every handle one pixel per step towards its target (sleeping a little per step) and
the result is the layer translated by the first handle's displacement.
"""
from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time

import msgpack
import pytest
import zmq

from daemon_fixture import free_port
from dragd.daemon.service import keys as dkeys
from dragd.daemon.service.backend import Backend, BackendError, CancelToken, NullBackend
from dragd.daemon.service.server import ConfigError, Server, ServerConfig
from dragd.daemon.service.sessions import SessionTable
from dragd.protocol.endpoint import is_loopback_endpoint
from dragd.protocol import (PROTOCOL_VERSION, SESSION_LOST, Client, CurveConfig,
                            DaemonUnavailable, Image, JobTimeout, Limits, RemoteError, encode,
                            parse_reply)


# ---------------------------------------------------------------------------
# A deterministic test backend
# ---------------------------------------------------------------------------


def translate(data: bytes, w: int, h: int, c: int, dx: int, dy: int) -> bytes:
    """Shift an image by (dx, dy) pixels, filling with zeros."""
    out = bytearray(w * h * c)
    if abs(dx) >= w or abs(dy) >= h:
        return bytes(out)
    stride = w * c
    for y in range(h):
        sy = y - dy
        if not 0 <= sy < h:
            continue
        row = data[sy * stride:(sy + 1) * stride]
        if dx >= 0:
            out[y * stride + dx * c:(y + 1) * stride] = row[:(w - dx) * c]
        else:
            out[y * stride:(y + 1) * stride + dx * c] = row[-dx * c:]
    return bytes(out)


def sign(v: float) -> int:
    return (v > 0) - (v < 0)


class TranslateBackend(Backend):
    def __init__(self, step_sleep: float = 0.01, invert_steps: int = 3):
        self.step_sleep = step_sleep
        self.invert_steps = invert_steps
        self.sessions = {}
        self.closed = []
        self.lock = threading.Lock()

    def hello_info(self):
        return {"device": "test", "models": ["toy", "toy2"], "loaded_model": "toy"}

    def list_models(self):
        return [{"name": "toy", "resolution": 64, "loaded": True},
                {"name": "toy2", "resolution": 64, "loaded": False}]

    def status(self):
        with self.lock:
            return {"sessions": len(self.sessions)}

    def load_model(self, name, progress, cancel):
        if name not in ("toy", "toy2"):
            raise BackendError("unknown_model", "no model %r" % name)
        for i in range(2):
            progress({"stage": "load", "step": i, "total": 2})
        return {"model": name, "resolution": 64}

    def open_session(self, session_id, image, width, height, channels, settings, progress,
                     cancel):
        n = (settings.get("invert") or {}).get("w_steps") or self.invert_steps
        for i in range(n):
            cancel.check()
            progress({"stage": "invert", "step": i, "total": n,
                      "losses": {"lpips": 1.0 / (i + 1)}})
            cancel.wait(self.step_sleep)
        img = bytes(image)
        with self.lock:
            self.sessions[session_id] = {"orig": img, "w": width, "h": height,
                                         "c": channels, "history": [(img, [])]}
        return {"model": settings.get("model") or "toy", "resolution": 64,
                "bytes": len(img), "info": {"inversion_loss": 0.01}}

    def _s(self, sid):
        with self.lock:
            s = self.sessions.get(sid)
        if s is None:
            raise BackendError("unknown_session")
        return s

    def drag(self, session_id, points, mask, params, progress, cancel):
        s = self._s(session_id)
        w, h, c = s["w"], s["h"], s["c"]
        handles = [list(p[0]) for p in points]
        targets = [list(p[1]) for p in points]
        start = [list(p) for p in handles]
        steps, stop = 0, "max_steps"
        k, pmax = params["preview_every"], params["preview_max_size"]
        for step in range(params["max_steps"]):
            if cancel.cancelled:
                stop = "cancelled"
                break
            if all(hh == t for hh, t in zip(handles, targets)):
                stop = "converged"
                break
            for hh, t in zip(handles, targets):
                hh[0] += sign(t[0] - hh[0]) * min(1.0, abs(t[0] - hh[0]))
                hh[1] += sign(t[1] - hh[1]) * min(1.0, abs(t[1] - hh[1]))
            steps += 1
            dist = sum(abs(t[0] - hh[0]) + abs(t[1] - hh[1])
                       for hh, t in zip(handles, targets)) / len(handles)
            frames = None
            if k and step % k == 0:
                pw, ph = min(w, pmax), min(h, pmax)
                frames = {"preview": Image(bytes([step % 256]) * (pw * ph * c), pw, ph, c)}
            progress({"stage": "drag", "step": step, "total": params["max_steps"],
                      "handles": [list(x) for x in handles],
                      "losses": {"motion": dist, "mask": 0.0}, "distance": dist}, frames)
            cancel.wait(self.step_sleep)
        else:
            if all(hh == t for hh, t in zip(handles, targets)):
                stop = "converged"
        base = s["history"][-1][0]
        dx = int(round(handles[0][0] - start[0][0]))
        dy = int(round(handles[0][1] - start[0][1]))
        out = translate(base, w, h, c, dx, dy)
        with self.lock:
            s["history"].append((out, handles))
        return {"image": Image(out, w, h, c), "handles": handles, "steps": steps,
                "stop": stop, "distance": 0.0, "history": len(s["history"]) - 1,
                "bytes": sum(len(x[0]) for x in s["history"])}

    def undo(self, session_id, steps, progress, cancel):
        s = self._s(session_id)
        with self.lock:
            if len(s["history"]) <= steps:
                raise BackendError("bad_state", "nothing to undo")
            del s["history"][-steps:]
            img, handles = s["history"][-1]
        return {"image": Image(img, s["w"], s["h"], s["c"]), "history": len(s["history"]) - 1,
                "handles": handles}

    def reset_points(self, session_id):
        self._s(session_id)

    def close_session(self, session_id):
        with self.lock:
            self.sessions.pop(session_id, None)
            self.closed.append(session_id)


def make_image(w=32, h=24, c=4, seed=1) -> Image:
    data = bytes(((x * 7 + y * 13 + seed * 31 + ch) % 251)
                 for y in range(h) for x in range(w) for ch in range(c))
    return Image(data, w, h, c)


@pytest.fixture
def backend():
    return TranslateBackend()


@pytest.fixture
def server(backend):
    srv = Server(backend, ServerConfig(endpoint="tcp://127.0.0.1:0",
                                       shutdown_timeout=3.0)).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    c = Client(server.endpoint, timeout=3.0, heartbeat=0.5)
    yield c
    c.close()


class Raw:
    """A bare DEALER socket for sending hand-made (or hostile) messages."""

    def __init__(self, endpoint):
        self.ctx = zmq.Context.instance()
        self.s = self.ctx.socket(zmq.DEALER)
        self.s.linger = 0
        self.s.connect(endpoint)

    def send(self, parts):
        self.s.send_multipart(parts, copy=False)

    def recv(self, timeout=3.0, request_type=None):
        assert self.s.poll(int(timeout * 1000)), "no reply within %.1fs" % timeout
        return parse_reply(self.s.recv_multipart(), request_type)

    def request(self, parts, timeout=3.0, request_type=None):
        self.send(parts)
        while True:
            m = self.recv(timeout, request_type)
            if m.type in ("result", "error"):
                return m

    def close(self):
        self.s.close(0)


# ---------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------


def test_hello_status_models(client, server):
    h = client.hello()
    assert h["protocol"] == PROTOCOL_VERSION
    assert h["device"] == "test" and h["models"] == ["toy", "toy2"]
    assert h["limits"]["max_points"] == server.limits.max_points
    assert h["curve"] is False
    assert [m["name"] for m in client.list_models()] == ["toy", "toy2"]
    st = client.status()
    assert st["queue"] == [] and st["running"] is None and st["sessions"] == []
    assert client.ping()["instance"] == server.instance
    events = []
    r = client.load_model("toy2", progress=events.append)
    assert r["model"] == "toy2"
    assert [e.kind for e in events] == ["queued", "progress", "progress"]
    with pytest.raises(RemoteError) as ei:
        client.load_model("nope")
    assert ei.value.code == "unknown_model"


def test_open_drag_result_round_trip(client, backend):
    img = make_image(40, 30, 4)
    opened = []
    s = client.open_session(img, progress=opened.append, invert={"w_steps": 4})
    assert s.id and s.info["width"] == 40 and s.info["height"] == 30
    assert s.info["info"] == {"inversion_loss": 0.01}
    assert opened[0].kind == "queued"
    assert [e["step"] for e in opened[1:]] == [0, 1, 2, 3]
    assert all(e["stage"] == "invert" for e in opened[1:])

    events = []
    r = client.drag(s, [((10, 10), (15, 8))], progress=events.append, preview_every=2,
                    preview_max_size=16, max_steps=50)
    prog = [e for e in events if e.kind == "progress"]
    assert events[0].kind == "queued"
    assert [e["step"] for e in prog] == list(range(5))          # in order, none lost
    assert prog[0]["handles"] == [[11.0, 9.0]]
    assert prog[-1]["handles"] == [[15.0, 8.0]]
    assert [("preview" in e.images) for e in prog] == [True, False, True, False, True]
    p = prog[0].images["preview"]
    assert (p.width, p.height, p.channels) == (16, 16, 4)
    assert r["stop"] == "converged" and r["steps"] == 5
    assert r["handles"] == [[15.0, 8.0]]
    assert r.image.width == 40 and r.image.height == 30 and r.image.channels == 4
    assert bytes(r.image.data) == translate(img.data, 40, 30, 4, 5, -2)
    # The client keeps the latest layer for a transparent re-open.
    assert bytes(s.image.data) == bytes(r.image.data)

    # Continue from the current state: another drag composes.
    r2 = client.drag(s, [((15, 8), (16, 8))], max_steps=10)
    assert bytes(r2.image.data) == translate(img.data, 40, 30, 4, 6, -2)
    u = client.undo(s)
    assert bytes(u.image.data) == bytes(r.image.data) and u["history"] == 1
    client.reset_points(s)
    st = client.status()
    assert st["sessions"][0]["session"] == s.id
    client.close_session(s)
    assert backend.closed == [s.id]
    with pytest.raises(RemoteError) as ei:
        client.drag(s.id, [((1, 1), (2, 2))])
    assert ei.value.code == "unknown_session" and "closed" in ei.value.message


def test_mask_and_bad_points_rejected_before_queueing(client):
    s = client.open_session(make_image(20, 10, 3))
    mask = Image(bytes([255]) * 200, 20, 10, 1)
    r = client.drag(s, [((1, 1), (3, 1))], mask=mask)
    assert r["stop"] == "converged"
    with pytest.raises(RemoteError) as ei:
        client.drag(s, [((1, 1), (3, 1))], mask=Image(bytes(100), 10, 10, 1))
    assert ei.value.code == "bad_pixels" and "20x10" in ei.value.message
    with pytest.raises(RemoteError) as ei:
        client.drag(s, [((1, 1), (25, 1))])
    assert ei.value.code == "bad_points" and "outside" in ei.value.message
    with pytest.raises(RemoteError) as ei:       # caught on the client before sending
        client.drag(s, [((1, float("nan")), (2, 1))])
    assert ei.value.code == "bad_points"


def test_non_blocking_style(client):
    job = client.start_open_session(make_image(16, 16, 4))
    kinds = []
    t0 = time.monotonic()
    while not job.done and time.monotonic() - t0 < 5:
        kinds += [e.kind for e in client.poll(timeout_ms=0)]
        time.sleep(0.002)
    assert job.done and kinds[0] == "queued" and kinds[-1] == "result"
    s = job.session
    assert s.id == job.result["session"]
    j = client.start_drag(s, [((2, 2), (5, 2))])
    seen = []
    while not j.done and time.monotonic() - t0 < 5:
        seen += client.poll(timeout_ms=20)
    assert [e["step"] for e in seen if e.kind == "progress"] == [0, 1, 2]
    assert seen[-1].kind == "result" and seen[-1].job is j
    assert j.result["handles"] == [[5.0, 2.0]]
    assert client.poll(0) == []


# ---------------------------------------------------------------------------
# Cancel, busy, timeouts
# ---------------------------------------------------------------------------


def test_cancel_running_drag_stops_within_a_step(client, backend):
    backend.step_sleep = 0.05
    s = client.open_session(make_image(64, 64, 4))
    job = client.start_drag(s, [((1, 1), (60, 60))], max_steps=200)
    steps = []
    t0 = time.monotonic()
    while len(steps) < 3 and time.monotonic() - t0 < 5:
        steps += [e["step"] for e in client.poll(50) if e.kind == "progress"]
    assert len(steps) >= 3
    t_cancel = time.monotonic()
    reply = client.cancel(job)
    assert reply["state"] == "running" and reply["job"] == job.job_id
    r = client.wait(job, timeout=5)
    elapsed = time.monotonic() - t_cancel
    assert r["stop"] == "cancelled"
    assert elapsed < 0.5, elapsed              # one step is 0.05 s
    assert r["steps"] <= steps[-1] + 3
    # The session stays usable and continues from the partial drag.
    backend.step_sleep = 0.0
    h = r["handles"][0]
    r2 = client.drag(s, [(h, (h[0] + 2, h[1]))])
    assert r2["stop"] == "converged"


def test_cancel_queued_job_and_unknown_job(server, backend):
    backend.step_sleep = 0.05
    c = Client(server.endpoint, timeout=3, heartbeat=0.5)
    try:
        s = c.open_session(make_image(32, 32, 4))
        j1 = c.start_drag(s, [((1, 1), (30, 1))], max_steps=100)
        j2 = c.start_drag(s, [((1, 1), (2, 1))])
        t0 = time.monotonic()
        while j2.job_id is None and time.monotonic() - t0 < 3:
            c.poll(20)
        assert c.cancel(j2)["state"] == "queued"
        with pytest.raises(RemoteError) as ei:
            c.wait(j2, timeout=3)
        assert ei.value.code == "cancelled"
        c.cancel(j1)
        assert c.wait(j1, timeout=3)["stop"] == "cancelled"
        assert c.cancel("j-doesnotexist") is None
    finally:
        c.close()


def test_busy_when_queue_full(backend):
    cfg = ServerConfig(endpoint="tcp://127.0.0.1:0", limits=Limits(max_queue=2))
    with Server(backend, cfg) as srv, Client(srv.endpoint, timeout=3) as c:
        s = c.open_session(make_image(16, 16, 4))
        # The drag converges after 14 one-pixel steps, so at 0.75 s a step each job runs
        # ≥ 10 s: the first cannot finish (and free the queue) before the fourth request is
        # read, however loaded the machine is (at 0.05 s a step it sometimes did).
        backend.step_sleep = 0.75
        jobs = [c.start_drag(s, [((1, 1), (15, 15))], max_steps=200) for _ in range(4)]
        t0 = time.monotonic()
        while not jobs[3].done and time.monotonic() - t0 < 10:
            c.poll(20)
        assert jobs[3].error is not None and jobs[3].error.code == "busy"
        for j in jobs[:3]:
            c.cancel(j, wait=False)


def test_busy_when_queued_layers_exceed_budget(backend):
    cfg = ServerConfig(endpoint="tcp://127.0.0.1:0", max_queued_bytes=3000)
    with Server(backend, cfg) as srv, Client(srv.endpoint, timeout=3) as c:
        s = c.open_session(make_image(16, 16, 4))
        backend.step_sleep = 0.75      # the running drag outlasts the reading of the requests
        first = c.start_drag(s, [((1, 1), (15, 15))], max_steps=30)     # runs
        jobs = [c.start_open_session(make_image(16, 16, 4)) for _ in range(4)]  # 1 KiB each
        t0 = time.monotonic()
        while not jobs[3].done and time.monotonic() - t0 < 3:
            c.poll(20)
        assert jobs[3].error is not None and jobs[3].error.code == "busy"
        assert "queued layers" in jobs[3].error.message
        c.cancel(first, wait=False)


def test_job_timeout_cancels(client, backend):
    backend.step_sleep = 0.05
    s = client.open_session(make_image(16, 16, 4))
    client.job_timeout = 0.3
    t0 = time.monotonic()
    with pytest.raises(JobTimeout):
        client.drag(s, [((1, 1), (15, 15))], max_steps=200)
    assert time.monotonic() - t0 < 1.5
    client.job_timeout = 10
    deadline = time.monotonic() + 2
    while client.status()["running"] is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.status()["running"] is None      # the daemon got the cancel


# ---------------------------------------------------------------------------
# Several clients, vanished clients
# ---------------------------------------------------------------------------


def test_client_killed_mid_job_does_not_disturb_others(server, backend, caplog):
    caplog.set_level(logging.INFO, logger="dragd.server")
    backend.step_sleep = 0.05
    a = Client(server.endpoint, timeout=3)
    s = a.open_session(make_image(32, 32, 4))
    job = a.start_drag(s, [((1, 1), (30, 30))], max_steps=200)
    t0 = time.monotonic()
    while job.state != "running" and time.monotonic() - t0 < 3:
        a.poll(20)
    a.close()                                   # gone, abruptly (linger 0)
    b = Client(server.endpoint, timeout=3)
    try:
        t1 = time.monotonic()
        b.ping()
        assert time.monotonic() - t1 < 0.5      # answered while the worker is busy
        # The daemon notices on its next send and cancels the orphaned drag.
        deadline = time.monotonic() + 3
        while b.status()["others"]["jobs"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert b.status()["others"]["jobs"] == 0
        assert "event=client_gone" in caplog.text
        backend.step_sleep = 0.0
        s2 = b.open_session(make_image(16, 16, 4, seed=5))
        r = b.drag(s2, [((2, 2), (4, 3))])
        assert r["stop"] == "converged"
        assert bytes(r.image.data) == translate(make_image(16, 16, 4, seed=5).data,
                                                16, 16, 4, 2, 1)
    finally:
        b.close()


def test_eight_concurrent_clients(server, backend):
    backend.step_sleep = 0.002
    results, errors = {}, []

    def run(i):
        try:
            with Client(server.endpoint, timeout=5, heartbeat=0.5) as c:
                img = make_image(24, 20, 4 if i % 2 else 3, seed=i)
                s = c.open_session(img)
                dx, dy = 1 + i % 4, i % 3
                r = c.drag(s, [((5, 5), (5 + dx, 5 + dy))])
                ok = bytes(r.image.data) == translate(img.data, 24, 20, img.channels, dx, dy)
                results[i] = (ok, r["handles"], (5.0 + dx, 5.0 + dy))
        except Exception as e:       # pragma: no cover
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors
    assert len(results) == 8
    for ok, handles, want in results.values():
        assert ok and handles == [list(want)]


# ---------------------------------------------------------------------------
# Restart, dead daemon, eviction, shutdown
# ---------------------------------------------------------------------------


def test_server_restart_mid_session_reopens(caplog):
    port = free_port()
    ep = "tcp://127.0.0.1:%d" % port
    b1 = TranslateBackend(step_sleep=0)
    srv = Server(b1, ServerConfig(endpoint=ep)).start()
    c = Client(ep, timeout=3, heartbeat=0.5)
    try:
        img = make_image(32, 32, 4)
        s = c.open_session(img)
        r = c.drag(s, [((4, 4), (6, 4))])
        old = s.id
        srv.stop()
        b2 = TranslateBackend(step_sleep=0)
        srv = Server(b2, ServerConfig(endpoint=ep)).start()
        events = []
        with caplog.at_level(logging.WARNING, logger="dragd.client"):
            r2 = c.drag(s, [((6, 4), (7, 5))], progress=events.append)
        notices = [e for e in events if e.kind == "notice"]
        assert notices and notices[0]["message"] == SESSION_LOST
        assert "session_lost" in caplog.text
        assert s.id != old and s.id in b2.sessions
        # Re-opened from the latest layer the client held (after the first drag).
        assert bytes(r2.image.data) == translate(r.image.data, 32, 32, 4, 1, 1)
    finally:
        c.close()
        srv.stop()


def test_dead_daemon_is_reported_within_timeout():
    ep = "tcp://127.0.0.1:%d" % free_port()
    with Client(ep, timeout=1.0, heartbeat=0.25) as c:
        t0 = time.monotonic()
        with pytest.raises(DaemonUnavailable) as ei:
            c.hello()
        elapsed = time.monotonic() - t0
        assert 0.9 < elapsed < 1.6, elapsed
        assert str(ei.value).startswith("dragd daemon not reachable at %s; start it with: "
                                        "dragd serve" % ep)
        # Non-blocking style: the job gets an error event, poll() does not raise.
        job = c.start("ping")
        t0 = time.monotonic()
        evs = []
        while not job.done and time.monotonic() - t0 < 3:
            evs += c.poll(50)
        assert isinstance(job.error, DaemonUnavailable) and evs[-1].kind == "error"
        # The daemon comes up: the client (with a fresh socket) reaches it.
        with Server(NullBackend(), ServerConfig(endpoint=ep)):
            assert c.hello()["protocol"] == PROTOCOL_VERSION


def test_hung_daemon_is_reported_within_timeout():
    """A peer that accepts connections but never answers (not even pings)."""
    ctx = zmq.Context.instance()
    r = ctx.socket(zmq.ROUTER)
    r.linger = 0
    port = r.bind_to_random_port("tcp://127.0.0.1")
    try:
        with Client("tcp://127.0.0.1:%d" % port, timeout=0.8, heartbeat=0.2) as c:
            t0 = time.monotonic()
            with pytest.raises(DaemonUnavailable):
                c.open_session(make_image(8, 8, 4))
            assert time.monotonic() - t0 < 1.4
            assert r.poll(0)        # it did receive the request (and pings)
    finally:
        r.close(0)


def test_session_eviction_lru(backend):
    img = make_image(16, 16, 4)                      # 1024 bytes
    cfg = ServerConfig(endpoint="tcp://127.0.0.1:0", session_budget_bytes=2500)
    with Server(backend, cfg) as srv, Client(srv.endpoint, timeout=3,
                                             auto_reopen=False) as c:
        s1 = c.open_session(img)
        s2 = c.open_session(img)
        c.reset_points(s1)                           # s1 used last: s2 is LRU now
        s3 = c.open_session(img)                     # 3072 > 2500 bytes: evict one
        ids = {x["session"] for x in c.status()["sessions"]}
        assert ids == {s1.id, s3.id}
        assert backend.closed == [s2.id]
        gone = s2
        with pytest.raises(RemoteError) as ei:
            c.drag(gone, [((1, 1), (2, 1))])
        assert ei.value.code == "unknown_session" and "evicted" in ei.value.message
        assert ei.value.details["reason"] == "evicted"
        st = c.status()
        assert st["memory"]["used"] <= st["memory"]["budget"] + 2048
        # With auto_reopen the client recovers from an eviction as from a restart.
        c.auto_reopen = True
        events = []
        r = c.drag(gone, [((1, 1), (2, 1))], progress=events.append)
        assert r["stop"] == "converged"
        assert any(e.kind == "notice" for e in events)


def test_session_table_unit():
    t = SessionTable(budget_bytes=100)
    t.add("a", 1, 1, 1, None, 60)
    t.add("b", 1, 1, 1, None, 30)
    t.add("c", 1, 1, 1, None, 30)
    assert t.victims(keep={"c"}) == ["a"]
    assert t.victims(keep={"a"}) == ["b"]
    t.touch("a")
    assert t.victims(keep=set()) == ["b"]
    t.remove("b", "evicted")
    with pytest.raises(Exception) as ei:
        t.get("b")
    assert ei.value.code == "unknown_session" and "evicted" in ei.value.message
    assert t.used == 90 and len(t) == 2


def test_stop_answers_queued_and_running_with_shutting_down(backend):
    backend.step_sleep = 0.1
    srv = Server(backend, ServerConfig(endpoint="tcp://127.0.0.1:0",
                                       shutdown_timeout=3)).start()
    c = Client(srv.endpoint, timeout=3)
    try:
        s = c.open_session(make_image(16, 16, 4))
        j1 = c.start_drag(s, [((1, 1), (15, 15))], max_steps=100)
        j2 = c.start_drag(s, [((1, 1), (15, 15))], max_steps=100)
        t0 = time.monotonic()
        while j1.state != "running" and time.monotonic() - t0 < 3:
            c.poll(20)
        t0 = time.monotonic()
        srv.stop()
        assert time.monotonic() - t0 < 1.5
        while not (j1.done and j2.done) and time.monotonic() - t0 < 3:
            c.poll(20)
        assert j1.error.code == "shutting_down" and j2.error.code == "shutting_down"
    finally:
        c.close()
        srv.stop()


# ---------------------------------------------------------------------------
# Bad input over the wire
# ---------------------------------------------------------------------------


def test_bad_requests_each_get_an_error_reply(server, client):
    raw = Raw(server.endpoint)
    try:
        def header(**h):
            base = {"v": PROTOCOL_VERSION, "id": "r1", "type": "ping"}
            base.update(h)
            return msgpack.packb({k: v for k, v in base.items() if v is not ...})

        cases = [
            ([b"\xc1garbage"], "bad_message"),
            ([msgpack.packb([1, 2, 3])], "bad_message"),
            ([header(v=99)], "version_mismatch"),
            ([header(v=...)], "bad_message"),
            ([header(type="frobnicate")], "unknown_type"),
            ([header(bogus=1)], "unknown_field"),
            ([header(type="drag", session="s-x", points=[{"handle": [1, 2],
                                                          "target": [1, 2]}])],
             "unknown_session"),
            ([header(type="open_session", frames=[{"name": "image", "width": 4, "height": 4,
                                                   "channels": 4}]), b"\0" * 63],
             "bad_pixels"),
            ([header(type="open_session", frames=[{"name": "image", "width": 4, "height": 4,
                                                   "channels": 4}])], "bad_pixels"),
            ([header(type="open_session", frames=[{"name": "image", "width": 1 << 30,
                                                   "height": 1 << 30, "channels": 4}]),
              b"\0"], "too_large"),
            ([header()] + [b""] * 50, "too_large"),
        ]
        for parts, code in cases:
            m = raw.request(parts)
            assert m.type == "error", (parts[0][:40], m)
            assert m["code"] == code, (parts[0][:60], m.fields)
            assert m["message"]
        # The daemon keeps serving everyone else.
        assert client.ping()["queued"] == 0
    finally:
        raw.close()


def test_version_mismatch_sentence(server):
    raw = Raw(server.endpoint)
    try:
        other = PROTOCOL_VERSION + 1
        m = raw.request([msgpack.packb({"v": other, "id": "x", "type": "hello"})])
        assert m.id == "x" and m["code"] == "version_mismatch"
        assert "update the plug-in and the daemon" in m["message"]
        assert m["details"] == {"expected": PROTOCOL_VERSION, "got": other}
    finally:
        raw.close()


def test_oversized_messages_get_too_large_or_are_dropped_by_maxmsgsize(backend):
    """Over a protocol limit but within ZMQ_MAXMSGSIZE: a too_large error on the sender's
    socket. Over ZMQ_MAXMSGSIZE: libzmq drops the message and the connection, so nothing comes
    back; the sender's socket reconnects and is served again."""
    limits = Limits(max_pixels=64 * 64, max_side=64, max_header_bytes=1024)
    assert limits.max_message_bytes == 64 * 64 * 4
    with Server(backend, ServerConfig(endpoint="tcp://127.0.0.1:0", limits=limits)) as srv:
        raw = Raw(srv.endpoint)
        try:
            header = msgpack.packb({"v": PROTOCOL_VERSION, "id": "big", "type": "ping",
                                    "pad": "x" * 2000})
            m = raw.request([header])
            assert m.type == "error" and m["code"] == "too_large", m.fields
            assert "header is %d bytes" % len(header) in m["message"]
            raw.send(encode("ping", "huge", {}) + [b"\0" * (limits.max_message_bytes + 1)])
            assert not raw.s.poll(1000), "a message over ZMQ_MAXMSGSIZE got a reply"
            m = raw.request(encode("ping", "after", {}))
            assert m.type == "result" and m.id == "after", m.fields
        finally:
            raw.close()


# ---------------------------------------------------------------------------
# Security: loopback rule, CurveZMQ, keys
# ---------------------------------------------------------------------------


def test_loopback_rule():
    for ep in ("tcp://127.0.0.1:5557", "tcp://localhost:1", "tcp://[::1]:5", "ipc:///tmp/x",
               "tcp://127.0.0.2:9", "inproc://x"):
        assert is_loopback_endpoint(ep), ep
    for ep in ("tcp://0.0.0.0:5557", "tcp://*:5557", "tcp://eth0:5557", "tcp://192.0.2.2:1",
               "tcp://[::]:5"):
        assert not is_loopback_endpoint(ep), ep
    with pytest.raises(ConfigError, match="CurveZMQ"):
        Server(NullBackend(), ServerConfig(endpoint="tcp://0.0.0.0:0")).start()


def test_insecure_bind_logs_a_warning(caplog):
    cfg = ServerConfig(endpoint="tcp://0.0.0.0:0", insecure=True)
    with caplog.at_level(logging.WARNING, logger="dragd.server"):
        with Server(NullBackend(), cfg) as srv:
            assert "insecure_bind" in caplog.text
            with Client("tcp://127.0.0.1:%d" % srv.port, timeout=2) as c:
                assert c.hello()["curve"] is False


def test_keys_files(tmp_path):
    kp = dkeys.create_keypair(tmp_path, "server")
    sec = tmp_path / "server.key_secret"
    assert stat.S_IMODE(os.stat(sec).st_mode) == 0o600
    assert dkeys.load_keypair(tmp_path, "server") == kp
    assert dkeys.ensure_keypair(tmp_path, "server") == kp
    with pytest.raises(dkeys.KeyFileError):
        dkeys.create_keypair(tmp_path, "server")
    os.chmod(sec, 0o644)
    with pytest.raises(dkeys.KeyFileError, match="chmod 600"):
        dkeys.load_keypair(tmp_path, "server")
    cp = dkeys.create_keypair(tmp_path, "client")
    dkeys.allow_client(tmp_path, cp.public, "my laptop")
    assert dkeys.load_allowed_clients(tmp_path) == [cp.public]
    # Files are zmq.auth-compatible certificates.
    import zmq.auth
    assert zmq.auth.load_certificate(str(tmp_path / "client.key_secret")) == (cp.public,
                                                                               cp.secret)


def test_curve_on_non_loopback_bind(tmp_path):
    dkeys.create_keypair(tmp_path, "server")
    good = dkeys.create_keypair(tmp_path, "client")
    dkeys.allow_client(tmp_path, good.public, "client")
    bad = dkeys.create_keypair(tmp_path, "stranger")
    cfg = ServerConfig(endpoint="tcp://0.0.0.0:0", keys_dir=str(tmp_path))
    with Server(TranslateBackend(step_sleep=0), cfg) as srv:
        assert srv.curve
        ep = "tcp://127.0.0.1:%d" % srv.port        # only ever connect to loopback
        curve = CurveConfig.from_files(tmp_path / "server.key", tmp_path / "client.key_secret")
        with Client(ep, timeout=2, curve=curve) as c:
            assert c.hello()["curve"] is True
            s = c.open_session(make_image(16, 16, 4))
            assert c.drag(s, [((1, 1), (3, 2))])["stop"] == "converged"
        for cc in (None, CurveConfig(dkeys.load_keypair(tmp_path, "server").public,
                                     bad.public, bad.secret)):
            with Client(ep, timeout=0.8, heartbeat=0.2, curve=cc) as c:
                t0 = time.monotonic()
                with pytest.raises(DaemonUnavailable):
                    c.hello()
                assert time.monotonic() - t0 < 1.5


def test_curve_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="keys"):
        Server(NullBackend(), ServerConfig(endpoint="tcp://0.0.0.0:0",
                                           keys_dir=str(tmp_path))).start()
    dkeys.create_keypair(tmp_path, "server")
    with pytest.raises(ConfigError, match="no client key"):
        Server(NullBackend(), ServerConfig(endpoint="tcp://0.0.0.0:0",
                                           keys_dir=str(tmp_path))).start()


def test_bind_failure_is_raised():
    with Server(NullBackend(), ServerConfig(endpoint="tcp://127.0.0.1:0")) as srv:
        with pytest.raises(zmq.ZMQError):
            Server(NullBackend(), ServerConfig(endpoint=srv.endpoint)).start()


def test_cancel_token():
    t = CancelToken()
    assert not t.cancelled
    t.check()
    t.cancel("shutdown")
    t.cancel("cancelled")
    assert t.cancelled and t.reason == "shutdown" and t.wait(0)


def test_serve_stops_cleanly_on_sigterm():
    port = free_port()
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout);"
            "from dragd.daemon.service.backend import NullBackend;"
            "from dragd.daemon.service.server import serve, ServerConfig;"
            "serve(NullBackend(), ServerConfig(endpoint='tcp://127.0.0.1:%d'));"
            "print('clean exit')" % port)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        with Client("tcp://127.0.0.1:%d" % port, timeout=10) as c:
            assert c.hello()["protocol"] == PROTOCOL_VERSION
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=10)
        assert p.returncode == 0, out
        assert "event=stopped" in out and "clean exit" in out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
