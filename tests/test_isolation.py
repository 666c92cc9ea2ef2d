"""Clients of one real `dragd serve` cannot reach each other's work, a refused CurveZMQ key is
told as such, and hostile strings cannot flood or garble the daemon's log (issue 15, items 8,
14 and 15).

Every daemon here is a real process (tests/daemon_fixture.py) on real sockets.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import msgpack
import pytest
import zmq

from daemon_fixture import free_port, start_daemon
from dragd.protocol import (PROTOCOL_VERSION, Client, CurveConfig, Image, RemoteError, encode,
                            parse_reply)
from dragd.protocol.client import DaemonRefused

NO_INVERSION = {"method": "none"}


def layer(seed: int = 1, side: int = 32) -> Image:
    return Image(bytes((x * 7 + y * 13 + seed * 31 + c) % 251 for y in range(side)
                       for x in range(side) for c in range(3)), side, side, 3)


def raw_request(endpoint: str, parts, timeout: float = 10.0, curve: CurveConfig = None):
    """Send one hand-made request on a fresh DEALER; return its final reply."""
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.linger = 0
    if curve is not None:
        curve.apply(s)
    s.connect(endpoint)
    try:
        s.send_multipart(parts)
        deadline = time.monotonic() + timeout
        while True:
            assert s.poll(max(1, int((deadline - time.monotonic()) * 1000))), "no reply"
            m = parse_reply(s.recv_multipart())
            if m.type in ("result", "error"):
                return m
    finally:
        s.close(0)


def unknown_session_message(endpoint: str, sid: str) -> str:
    m = raw_request(endpoint, encode("undo", "probe", {"session": sid}))
    assert m.type == "error" and m["code"] == "unknown_session", m.fields
    return m["message"].replace(sid, "SID")


# ---------------------------------------------------------------------------
# Item 8: sessions and jobs belong to the client that made them
# ---------------------------------------------------------------------------


def test_another_client_cannot_see_undo_close_or_cancel(running_daemon):
    ep = running_daemon.endpoint
    with Client(ep, timeout=10) as a, Client(ep, timeout=10, auto_reopen=False) as b:
        s = a.open_session(layer(), invert=NO_INVERSION)
        a.drag(s, [((8, 8), (10, 9))], max_steps=3)
        assert s.token and len(s.token) >= 32

        st = b.status()
        assert s.id not in {x["session"] for x in st["sessions"]}
        assert st["others"]["sessions"] >= 1
        assert s.id in {x["session"] for x in a.status()["sessions"]}

        # Knowing the id is not enough, nor is a guessed token: B gets exactly the answer
        # for an id that never existed (which does not even say the session exists).
        never = unknown_session_message(ep, "s-0000000000000000")
        for call in (lambda: b.undo(s.id), lambda: b.close_session(s.id),
                     lambda: b.reset_points(s.id),
                     lambda: b.drag(s.id, [((8, 8), (9, 9))], max_steps=1)):
            with pytest.raises(RemoteError) as ei:
                call()
            assert ei.value.code == "unknown_session"
            assert ei.value.details["reason"] == "unknown"
            assert ei.value.message.replace(s.id, "SID") == never
        forged = raw_request(ep, encode("undo", "forged", {"session": s.id, "token": "A" * 32}))
        assert forged["code"] == "unknown_session" and forged["details"]["reason"] == "unknown"

        # A's session is untouched: its undo history is still there, and it is A's to close.
        assert a.undo(s)["history"] == 0
        a.close_session(s)
        with pytest.raises(RemoteError) as ei:
            a.drag(s.id, [((8, 8), (9, 9))], max_steps=1)
        assert ei.value.details["reason"] == "closed"      # the owner learns why


def test_another_client_cannot_cancel_or_list_a_job(running_daemon):
    ep = running_daemon.endpoint
    with Client(ep, timeout=10) as a, Client(ep, timeout=10) as b:
        s = a.open_session(layer(seed=2), invert=NO_INVERSION)
        job = a.start_drag(s, [((4, 4), (28, 28))], max_steps=400, stop_distance=0,
                           stall_steps=0)
        deadline = time.monotonic() + 10
        while job.job_id is None and time.monotonic() < deadline:
            a.poll(20)
        assert job.job_id is not None
        st = b.status()
        assert st["running"] is None and st["queue"] == []
        assert st["others"]["jobs"] >= 1 or job.done
        assert b.cancel(job.job_id) is None                 # unknown_job, as if finished
        with pytest.raises(RemoteError) as ei:
            b.call("cancel", {"request": job.request_id})
        assert ei.value.code == "unknown_job"
        r = a.wait(job, timeout=120)
        assert r["stop"] != "cancelled"


# ---------------------------------------------------------------------------
# Item 14 (and item 8 with CurveZMQ): a real daemon with keys
# ---------------------------------------------------------------------------


def dragd(*args, env):
    return subprocess.run([sys.executable, "-m", "dragd.daemon.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1", **env))


@pytest.fixture(scope="module")
def curve_daemon(tiny_model_path, tmp_path_factory):
    """`dragd serve` on an open address with two allowed client keys (the README recipe)."""
    tmp = tmp_path_factory.mktemp("curve")
    server_keys = {"DRAGD_KEYS_DIR": str(tmp / "server")}
    assert dragd("keys", "init", env=server_keys).returncode == 0
    clients = {}
    for name in ("alice", "bob"):
        on_client = {"DRAGD_KEYS_DIR": str(tmp / name)}
        assert dragd("keys", "client", env=on_client).returncode == 0
        (tmp / name / "server.key").write_bytes((tmp / "server" / "server.key").read_bytes())
        # As the daemon's operator receives it: one file per person (the allow-list is a
        # folder of key files, so two files both called client.key would be one).
        (tmp / f"{name}.key").write_bytes((tmp / name / "client.key").read_bytes())
        r = dragd("keys", "allow", tmp / f"{name}.key", env=server_keys)
        assert r.returncode == 0, r.stderr
        clients[name] = CurveConfig.from_files(tmp / name / "server.key",
                                               tmp / name / "client.key_secret")
    port = free_port()
    log = open(tmp / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "dragd.daemon.cli", "serve", "--bind",
                             f"tcp://0.0.0.0:{port}", "--model", str(tiny_model_path),
                             "--device", "cpu", "--cache-dir", str(tmp / "inv")],
                            stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, OMP_NUM_THREADS="1", **server_keys))
    ep = f"tcp://127.0.0.1:{port}"
    try:
        with Client(ep, timeout=2.0, curve=clients["alice"]) as c:
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, (tmp / "serve.log").read_text()
                try:
                    c.hello()
                    break
                except DaemonRefused:
                    raise
                except RemoteError:
                    assert time.monotonic() < deadline, (tmp / "serve.log").read_text()
        yield ep, clients
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()


def test_a_refused_key_is_told_at_once_with_what_to_do(curve_daemon):
    ep, clients = curve_daemon
    stranger = CurveConfig(clients["alice"].server_public_key, *zmq.curve_keypair())
    for curve, words in ((stranger, "refused this client's CurveZMQ key"),
                         (None, "requires CurveZMQ keys and this client has none")):
        with Client(ep, timeout=10.0, curve=curve) as c:
            t0 = time.monotonic()
            with pytest.raises(DaemonRefused) as ei:
                c.hello()
            assert time.monotonic() - t0 < 2.0          # not the 10 s of a dead daemon
            assert words in ei.value.message
            assert "dragd keys client" in ei.value.message
            assert "dragd keys allow client.key" in ei.value.message
            assert "not reachable" not in ei.value.message
            with pytest.raises(DaemonRefused):           # and again on the next request
                c.status()


def test_the_plugins_show_the_refusal(curve_daemon):
    from dragd.plugin_common.task import DaemonProbe

    ep, _ = curve_daemon
    probe = DaemonProbe(ep, timeout=10.0)               # loopback: the plug-in sends no keys
    probe.start()
    t0 = time.monotonic()
    while probe.tick(50):
        assert time.monotonic() - t0 < 15
    assert time.monotonic() - t0 < 2.0
    assert "requires CurveZMQ keys" in probe.describe()
    assert "dragd keys allow client.key" in probe.describe()


def test_with_curve_a_session_belongs_to_the_key(curve_daemon):
    ep, clients = curve_daemon
    with Client(ep, timeout=10, curve=clients["alice"]) as a, \
            Client(ep, timeout=10, curve=clients["alice"]) as a2, \
            Client(ep, timeout=10, curve=clients["bob"], auto_reopen=False) as b:
        s = a.open_session(layer(seed=3), invert=NO_INVERSION)
        # The same key on another connection sees it; another allowed key does not, and
        # cannot use it even with the token.
        assert s.id in {x["session"] for x in a2.status()["sessions"]}
        assert s.id not in {x["session"] for x in b.status()["sessions"]}
        stolen = raw_request(ep, encode("undo", "stolen", {"session": s.id, "token": s.token}),
                             curve=clients["bob"])
        assert stolen["code"] == "unknown_session" and stolen["details"]["reason"] == "unknown"
        mine = raw_request(ep, encode("reset_points", "mine", {"session": s.id,
                                                               "token": s.token}),
                           curve=clients["alice"])
        assert mine.type == "result", mine.fields
        a.close_session(s)


# ---------------------------------------------------------------------------
# Item 15: hostile strings in the log and in replies
# ---------------------------------------------------------------------------


def test_hostile_strings_stay_short_and_escaped(tiny_model_path, tmp_path):
    d = start_daemon(tiny_model_path, tmp_path)
    try:
        before = len(d.log_path.read_bytes())
        huge = msgpack.packb({"v": "9" * 250_000, "id": "big", "type": "hello"})
        m = raw_request(d.endpoint, [huge])       # parse_reply: within the client's bounds
        assert m["code"] == "version_mismatch" and len(m["message"]) < 500
        evil = "r\r\x1b[2J\x07\nevent=fake"
        m = raw_request(d.endpoint, [msgpack.packb({"v": PROTOCOL_VERSION, "id": evil, "type": "bogus"})])
        assert m.type == "error"
        bad_field = "k\x1b[31m" + "x" * 5000
        m = raw_request(d.endpoint, [msgpack.packb({"v": PROTOCOL_VERSION, "id": "f",
                                                    "type": "ping", bad_field: 1})])
        assert m.type == "error" and "\x1b" not in m["message"] + str(m.get("details"))
        m = raw_request(d.endpoint, encode("ping", "many", {}) + [b""] * 999)
        assert m["code"] == "too_large" and "1000 frames" in m["message"], m["message"]
        with Client(d.endpoint, timeout=5) as c:
            assert c.ping()["queued"] == 0
        time.sleep(0.3)
        grown = d.log_path.read_bytes()[before:]
        assert len(grown) < 8000, len(grown)
        for ch in (b"\r", b"\x1b", b"\x07"):
            assert ch not in grown
        assert b"\nevent=fake" not in grown
    finally:
        d.stop()
