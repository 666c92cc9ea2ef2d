"""A real `dragd serve` process on 127.0.0.1 with a tiny generator built here.

Used by the end-to-end tests (CLI, GIMP, Krita): the daemon is the installed command, run
as a separate process, exactly as a user runs it. Fixtures are re-exported by conftest.py.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch


def build_tiny_model(path: Path, resolution: int = 32, seed: int = 0) -> Path:
    """A small random-weight generator (+ discriminator) saved in our native format."""
    from dragd.daemon.model.checkpoints import save_native
    from dragd.daemon.model.stylegan2 import Discriminator, Generator

    torch.manual_seed(seed)
    G = Generator(resolution=resolution, z_dim=32, w_dim=32, channel_base=16 * resolution,
                  channel_max=64, mapping_layers=2).eval()
    for name, p in G.named_parameters():          # a little noise makes texture to track
        if name.endswith("noise_strength"):
            p.data.fill_(0.1)
    D = Discriminator(resolution=resolution, channel_base=16 * resolution, channel_max=64).eval()
    save_native(path, G, D, info={"source": "tests/daemon_fixture.py", "placeholder": "true"},
                dtype=torch.float32)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_endpoint() -> str:
    """A loopback endpoint nothing listens on (yet)."""
    return f"tcp://127.0.0.1:{free_port()}"


@dataclass
class DaemonProcess:
    endpoint: str
    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start_daemon(model: Path, workdir: Path, port: int | None = None, timeout: float = 90.0,
                 extra_args: tuple[str, ...] = ()) -> DaemonProcess:
    """Start `dragd serve` and wait until it answers hello (or fail with its log)."""
    from dragd.protocol.client import Client, DaemonUnavailable

    port = port or free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"daemon-{port}.log"
    env = dict(os.environ, DRAGD_CACHE=str(workdir / "models"), OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "dragd.daemon.cli", "serve", "--bind", endpoint, "--model", str(model),
           "--device", "cpu", "--cache-dir", str(workdir / "inversions"), *extra_args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    d = DaemonProcess(endpoint, proc, log_path)
    deadline = time.monotonic() + timeout
    with Client(endpoint, timeout=2.0) as client:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"dragd serve exited with {proc.returncode}:\n{d.log()}")
            try:
                client.hello()
                return d
            except DaemonUnavailable:
                if time.monotonic() > deadline:
                    d.stop()
                    raise RuntimeError(f"dragd serve did not answer within {timeout:.0f} s:\n{d.log()}")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny32.safetensors")


@pytest.fixture(scope="session")
def running_daemon(tiny_model_path, tmp_path_factory):
    """A `dragd serve` process shared by the session's end-to-end tests."""
    d = start_daemon(tiny_model_path, tmp_path_factory.mktemp("daemon"))
    yield d
    d.stop()
