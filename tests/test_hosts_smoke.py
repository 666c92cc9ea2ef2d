"""Smoke tests of the real-host infrastructure (tests/hosts): a real GIMP 3.0 and a real Krita
5.2.9 in the cached Debian trixie chroot run scripts, find and call the probe plug-ins, and talk
ZeroMQ to the host. docs/HOSTS.md records the facts these tests pin down.

The first run builds the chroot (~1.5 min); after that each test takes a few seconds. They skip
on machines that cannot build it (not root, ...) except under CI or DRAGD_REQUIRE_HOSTS=1.
"""
import json
import threading

import pytest

from hosts.chroot import (PROBE_DIR, ensure_chroot, install_gimp_plugin, install_krita_plugin,
                          new_home, run_chroot_python, run_gimp_script, run_krita_gui,
                          run_krita_module)

pytestmark = pytest.mark.hosts

GIMP_DIR = PROBE_DIR / "gimp"
KRITA_DIR = PROBE_DIR / "krita"


@pytest.fixture(scope="module")
def chroot_root():
    return ensure_chroot()


class EchoServer:
    """A ROUTER socket bound by the host's pyzmq on 127.0.0.1 that answers each request with
    b"echo:" + its last frame, in a thread, for at most `limit` requests or `timeout` seconds."""

    def __init__(self, limit=1, timeout=60.0):
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = "tcp://127.0.0.1:%d" % self.port
        self.received = []
        self._limit, self._timeout = limit, timeout
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        import time

        deadline = time.monotonic() + self._timeout
        while len(self.received) < self._limit and time.monotonic() < deadline:
            if self.sock.poll(100):
                frames = self.sock.recv_multipart()
                self.received.append(frames[1:])
                self.sock.send_multipart(frames[:-1] + [b"echo:" + frames[-1]])

    def close(self):
        self._thread.join(timeout=self._timeout + 1)
        self.sock.close()
        self.ctx.term()


def test_gimp_runs_a_batch_script(chroot_root):
    ok = run_gimp_script(
        "import json, os, sys\n"
        "from gi.repository import Gimp\n"
        "with open(os.environ['DRAGD_RESULT'], 'w') as f:\n"
        "    json.dump({'version': Gimp.version(), 'name': __name__,\n"
        "               'python': sys.version.split()[0]}, f)\n", timeout=60)
    ok.check()
    assert ok.result["version"].startswith("3.0."), ok.result
    assert ok.result["name"] == "__main__"
    assert ok.elapsed < 45, ok.log()

    bad = run_gimp_script("raise RuntimeError('dragd-boom')\n", timeout=60)
    assert bad.returncode == 64, bad.log()
    assert "dragd-boom" in bad.stderr and bad.result is None


def test_gimp_probe_plugin_is_found_and_called_with_arguments(chroot_root):
    with new_home("gimp") as home:
        install_gimp_plugin(home, GIMP_DIR / "dragd_probe")
        r = run_gimp_script((GIMP_DIR / "gimp_facts.py").read_text(), timeout=90, home=home,
                            trace=True)
    r.check()
    f = r.result
    assert f["version"].startswith("3.0.")
    # Pixels, offsets, paths and selections as docs/HOSTS.md states them.
    assert f["offsets"] == [True, 10, 6]
    assert f["get_type"] == "bytes" and f["pixels_roundtrip"] is True
    assert f["selected_paths"] == ["arrow"]
    kind, points, closed = f["stroke_points"]
    assert points == [15.0, 12.0] * 3 + [30.0, 20.0] * 3 and closed is False
    assert f["rect_mask_len"] == 40 * 30 and f["rect_mask_sum"] == 10 * 8 * 255
    assert f["rect_mask_first_on"] == [10, 4]
    assert f["feather_distinct_values"] > 2
    assert f["mask_sum_after_none"] == 0
    assert f["stack_after_insert"] == ["art", "above-bg", "bg"]

    # The plug-in: registered from the private profile, called with extra arguments.
    assert f["probe_exists"] is True
    assert f["probe_args"] == ["run-mode", "image", "drawables", "label", "steps", "fail"]
    assert f["probe_status"] == "success" and f["probe_nvalues"] == 3
    rep = f["probe_report"]
    assert rep["label"] == "dragged" and rep["steps"] == 3 and rep["drawable"] == "art"
    assert rep["paths"][0]["strokes"][0]["anchors"] == [[15.0, 12.0], [30.0, 20.0]]
    assert rep["offsets"] == [10, 6] and rep["pixels_len"] == 40 * 30 * 4
    assert rep["mask_len"] == 40 * 30 and rep["mask_sum"] > 0
    assert f["probe_new_layer_name"] == "dragged" and f["probe_new_layer_inverted"] is True
    assert f["probe_new_layer_offsets"] == [10, 6]
    assert f["stack_after_probe"] == ["dragged", "art", "bg"]
    assert f["fail_status"] == "execution-error"
    assert f["fail_message"] == "dragd-probe: failing on request"

    # Exactly one undo group in the plug-in process, every state change inside it.
    calls = [t for t in r.trace if t.get("prog") == "dragd_probe.py"]
    assert not [t for t in r.trace if "error" in t], r.trace
    names = [t["call"] for t in calls]
    assert names.count("Image.undo_group_start") == 1, names
    assert names.count("Image.undo_group_end") == 1, names
    inside = [t for t in calls if not t["call"].startswith("Image.undo_group_")]
    assert inside and all(t["depth"] == 1 for t in inside), calls
    assert r.elapsed < 50, r.log()


