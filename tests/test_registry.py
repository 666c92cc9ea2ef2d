"""Model registry: cache listing, downloads against a local HTTP server, name resolution."""
from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time

import pytest

from dragd.daemon.model import registry as reg

PAYLOAD = b"\x80\x04fake model bytes " * 5000


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):                                   # noqa: N802
        if self.path == "/model.pkl":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/short.pkl":                 # promises more than it sends
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD) * 2))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _entry(name, urls, sha256):
    return reg.ModelEntry(name, f"{name}.pkl", 64, tuple(urls), sha256, "nvidia-pickle", "test model", "test")


def test_fetch_with_matching_checksum(tmp_path, server):
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    registry = {"m": _entry("m", [f"{server}/model.pkl"], sha)}
    seen = []
    path = reg.fetch("m", progress=lambda done, total: seen.append((done, total)), directory=tmp_path,
                     registry=registry)
    assert path == tmp_path / "m.pkl" and path.read_bytes() == PAYLOAD
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pkl"]         # no temp file left
    status = reg.list_models(tmp_path, registry)
    assert status[0].present and status[0].size == len(PAYLOAD)


def test_fetch_checksum_mismatch_leaves_nothing(tmp_path, server):
    registry = {"m": _entry("m", [f"{server}/model.pkl"], "0" * 64)}
    with pytest.raises(reg.ModelError, match="checksum mismatch.*discarded"):
        reg.fetch("m", directory=tmp_path, registry=registry)
    assert list(tmp_path.iterdir()) == []


def test_fetch_without_published_checksum_reports_the_digest(tmp_path, server):
    registry = {"m": _entry("m", [f"{server}/model.pkl"], None)}
    logs = []
    reg.fetch("m", directory=tmp_path, registry=registry, log=logs.append)
    assert hashlib.sha256(PAYLOAD).hexdigest() in logs[0]


def test_fetch_incomplete_download_leaves_nothing(tmp_path, server):
    registry = {"m": _entry("m", [f"{server}/short.pkl"], None)}
    with pytest.raises(reg.ModelError, match="incomplete download|stopped at"):
        reg.fetch("m", directory=tmp_path, registry=registry, timeout=2)
    assert list(tmp_path.iterdir()) == []


def test_fetch_falls_back_to_the_next_mirror(tmp_path, server):
    registry = {"m": _entry("m", [f"{server}/missing.pkl", f"{server}/model.pkl"], None)}
    assert reg.fetch("m", directory=tmp_path, registry=registry).read_bytes() == PAYLOAD


def test_fetch_unreachable_fails_fast_and_clearly(tmp_path):
    registry = {"m": _entry("m", [f"http://127.0.0.1:{_closed_port()}/model.pkl"], None)}
    t0 = time.monotonic()
    with pytest.raises(reg.ModelError, match="could not download m: .*connection refused.*Check the network"):
        reg.fetch("m", directory=tmp_path, registry=registry, timeout=2)
    assert time.monotonic() - t0 < 5
    assert list(tmp_path.iterdir()) == []


def test_fetch_unknown_name(tmp_path):
    with pytest.raises(reg.ModelError, match="unknown model 'nope'; known models: .*stylegan2-ffhq-512x512"):
        reg.fetch("nope", directory=tmp_path)


def test_registry_lists_the_draggan_zoo():
    names = set(reg.REGISTRY)
    assert {"stylegan2-ffhq-512x512", "stylegan2-afhqcat-512x512", "stylegan2-car-config-f",
            "stylegan2-cat-config-f", "stylegan2_lions_512_pytorch", "stylegan2_dogs_1024_pytorch",
            "stylegan2_horses_256_pytorch", "stylegan2_elephants_512_pytorch"} <= names
    for e in reg.REGISTRY.values():
        assert e.urls and all(u.startswith(("http://", "https://")) for u in e.urls)
        assert e.sha256 is None or len(e.sha256) == 64


def test_cache_dir_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DRAGD_CACHE", str(tmp_path / "c"))
    assert reg.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("DRAGD_CACHE")
    assert reg.cache_dir().parts[-3:] == (".cache", "dragd", "models")


def test_resolve_model(tmp_path):
    registry = {"m": _entry("m", ["http://127.0.0.1:1/x"], None)}
    f = tmp_path / "some.pkl"
    f.write_bytes(b"x")
    assert reg.resolve_model(str(f), directory=tmp_path, registry=registry) == f
    with pytest.raises(reg.ModelError, match="not downloaded yet; run `dragd models fetch m`"):
        reg.resolve_model("m", directory=tmp_path, registry=registry)
    (tmp_path / "m.pkl").write_bytes(b"y")
    assert reg.resolve_model("m", directory=tmp_path, registry=registry) == tmp_path / "m.pkl"
    with pytest.raises(reg.ModelError, match="does not exist"):
        reg.resolve_model(str(tmp_path / "gone.pkl"), directory=tmp_path, registry=registry)
    with pytest.raises(reg.ModelError, match="neither a checkpoint file nor a known model name"):
        reg.resolve_model("ffhq", directory=tmp_path, registry=registry)
    with pytest.raises(reg.ModelError, match="embedded default model is missing"):
        reg.resolve_model("default", default_path=tmp_path / "default.safetensors")
    (tmp_path / "default.safetensors").write_bytes(b"z")
    assert reg.resolve_model("default", default_path=tmp_path / "default.safetensors").name == "default.safetensors"


