"""Starting a local daemon from the plug-in (plugin_common/daemon_launcher.py): finding the
command, the offer only for the local default address, a real `dragd serve` started detached
with its log in the named file, answered by the live session; a daemon that exits at once."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from daemon_fixture import free_endpoint
from dragd.plugin_common import daemon_launcher as dl
from dragd.plugin_common.live import LiveSession
from test_live import layer, run_until, settings

DRAGD = str(Path(sys.executable).with_name("dragd"))


def test_find_dragd_prefers_the_override_then_path_then_the_usual_places(tmp_path,
                                                                         monkeypatch):
    monkeypatch.delenv("DRAGD_COMMAND", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert dl.find_dragd() is None
    user = tmp_path / ".local/bin/dragd"
    user.parent.mkdir(parents=True)
    user.write_text("#!/bin/sh\n")
    user.chmod(0o755)
    assert dl.find_dragd() == str(user)
    monkeypatch.setenv("PATH", str(Path(DRAGD).parent))
    assert dl.find_dragd() == DRAGD
    monkeypatch.setenv("DRAGD_COMMAND", str(user))
    assert dl.find_dragd() == str(user)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert dl.log_path() == str(tmp_path / "c/dragd/serve.log")
    assert dl.log_path() in dl.offer_text("dragd")


def test_the_offer_is_only_for_the_local_default_address():
    assert dl.can_offer("tcp://127.0.0.1:5557")
    assert not dl.can_offer("tcp://127.0.0.1:6000")
    assert not dl.can_offer("tcp://192.168.1.5:5557")


def test_the_offer_needs_an_unreachable_local_daemon_and_dragd_here(tmp_path, monkeypatch):
    monkeypatch.setenv("DRAGD_COMMAND", str(tmp_path / "none"))        # not installed
    assert dl.offer(dl.DEFAULT_ENDPOINT, True) is None
    monkeypatch.setenv("DRAGD_COMMAND", DRAGD)
    assert dl.offer(dl.DEFAULT_ENDPOINT, True) == dl.offer_text(DRAGD)
    assert dl.offer(dl.DEFAULT_ENDPOINT, False) is None
    assert dl.offer("tcp://192.168.1.5:5557", True) is None


def test_a_started_daemon_answers_and_the_live_session_works_on_it(tiny_model_path, tmp_path):
    endpoint = free_endpoint()
    log = tmp_path / "logs" / "serve.log"
    args = ["serve", "--bind", endpoint, "--model", str(tiny_model_path), "--device", "cpu",
            "--cache-dir", str(tmp_path / "inv")]
    start = dl.DaemonStart(DRAGD, endpoint, args, log=str(log))
    start.start()
    try:
        assert start.state == "starting" and str(log) in start.message
        t0 = time.monotonic()
        while start.tick():
            assert time.monotonic() - t0 < 100
            time.sleep(0.05)
        assert start.state == "ready", (start.message, start.log_tail())
        assert "log: %s" % log in start.message and log.read_text().strip()
        # its own session: closing the host would not take the daemon down
        assert os.getsid(start.proc.pid) == start.proc.pid
        live = LiveSession(settings(endpoint), layer(), None)
        live.start()
        run_until(live, lambda: live.state == "idle", 60)
        live.close()
    finally:
        start.proc.terminate()
        start.proc.wait(20)


def test_a_daemon_that_exits_at_once_is_reported_with_its_log(tmp_path):
    log = tmp_path / "serve.log"
    start = dl.DaemonStart(DRAGD, free_endpoint(), ["serve", "--bind", "tcp://10.1.2.3:5557"],
                           log=str(log))
    start.start()
    t0 = time.monotonic()
    while start.tick():
        assert time.monotonic() - t0 < 60
        time.sleep(0.05)
    assert start.state == "failed", start.message
    assert "exited with status" in start.message and str(log) in start.message
    assert "insecure" in start.message or "Curve" in start.message, start.message