def test_krita_runs_a_module_with_the_probe_plugin(chroot_root):
    server = EchoServer(limit=1, timeout=60)
    try:
        with new_home("krita") as home:
            install_krita_plugin(home, KRITA_DIR / "dragd_krita_probe",
                                 KRITA_DIR / "dragd_krita_probe.desktop")
            r = run_krita_module(KRITA_DIR / "modules", "krita_facts",
                                 ["first", "zmq=" + server.endpoint], timeout=90, home=home)
    finally:
        server.close()
    assert r.result is not None, r.log()
    f = r.result
    assert "error" not in f, f.get("error")
    assert f["krita_version"].startswith("5.2"), f
    assert f["args"] == ["first", "zmq=" + server.endpoint]
    # BGRA bytes in, a red pixel out; the projection needs refreshProjection().
    assert f["art_pixel_readback"] == [10, 20, 200, 255]
    assert f["projection_qimage_rgba"] == [200, 20, 10, 255]
    assert f["projection_after_refresh"] == [10, 20, 200, 255]
    assert f["stack"] == ["Background", "bg", "above-bg", "art"]
    assert f["stack_after_remove"] == ["Background", "bg", "art"]
    assert f["mask_len"] == 64 * 48 and f["mask_sum"] == 12 * 6 * 255
    assert f["qeventloop_ticks"] >= 5 and f["processevents_ticks"] >= 3
    for dpi in ("72", "300"):
        line = f["line_%sdpi" % dpi]
        assert line["shapes"][0]["type"] == "KoPathShape"
        assert line["px_shape_endpoints_px"] == [[20.0, 10.0], [120.0, 60.0]]
    assert f["line_300dpi"]["pt_shape_endpoints_px"] == [[83.333, 41.667], [500.0, 250.0]]
    # The installed plug-in package is importable (kritarunner's pykrita dir), not auto-loaded.
    assert f["preloaded_from_profile"] is False
    assert f["pkg_import"] == "dragd_krita_probe imported"
    assert "/.local/share/kritarunner/pykrita/dragd_krita_probe/" in f["pkg_file"]
    assert f["extensions_after_import"] == ["ProbeExtension"]
    # A QTimer-polled DEALER inside Krita reached the host's pyzmq ROUTER.
    assert f["zmq_reply"] == ["", "echo:ping-from-krita"]
    assert server.received == [[b"", b"ping-from-krita"]]
    assert r.elapsed < 50, r.log()


def test_krita_gui_loads_the_probe_plugin_and_its_docker_polls(chroot_root):
    server = EchoServer(limit=1, timeout=90)
    try:
        with new_home("krita-gui") as home:
            install_krita_plugin(home, KRITA_DIR / "dragd_krita_probe",
                                 KRITA_DIR / "dragd_krita_probe.desktop")
            r = run_krita_gui(KRITA_DIR / "gui_facts.py", timeout=120, home=home,
                              env={"DRAGD_ZMQ_ENDPOINT": server.endpoint})
    finally:
        server.close()
    assert r.result is not None, r.log()
    f = r.result
    assert "error" not in f, f["error"]
    assert f["windows"] == 1 and "ProbeExtension" in f["extensions"]
    assert f["active_document"] == "gui"
    assert f["docker_found"] == 1 and f["docker_title"] == "dragd probe"
    assert f["docker_zmq_reply"] == ["", "echo:ping-from-docker"]
    assert server.received == [[b"", b"ping-from-docker"]]


def test_zmq_round_trip_between_host_and_chroot(chroot_root):
    server = EchoServer(limit=1, timeout=30)
    code = (
        "import json, sys, zmq, msgpack\n"
        "ctx = zmq.Context()\n"
        "s = ctx.socket(zmq.DEALER)\n"
        "s.setsockopt(zmq.LINGER, 0)\n"
        "s.connect(sys.argv[1] if len(sys.argv) > 1 else %r)\n"
        "s.send_multipart([b'', msgpack.packb({'op': 'ping', 'n': 3}), bytes(range(256))])\n"
        "ok = s.poll(10000)\n"
        "frames = s.recv_multipart() if ok else []\n"
        "print(json.dumps({'zmq': zmq.zmq_version(), 'pyzmq': zmq.__version__,\n"
        "                  'frames': [f.hex() for f in frames]}))\n" % server.endpoint)
    try:
        r = run_chroot_python(code, timeout=30)
    finally:
        server.close()
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    import msgpack

    assert server.received == [[b"", msgpack.packb({"op": "ping", "n": 3}), bytes(range(256))]]
    assert [bytes.fromhex(h) for h in out["frames"]] == [b"", msgpack.packb({"op": "ping", "n": 3}),
                                                         b"echo:" + bytes(range(256))]


@pytest.mark.parametrize("required", [None, "CI", "DRAGD_REQUIRE_HOSTS"])
def test_unbuildable_machine_skips_unless_hosts_are_required(monkeypatch, required):
    import hosts.chroot as hc

    monkeypatch.setattr(hc, "_ready_root", None)
    monkeypatch.setattr(hc.os, "geteuid", lambda: 1000)
    for var in ("CI", "DRAGD_REQUIRE_HOSTS"):
        monkeypatch.delenv(var, raising=False)
    if required:
        monkeypatch.setenv(required, "1" if required == "DRAGD_REQUIRE_HOSTS" else "true")
    expected = pytest.fail.Exception if required else pytest.skip.Exception
    with pytest.raises(expected, match="needs root"):
        hc.ensure_chroot()