def test_resolve_model_for_the_daemon_stays_in_its_folders(tmp_path):
    registry = {"m": _entry("m", ["http://127.0.0.1:1/x"], None)}
    cache, allowed, elsewhere = (tmp_path / d for d in ("cache", "allowed", "elsewhere"))
    for d in (cache, allowed, elsewhere):
        d.mkdir()
        (d / "net.pkl").write_bytes(b"x")
    (cache / "m.pkl").write_bytes(b"y")
    (allowed / "link.pkl").symlink_to(elsewhere / "net.pkl")
    kw = dict(directory=cache, registry=registry, allowed=[allowed, elsewhere / "only.pkl"])
    assert reg.resolve_model("m", **kw) == cache / "m.pkl"
    assert reg.resolve_model(str(cache / "net.pkl"), **kw) == cache / "net.pkl"
    assert reg.resolve_model(str(allowed / "net.pkl"), **kw) == allowed / "net.pkl"
    for outside in (elsewhere / "net.pkl", allowed / ".." / "elsewhere" / "net.pkl", allowed / "link.pkl",
                    "/etc/passwd", elsewhere / "gone.pkl"):
        with pytest.raises(reg.ModelError, match=r"not in the daemon's model folders.*--allow-model"):
            reg.resolve_model(str(outside), **kw)
    # the CLI (no `allowed`) keeps taking any local file
    assert reg.resolve_model(str(elsewhere / "net.pkl"), directory=cache, registry=registry) == elsewhere / "net.pkl"


def test_models_list_cli(tmp_path, monkeypatch, capsys):
    from dragd.daemon import cli

    monkeypatch.setenv("DRAGD_CACHE", str(tmp_path))
    (tmp_path / "stylegan2-ffhq-512x512.pkl").write_bytes(b"x" * 2048)
    assert cli.main(["models", "list"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if "stylegan2-ffhq-512x512" in l)
    assert "present" in line
    assert "stylegan2-car-config-f" in out and "default" in out


def test_models_fetch_cli_unreachable(tmp_path, monkeypatch, capsys):
    from dragd.daemon import cli

    monkeypatch.setenv("DRAGD_CACHE", str(tmp_path))
    port = _closed_port()
    monkeypatch.setitem(reg.REGISTRY, "stylegan2-ffhq-512x512",
                        _entry("stylegan2-ffhq-512x512", [f"http://127.0.0.1:{port}/x.pkl"], None))
    assert cli.main(["models", "fetch", "stylegan2-ffhq-512x512", "--timeout", "2"]) == 2
    assert "could not download" in capsys.readouterr().err


def test_the_registry_knows_each_models_paper_drag_lr():
    """The paper's Adam lr: 2e-3 for FFHQ, AFHQ cats and LSUN cars, 1e-3 for the others; a
    model file that states its own drag_lr keeps it."""
    assert reg.known_metadata("stylegan2-ffhq-512x512") == {"align": "ffhq", "drag_lr": "0.002"}
    assert reg.known_metadata("x", "/m/stylegan2-car-config-f.pkl")["drag_lr"] == "0.002"
    assert reg.known_metadata("stylegan2_lions_512_pytorch")["drag_lr"] == "0.001"
    assert reg.known_metadata("/somewhere/mine.pkl") == {}


def test_a_converted_registry_pickle_keeps_the_papers_drag_lr(tmp_path):
    import torch

    import nvidia_fixtures as nf
    from dragd.daemon.cli import main
    from dragd.daemon.model.checkpoints import load_checkpoint
    from dragd.daemon.model.stylegan2 import Generator

    torch.manual_seed(0)
    G = Generator(resolution=16, z_dim=8, w_dim=8, channel_base=256, channel_max=16, mapping_layers=2).eval()
    for name, lr in (("stylegan2_lions_512_pytorch.pkl", 1e-3), ("stylegan2-afhqcat-512x512.pkl", 2e-3),
                     ("mine.pkl", None)):
        src = tmp_path / name
        src.write_bytes(nf.network_pickle_bytes(G, None))
        out = tmp_path / (name + ".safetensors")
        assert main(["models", "convert", str(src), str(out)]) == 0
        assert load_checkpoint(out).drag_lr == lr, name
