"""Loading models safely: the daemon opens only its own model folders and never quotes a file's
bytes back; hostile checkpoints (shared-reference bombs, inflating zips, wrong config values)
are refused with a CheckpointError instead of hanging, exhausting memory or raising a traceback."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

import nvidia_fixtures as nf
from daemon_fixture import start_daemon
from dragd.daemon.model.stylegan2 import Generator, GeneratorConfig
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


# ---------------------------------------------------------------------------------------------
# Item 2: shared-reference bombs and inflating zips are refused, boundedly

_LOAD_LIMIT_S = 60
_LOAD_MEMORY = 4 << 30           # address space, torch's own mappings included

_LOADER = textwrap.dedent("""
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
    from dragd.daemon.model.checkpoints import CheckpointError, load_checkpoint
    try:
        load_checkpoint(sys.argv[1])
        out = {"kind": "loaded", "message": ""}
    except CheckpointError as exc:
        out = {"kind": "CheckpointError", "message": str(exc)}
    except BaseException as exc:
        out = {"kind": type(exc).__name__, "message": str(exc)[:300]}
    out["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
    print(json.dumps(out))
""")


def _load_in_a_cage(path: Path) -> dict:
    """Load in a child with a timeout and an address-space limit: on code without the bounds
    these files spin or eat memory, and must not take the machine with them."""
    try:
        r = subprocess.run([sys.executable, "-c", _LOADER, str(path), str(_LOAD_MEMORY)], capture_output=True,
                           text=True, timeout=_LOAD_LIMIT_S, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    except subprocess.TimeoutExpired:
        return {"kind": "timeout", "message": f"still loading after {_LOAD_LIMIT_S} s", "maxrss_mib": None}
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        return {"kind": f"exit {r.returncode}", "message": r.stderr[-300:], "maxrss_mib": None}
    return json.loads(lines[-1])


def _small_G() -> Generator:
    torch.manual_seed(0)
    return Generator(GeneratorConfig(resolution=16, z_dim=16, w_dim=16, channel_base=128, channel_max=16,
                                     mapping_layers=2)).eval()


def _refused(path: Path, match: str):
    out = _load_in_a_cage(path)
    assert out["kind"] == "CheckpointError" and match in out["message"], out
    assert out["maxrss_mib"] < 1024, out


def test_init_kwargs_dag_is_refused(tmp_path):
    G = _small_G()
    rec = nf.nvidia_generator(G)
    rec.args[0]["state"]["_init_kwargs"]["synthesis_kwargs"]["notes"] = nf.shared_list_dag(16, 12)
    p = tmp_path / "kwargs_dag.pkl"
    p.write_bytes(nf.dumps({"G_ema": rec}))
    assert p.stat().st_size < 128 << 10
    _refused(p, "init kwargs hold more than")


def test_module_tree_dag_is_refused(tmp_path):
    G = _small_G()
    rec = nf.nvidia_generator(G)
    rec.args[0]["state"]["_modules"]["extra"] = nf.module_dag(30)
    p = tmp_path / "module_dag.pkl"
    p.write_bytes(nf.dumps({"G_ema": rec}))
    _refused(p, "shared references")


def test_tensorflow_component_dag_is_refused(tmp_path):
    G = _small_G()
    p = tmp_path / "tf_dag.pkl"
    g, d, gs = nf.tf_network("G", {}, []), nf.tf_network("D", {}, []), nf.tf_network("Gs", {}, [])
    gs.state["components"]["bomb"] = nf.tf_component_dag(7, 14)
    gs.state["static_kwargs"] = nf.tf_static_kwargs_G(G)
    p.write_bytes(nf.dumps((g, d, gs)))
    _refused(p, "shared references")


def test_copies_of_one_storage_are_refused_within_the_budget(tmp_path):
    p = tmp_path / "clones.pkl"
    p.write_bytes(nf.dumps({"G_ema": nf.nvidia_generator(_small_G()), "bomb": nf.cloned_tensor_bomb(1 << 16, 60_000)}))
    assert p.stat().st_size < 2 << 20
    _refused(p, "billion laughs")


def test_self_hashing_tuple_keys_are_refused(tmp_path):
    key = ()
    for _ in range(60):
        key = (key, key)
    p = tmp_path / "hash.pkl"
    p.write_bytes(nf.dumps({"G_ema": nf.nvidia_generator(_small_G()), "bomb": nf.UnhashedDict([(key, 1)])}))
    _refused(p, "too large to be a key")


def test_zip_members_inflating_far_beyond_the_file_are_refused_before_inflating(tmp_path):
    p = tmp_path / "bomb.pt"
    g, _ = nf.rosinality_state_dicts(_small_G())
    torch.save({"g_ema": g}, p)
    with zipfile.ZipFile(p, "a", compression=zipfile.ZIP_DEFLATED) as z:
        folder = z.namelist()[0].split("/")[0]
        with z.open(f"{folder}/data/padding", "w", force_zip64=True) as member:
            zeros = bytes(1 << 20)
            for _ in range(256):
                member.write(zeros)
    assert p.stat().st_size < 2 << 20
    _refused(p, "would inflate")


# ---------------------------------------------------------------------------------------------
# Item 3 (part): an unusable --cache-dir is a sentence


@pytest.mark.parametrize("kind", ["file", "under_a_file", "read_only_fs"])
def test_serve_with_an_unusable_cache_dir_is_a_sentence(tmp_path, capsys, kind):
    from dragd.daemon import cli

    f = tmp_path / "a_file"
    f.write_text("x")
    cache = {"file": f, "under_a_file": f / "sub", "read_only_fs": Path("/proc/dragd-cache")}[kind]
    assert cli.main(["serve", "--bind", "tcp://127.0.0.1:1", "--device", "cpu", "--cache-dir", str(cache)]) == 2
    err = capsys.readouterr().err
    assert f"--cache-dir {cache}" in err and "Traceback" not in err
