"""Loading models safely: the daemon opens only its own model folders and never quotes a file's
bytes back; hostile checkpoints (shared-reference bombs, inflating zips, wrong config values)
are refused with a CheckpointError instead of hanging, exhausting memory or raising a traceback."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from daemon_fixture import start_daemon
from dragd.protocol import Client, RemoteError


# ---------------------------------------------------------------------------------------------
# Item 9: load_model reaches only the daemon's model folders


def _refusal(endpoint: str, model: str) -> RemoteError:
    with Client(endpoint, timeout=30.0) as client:
        with pytest.raises(RemoteError) as info:
            client.load_model(model)
    return info.value


def _assert_names_the_rule(err: RemoteError):
    assert "not in the daemon's model folders" in err.message
    assert "--allow-model" in err.message


def test_load_model_of_a_system_file_is_refused_without_its_bytes(running_daemon):
    data = Path("/etc/passwd").read_bytes()
    err = _refusal(running_daemon.endpoint, "/etc/passwd")
    _assert_names_the_rule(err)
    reply = f"{err.code} {err.message} {err.details}"
    for chunk in (data[:8].hex(), data[:8].decode(errors="replace"), data[:16].hex()):
        assert chunk not in reply


def test_load_model_outside_the_folders_is_refused_and_allowed_with_allow_model(
        running_daemon, tiny_model_path, tmp_path):
    outside = tmp_path / "mine" / "other.safetensors"
    outside.parent.mkdir()
    shutil.copy(tiny_model_path, outside)
    _assert_names_the_rule(_refusal(running_daemon.endpoint, str(outside)))
    # a path that merely starts inside an allowed folder and climbs out is refused as well
    climbing = tiny_model_path.parent / ".." / outside.relative_to(tmp_path.parent)
    _assert_names_the_rule(_refusal(running_daemon.endpoint, str(climbing)))

    d = start_daemon(tiny_model_path, tmp_path / "daemon", extra_args=("--allow-model", str(outside.parent)))
    try:
        with Client(d.endpoint, timeout=60.0) as client:
            reply = client.load_model(str(outside))
        assert reply["resolution"] == 32
    finally:
        d.stop()
