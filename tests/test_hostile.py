"""Hostile clients against a real `dragd serve` process: the daemon must stay up and answer."""
from __future__ import annotations

import re
import subprocess
import sys

import zmq

from daemon_fixture import start_daemon
from dragd.protocol import Client


def _first_automatic_ids(n: int) -> list[int]:
    """Where libzmq starts a ROUTER's peer-id counter, for each of the first n candidates in a
    fresh process: generate_random() is rand() | rand() << 31 (libzmq 4.3 random.cpp), and
    nothing seeds rand(), so every fresh daemon draws from the same sequence."""
    code = "import ctypes; libc = ctypes.CDLL(None); print(*[libc.rand() for _ in range(%d)])" % (n + 1)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    r = [int(v) for v in out.split()]
    return [(r[i] | (r[i + 1] << 31)) & 0xFFFFFFFF for i in range(n)]


def test_client_chosen_routing_ids_cannot_abort_the_daemon(tiny_model_path, tmp_path):
    """A peer claiming an automatic id the ROUTER will hand out later used to make libzmq abort
    the process (socket_base.cpp assertion) when an ordinary client got that id."""
    daemon = start_daemon(tiny_model_path, tmp_path)
    ctx = zmq.Context()
    attackers = []
    try:
        for start in _first_automatic_ids(40):
            for k in range(1, 6):
                s = ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.LINGER, 0)
                s.setsockopt(zmq.ROUTING_ID, b"\0" + ((start + k) & 0xFFFFFFFF).to_bytes(4, "big"))
                s.connect(daemon.endpoint)
                attackers.append(s)
        for s in attackers:
            if s.poll(0, zmq.POLLOUT):
                s.send_multipart([b"", b"x"], flags=zmq.NOBLOCK)
        for _ in range(5):                  # ordinary clients, each a new automatic id
            with Client(daemon.endpoint, timeout=10.0) as c:
                assert c.hello()["protocol"]
        assert daemon.proc.poll() is None, daemon.log()
    finally:
        for s in attackers:
            s.close(0)
        ctx.term()
        daemon.stop()


def test_two_fresh_daemons_hand_out_different_peer_ids(tiny_model_path, tmp_path):
    """Unseeded, every fresh daemon numbers its peers from the same value: the attack above
    needs only that. The ids show in the log of a bad request."""
    seen = []
    for i in range(2):
        daemon = start_daemon(tiny_model_path, tmp_path / str(i))
        ctx = zmq.Context()
        try:
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(daemon.endpoint)
            s.send_multipart([b"", b"not msgpack"])
            assert s.poll(10000), daemon.log()
            s.close(0)
            ids = re.findall(r"event=bad_request peer=([0-9a-f]+)", daemon.log())
            assert ids, daemon.log()
            seen.append(ids[0])
        finally:
            ctx.term()
            daemon.stop()
    assert seen[0] != seen[1]
