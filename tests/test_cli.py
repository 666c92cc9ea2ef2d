"""The `dragd` command as a user runs it: a separate process, real daemon, real files."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from daemon_fixture import start_daemon


def dragd(*args, timeout=180, env=None):
    e = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "dragd.daemon.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=e)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    d = tmp_path_factory.mktemp("photo")
    rng = np.random.default_rng(0)
    arr = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(d / "in.png")
    mask = np.zeros((60, 80), np.uint8)
    mask[10:50, 20:60] = 255
    Image.fromarray(mask).save(d / "mask.png")
    return d, arr, mask


def test_edit_through_a_running_daemon(running_daemon, photo, tmp_path):
    d, arr, mask = photo
    out, gif = tmp_path / "out.png", tmp_path / "drag.gif"
    r = dragd("edit", d / "in.png", "--drag", "40,30:46,32", "--mask", d / "mask.png", "-o", out,
              "--gif", gif, "--steps", "6", "--quality", "fast", "--connect", running_daemon.endpoint)
    assert r.returncode == 0, r.stderr
    assert f"daemon at {running_daemon.endpoint}" in r.stderr
    res = np.asarray(Image.open(out))
    assert res.shape == arr.shape
    assert np.array_equal(res[mask == 0], arr[mask == 0])
    assert not np.array_equal(res[mask > 0], arr[mask > 0])
    assert Image.open(gif).n_frames >= 2


def test_edit_runs_in_process_when_no_daemon_answers(photo, tiny_model_path, tmp_path):
    d, arr, _ = photo
    out = tmp_path / "out.png"
    r = dragd("edit", d / "in.png", "--drag", "40,30:44,30", "-o", out, "--steps", "3", "--quality", "fast",
              "--model", tiny_model_path, "--device", "cpu", "--connect", "tcp://127.0.0.1:9",
              env={"DRAGD_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    assert "running in this process" in r.stderr
    assert np.asarray(Image.open(out)).shape == arr.shape


@pytest.mark.parametrize("args, words", [
    (["--drag", "400,30:44,30"], "outside the 80×60 image"),
    (["--drag", "40,30"], "expects X1,Y1:X2,Y2"),
    (["--drag", "40,30:44,30", "--mask", "WRONG"], "is 10×10 but the image is 80×60"),
])
def test_edit_bad_input_is_a_clear_error(photo, tmp_path, args, words):
    d, _, _ = photo
    Image.fromarray(np.zeros((10, 10), np.uint8) + 255).save(tmp_path / "small.png")
    args = [str(tmp_path / "small.png") if a == "WRONG" else a for a in args]
    r = dragd("edit", d / "in.png", *args, "-o", tmp_path / "o.png", "--connect", "tcp://127.0.0.1:9")
    assert r.returncode == 2
    assert words in r.stderr
    assert "Traceback" not in r.stderr


def test_demo_writes_before_after(tiny_model_path, tmp_path):
    out = tmp_path / "demo.png"
    r = dragd("demo", "-o", out, "--model", tiny_model_path, "--steps", "5", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "after" in r.stdout and out.is_file()
    w, h = Image.open(out).size
    assert w > 2 * h - 20


def test_status_and_unreachable_daemon(running_daemon):
    r = dragd("status", "--connect", running_daemon.endpoint)
    assert r.returncode == 0, r.stderr
    assert "device: cpu" in r.stdout
    t0 = time.monotonic()
    r = dragd("status", "--connect", "tcp://127.0.0.1:9")
    assert r.returncode == 2 and "dragd serve" in r.stderr
    assert time.monotonic() - t0 < 30


def test_serve_exits_cleanly_on_sigterm(tiny_model_path, tmp_path):
    d = start_daemon(tiny_model_path, tmp_path)
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(30) == 0
    assert "event=stopped" in d.log()


def test_serve_refuses_an_open_bind_without_keys(tiny_model_path, tmp_path):
    r = dragd("serve", "--bind", "tcp://0.0.0.0:0", "--model", tiny_model_path, "--device", "cpu", timeout=120,
              env={"DRAGD_KEYS_DIR": str(tmp_path / "no-keys")})
    assert r.returncode == 2
    assert "CurveZMQ" in r.stderr or "curve" in r.stderr.lower()
    assert "Traceback" not in r.stderr


def test_remote_daemon_by_the_readme_recipe(tiny_model_path, tmp_path):
    """`dragd keys init` + `allow` on the daemon's machine, `dragd keys client` + a copy of
    server.key on the client's: then `dragd serve` on an open address, with no --keys-dir,
    takes the keys from the default folder and lets exactly that client in."""
    from daemon_fixture import free_port
    from dragd.protocol import Client, CurveConfig, DaemonUnavailable

    server_keys, client_keys = tmp_path / "server-keys", tmp_path / "client-keys"
    on_server, on_client = {"DRAGD_KEYS_DIR": str(server_keys)}, {"DRAGD_KEYS_DIR": str(client_keys)}
    assert dragd("keys", "init", env=on_server).returncode == 0
    r = dragd("keys", "client", env=on_client)
    assert r.returncode == 0 and "dragd keys allow" in r.stdout, r.stderr
    (client_keys / "server.key").write_bytes((server_keys / "server.key").read_bytes())
    r = dragd("keys", "allow", client_keys / "client.key", env=on_server)
    assert r.returncode == 0, r.stderr
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "dragd.daemon.cli", "serve", "--bind", f"tcp://0.0.0.0:{port}",
                             "--model", str(tiny_model_path), "--device", "cpu", "--cache-dir", str(tmp_path / "inv")],
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1", **on_server))
    try:
        curve = CurveConfig.from_files(client_keys / "server.key", client_keys / "client.key_secret")
        deadline = time.monotonic() + 90
        with Client(f"tcp://127.0.0.1:{port}", timeout=2.0, curve=curve) as c:
            while True:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                try:
                    hello = c.hello()
                    break
                except DaemonUnavailable:
                    assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
        assert hello["curve"] is True
        stranger = CurveConfig(curve.server_public_key, *__import__("zmq").curve_keypair())
        with Client(f"tcp://127.0.0.1:{port}", timeout=2.0, curve=stranger) as c:
            with pytest.raises(DaemonUnavailable):
                c.hello()
        # dragd edit without keys: the daemon refuses it, and it says so instead of quietly
        # running a daemon of its own
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "in.png")
        r = dragd("edit", tmp_path / "in.png", "--drag", "4,4:6,6", "-o", tmp_path / "out.png",
                  "--connect", f"tcp://127.0.0.1:{port}", env={"DRAGD_KEYS_DIR": str(tmp_path / "none")})
        assert r.returncode == 2 and "refused" in r.stderr and "running in this process" not in r.stderr, r.stderr
        assert not (tmp_path / "out.png").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()


def test_keys_and_devices_that_are_not_there_are_sentences(tmp_path):
    r = dragd("keys", "show", env={"DRAGD_KEYS_DIR": str(tmp_path / "none")})
    assert r.returncode == 2 and "dragd keys init" in r.stderr and "Traceback" not in r.stderr
    import torch
    if not torch.cuda.is_available():
        r = dragd("demo", "--device", "cuda", "-o", tmp_path / "x.png")
        assert r.returncode == 2 and "no CUDA GPU" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_install_plugins_round_trip(tmp_path):
    gimp = tmp_path / "gimp"
    r = dragd("install-plugins", "--gimp", "--dest", gimp)
    assert r.returncode == 0, r.stderr
    entry = gimp / "dragd-gimp" / "dragd-gimp.py"
    assert entry.is_file() and os.access(entry, os.X_OK)
    assert (gimp / "dragd-gimp" / "dragd" / "protocol" / "client.py").is_file()
    r = dragd("install-plugins", "--gimp", "--uninstall", "--dest", gimp)
    assert r.returncode == 0 and not (gimp / "dragd-gimp").exists()
