"""Checkpoint loaders: NVIDIA pickles (PyTorch and TensorFlow), rosinality, native safetensors,
refusal of code-running pickles, and one clear error per kind of bad file."""
from __future__ import annotations

import argparse
import dataclasses
import io
import pickle
import zipfile

import pytest
import torch

import nvidia_fixtures as nf
from dragd.daemon.model.checkpoints import CheckpointError, load_checkpoint, save_native, sniff_format
from dragd.daemon.model.stylegan2 import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            scale = 0.3 if name.endswith(("bias", "noise_strength", "w_avg")) else 1.0
            t.copy_(torch.randn(t.shape, generator=gen) * scale)
    return module.eval()


def _make_G(**over) -> Generator:
    cfg = dict(resolution=16, z_dim=16, w_dim=16, channel_base=128, channel_max=16, mapping_layers=2)
    cfg.update(over)
    return _randomize(Generator(GeneratorConfig(**cfg)), 1)


def _make_D(**over) -> Discriminator:
    cfg = dict(resolution=16, channel_base=128, channel_max=16)
    cfg.update(over)
    return _randomize(Discriminator(DiscriminatorConfig(**cfg)), 2)


@pytest.fixture(scope="module")
def G():
    return _make_G()


@pytest.fixture(scope="module")
def D():
    return _make_D()


def _same_state(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _images(G: Generator, seed: int = 0, n: int = 2) -> torch.Tensor:
    z = torch.randn([n, G.cfg.z_dim], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return G(z, truncation_psi=0.7, noise_mode="const")


def _write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


# ---------------------------------------------------------------------------------------------
# NVIDIA PyTorch network pickles


@pytest.mark.parametrize("variant,protocol", [("ada", 3), ("ada", 4), ("sg3repo", 4)])
def test_nvidia_pickle_reproduces_state_and_images(tmp_path, G, D, variant, protocol):
    p = _write(tmp_path, "net.pkl", nf.network_pickle_bytes(G, D, variant=variant, protocol=protocol))
    m = load_checkpoint(p)
    assert m.info["format"] == "nvidia-pickle" and m.info["network"] == "G_ema"
    assert m.info["code"].startswith("stylegan2-ada" if variant == "ada" else "stylegan3-repo")
    # w_avg_beta (training only) is the embedded code's default: 0.995 (ADA) or 0.998 (StyleGAN3 repo)
    assert m.G.cfg == dataclasses.replace(G.cfg, w_avg_beta=0.995 if variant == "ada" else 0.998)
    _same_state(m.G, G)
    _same_state(m.D, D)
    assert not any(p.requires_grad for p in m.G.parameters()) and not m.G.training
    assert torch.equal(_images(m.G), _images(G))
    img = _images(G, n=4)
    with torch.no_grad():
        assert torch.equal(m.D(img), D(img))


def test_stylegan3_repo_defaults_come_from_embedded_code(tmp_path):
    """networks_stylegan2.py defaults conv_clamp to 256 in SynthesisBlock: a pickle that leaves it
    out must get 256, and num_fp16_res its default 4 (the ADA code's defaults are None and 0)."""
    G256 = _make_G(conv_clamp=256.0, num_fp16_res=4)
    rec = nf.nvidia_generator(G256, variant="sg3repo")
    assert "conv_clamp" not in rec.args[0]["state"]["_init_kwargs"]
    m = load_checkpoint(_write(tmp_path, "g.pkl", nf.network_pickle_bytes(G256, variant="sg3repo")))
    assert m.G.cfg.conv_clamp == 256 and m.G.cfg.num_fp16_res == 4
    assert m.D is None
    # The same kwargs under the ADA code (no conv_clamp given) mean no clamping at all.
    G_none = _make_G(conv_clamp=None)
    m2 = load_checkpoint(_write(tmp_path, "g2.pkl", nf.network_pickle_bytes(G_none, variant="ada")))
    assert m2.G.cfg.conv_clamp is None


def test_clamped_generator_round_trip(tmp_path, D):
    Gc = _make_G(conv_clamp=0.5, layer_features=24, mapping_layers=3)
    m = load_checkpoint(_write(tmp_path, "c.pkl", nf.network_pickle_bytes(Gc, D, protocol=3)))
    assert m.G.cfg.conv_clamp == 0.5 and m.G.cfg.layer_features == 24
    assert torch.equal(_images(m.G), _images(Gc))


def test_pickle_with_only_G_warns(tmp_path, G):
    data = nf.dumps({"G": nf.nvidia_generator(G), "D": None, "augment_pipe": None, "training_set_kwargs": None})
    m = load_checkpoint(_write(tmp_path, "only_g.pkl", data))
    assert m.info["network"] == "G" and any("G_ema" in w for w in m.info["warnings"])
    _same_state(m.G, G)


def test_format_is_sniffed_from_content_not_extension(tmp_path, G):
    p = _write(tmp_path, "misnamed.safetensors", nf.network_pickle_bytes(G))
    assert sniff_format(p) == "pickle"
    _same_state(load_checkpoint(p).G, G)


def test_unusable_discriminator_is_dropped_with_a_warning(tmp_path, G, D):
    d_rec = nf.nvidia_discriminator(D)
    d_rec.args[0]["state"]["_init_kwargs"]["architecture"] = "skip"
    data = nf.dumps({"G": None, "D": d_rec, "G_ema": nf.nvidia_generator(G), "augment_pipe": None,
                     "training_set_kwargs": None})
    m = load_checkpoint(_write(tmp_path, "dskip.pkl", data))
    assert m.D is None and any("'skip'" in w for w in m.info["warnings"])


def test_conditional_and_unsupported_architectures_are_clear_errors(tmp_path, G):
    rec = nf.nvidia_generator(G)
    rec.args[0]["state"]["_init_kwargs"]["c_dim"] = 10
    with pytest.raises(CheckpointError, match=r"conditional models \(c_dim=10\) are not supported"):
        load_checkpoint(_write(tmp_path, "cond.pkl", nf.dumps({"G_ema": rec})))
    rec = nf.nvidia_generator(G)
    rec.args[0]["state"]["_init_kwargs"]["synthesis_kwargs"]["architecture"] = "resnet"
    with pytest.raises(CheckpointError, match="architecture 'resnet' is not supported"):
        load_checkpoint(_write(tmp_path, "resnet.pkl", nf.dumps({"G_ema": rec})))


def test_weights_not_matching_the_layout_are_named(tmp_path, G):
    rec = nf.nvidia_generator(G)
    rec.args[0]["state"]["_modules"]["mapping"].args[0]["state"]["_parameters"]["extra"] = nf.parameter(torch.ones(3))
    with pytest.raises(CheckpointError, match=r"unexpected 1 \(e\.g\. mapping\.extra\)"):
        load_checkpoint(_write(tmp_path, "extra.pkl", nf.dumps({"G_ema": rec})))


def test_stylegan3_pickle_is_a_clear_not_supported_error(tmp_path):
    p = _write(tmp_path, "sg3.pkl", nf.stylegan3_pickle_bytes())
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(p)
    msg = str(err.value)
    assert "StyleGAN3 pickle (training.networks_stylegan3.Generator)" in msg
    assert "not supported yet" in msg and "rosinality .pt" in msg


# ---------------------------------------------------------------------------------------------
# Original TensorFlow pickles


def test_tensorflow_pickle_is_converted(tmp_path, G):
    Dt = _make_D(mbstd_group_size=2)
    p = _write(tmp_path, "stylegan2-tf.pkl", nf.tf_pickle_bytes(G, Dt))
    m = load_checkpoint(p)
    assert m.info["format"] == "nvidia-tf-pickle"
    # TF stores the style bias minus 1 (legacy.py adds it back): equal up to that rounding
    ref, got = G.state_dict(), m.G.state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        if k.endswith("affine.bias"):
            assert torch.allclose(ref[k], got[k], atol=1e-6, rtol=0), k
        else:
            assert torch.equal(ref[k], got[k]), k
    _same_state(m.D, Dt)
    assert m.D.cfg.mbstd_group_size == 2
    assert (_images(m.G) - _images(G)).abs().max() < 1e-5


# ---------------------------------------------------------------------------------------------
# Hostile pickles: refused, and nothing runs


def _assert_refused(path, marker, match):
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)
    assert not marker.exists(), "the payload ran"


def test_control_payload_really_runs_under_plain_pickle(tmp_path):
    """The payloads below are live: plain pickle would run them (here: a harmless touch)."""
    marker = tmp_path / "control"
    pickle.loads(nf.dumps({"G_ema": nf.os_system(f"touch {marker}")}))
    assert marker.exists()


def test_top_level_command_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    p = _write(tmp_path, "evil.pkl", nf.dumps(nf.os_system(f"touch {marker}")))
    _assert_refused(p, marker, r"refused global os\.system")


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_command_hidden_in_nested_objects_is_refused(tmp_path, G, protocol):
    marker = tmp_path / "pwned"
    rec = nf.nvidia_generator(G)
    # deep inside the module tree: an attribute of the mapping network's first layer
    fc0 = rec.args[0]["state"]["_modules"]["mapping"].args[0]["state"]["_modules"]["fc0"]
    fc0.args[0]["state"]["lr_multiplier"] = {"x": [nf.posix_system(f"touch {marker}")]}
    p = _write(tmp_path, "evil.pkl", nf.network_pickle_bytes(G, G_record=rec, protocol=protocol))
    _assert_refused(p, marker, r"refused global posix\.system")
    p2 = _write(tmp_path, "evil2.pkl", nf.network_pickle_bytes(
        G, extra={"training_set_kwargs": {"path": nf.builtins_exec(f"open('{marker}', 'w')")}}))
    _assert_refused(p2, marker, r"refused global builtins\.exec")


def test_command_hidden_in_legacy_tensor_bytes_is_refused(tmp_path, G):
    marker = tmp_path / "pwned"
    rec = nf.nvidia_generator(G)
    bad = nf.Reduce(nf.GlobalRef("torch._utils", "_rebuild_tensor_v2"),
                    (nf.storage_bytes_with(nf.os_system(f"touch {marker}")), 0, (4,), (1,), False, {}))
    rec.args[0]["state"]["_modules"]["mapping"].args[0]["state"]["_buffers"]["w_avg"] = bad
    p = _write(tmp_path, "evil.pkl", nf.network_pickle_bytes(G, G_record=rec))
    _assert_refused(p, marker, r"refused global os\.system inside legacy tensor bytes")


def test_embedded_module_source_is_never_executed(tmp_path, G):
    """A persistent object's module_src is Python that plain unpickling would exec: we only parse it."""
    marker = tmp_path / "pwned"
    src = f"import os\nos.system('touch {marker}')\n" + nf.ADA_MODULE_SRC
    rec = nf.nvidia_generator(G, module_src=src)
    m = load_checkpoint(_write(tmp_path, "src.pkl", nf.network_pickle_bytes(G, G_record=rec)))
    assert not marker.exists()
    _same_state(m.G, G)
    # Code hidden in a default value is not literal: it is neither run nor used.
    src2 = nf.ADA_MODULE_SRC.replace("w_avg_beta=0.995", f"w_avg_beta=__import__('os').system('touch {marker}')")
    m2 = load_checkpoint(_write(tmp_path, "src2.pkl", nf.network_pickle_bytes(
        G, G_record=nf.nvidia_generator(G, module_src=src2))))
    assert not marker.exists() and m2.G.cfg.w_avg_beta == 0.995


def test_persistent_record_with_only_code_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "pwned"
    state = nf.module_state({}, {}, {}, {}, (), {})
    rec = nf.persistent("Generator", f"import os\nos.system('touch {marker}')\n", state)
    _assert_refused(_write(tmp_path, "code.pkl", nf.dumps({"G_ema": rec})), marker,
                    "unrecognised network code")


def test_tensorflow_build_code_is_never_executed(tmp_path, G, D):
    marker = tmp_path / "pwned"
    src = f"import os\nos.system('touch {marker}')\ndef G_main(*a, **k):\n    pass\n"
    m = load_checkpoint(_write(tmp_path, "tf.pkl", nf.tf_pickle_bytes(G, D, build_module_src=src)))
    assert not marker.exists() and m.info["format"] == "nvidia-tf-pickle"


def test_other_reconstructors_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    for module, name in [("subprocess", "Popen"), ("builtins", "eval"), ("torch", "load"),
                         ("copyreg", "_reconstructor"), ("numpy", "load"), ("torch_utils.persistence", "_src_to_module")]:
        payload = nf.Reduce(nf.GlobalRef(module, name), (f"touch {marker}",))
        p = _write(tmp_path, "evil.pkl", nf.dumps({"G_ema": payload}))
        _assert_refused(p, marker, rf"refused global {module}\.{name}")


def test_malformed_tensor_geometry_is_refused(tmp_path, G):
    rec = nf.nvidia_generator(G)
    storage = nf.Reduce(nf.GlobalRef("torch.storage", "_load_from_bytes"), (nf.legacy_storage_bytes(torch.zeros(4)),))
    bad = nf.Reduce(nf.GlobalRef("torch._utils", "_rebuild_tensor_v2"), (storage, 2, (16,), (1,), False, {}))
    rec.args[0]["state"]["_modules"]["mapping"].args[0]["state"]["_buffers"]["w_avg"] = bad
    with pytest.raises(CheckpointError, match="tensor geometry exceeds its storage"):
        load_checkpoint(_write(tmp_path, "geom.pkl", nf.network_pickle_bytes(G, G_record=rec)))


# ---------------------------------------------------------------------------------------------
# Bad files: one clear error each


def test_empty_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"is empty \(0 bytes\)"):
        load_checkpoint(_write(tmp_path, "empty.pkl", b""))


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pkl")


def test_truncated_network_pickle(tmp_path, G):
    data = nf.network_pickle_bytes(G)
    for cut in (len(data) // 3, len(data) - 1):
        with pytest.raises(CheckpointError, match="is truncated"):
            load_checkpoint(_write(tmp_path, "cut.pkl", data[:cut]))


def test_truncated_rosinality_zip(tmp_path, G):
    buf = io.BytesIO()
    torch.save(nf.rosinality_training_checkpoint(G), buf)
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(_write(tmp_path, "cut.pt", buf.getvalue()[: len(buf.getvalue()) // 2]))


def test_truncated_safetensors(tmp_path, G):
    p = tmp_path / "full.safetensors"
    save_native(p, G)
    data = p.read_bytes()
    for cut in (len(data) - 100, 20):
        with pytest.raises(CheckpointError, match="truncated"):
            load_checkpoint(_write(tmp_path, "cut.safetensors", data[:cut]))


def test_wrong_formats(tmp_path):
    cases = {
        "image.pkl": (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "is a PNG image, not a model"),
        "page.pkl": (b"<!DOCTYPE html><html><body>403 Forbidden</body></html>", "is an HTML page"),
        "notes.pt": (b"just some text that is not a model\n" * 3, "unknown format"),
    }
    for name, (data, match) in cases.items():
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint(_write(tmp_path, name, data))


def test_zip_that_is_not_a_torch_file(tmp_path):
    p = tmp_path / "archive.pt"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="zip archive but not a torch.save file"):
        load_checkpoint(p)


def test_torch_save_of_something_else(tmp_path):
    p = tmp_path / "other.pt"
    torch.save({"model": {"w": torch.zeros(3)}, "epoch": 3}, p)
    with pytest.raises(CheckpointError, match=r"not a rosinality StyleGAN2 checkpoint \(no 'g_ema'"):
        load_checkpoint(p)


def test_torch_save_with_code_is_refused(tmp_path):
    p = tmp_path / "code.pt"
    torch.save({"g_ema": {}, "fn": _Evil()}, p)
    with pytest.raises(CheckpointError, match="was refused"):
        load_checkpoint(p)


class _Evil:
    def __reduce__(self):
        return (print, ("this would run under torch.load(weights_only=False)",))


def test_plain_pickle_of_other_data(tmp_path):
    with pytest.raises(CheckpointError, match="not a StyleGAN network pickle"):
        load_checkpoint(_write(tmp_path, "list.pkl", pickle.dumps([1, 2, 3], protocol=4)))


# ---------------------------------------------------------------------------------------------
# rosinality


@pytest.mark.parametrize("legacy_zip", [False, True])
def test_rosinality_training_checkpoint(tmp_path, legacy_zip):
    Gr = _make_G(channel_base=128, channel_max=16)
    Dr = _make_D()
    p = tmp_path / "rosinality.pt"
    torch.save(nf.rosinality_training_checkpoint(Gr, Dr), p, _use_new_zipfile_serialization=not legacy_zip)
    m = load_checkpoint(p)
    assert m.info["format"] == "rosinality" and m.info["training_args"]["size"] == 16
    assert m.G.cfg.mapping_layers == 2 and m.G.cfg.w_dim == 16 and m.G.cfg.resolution == 16
    _same_state(m.G, Gr)
    _same_state(m.D, Dr)
    assert torch.equal(_images(m.G), _images(Gr))


def test_rosinality_g_ema_only_without_latent_avg(tmp_path, G):
    g, _ = nf.rosinality_state_dicts(G)
    p = tmp_path / "g.pt"
    torch.save({"g_ema": g}, p)
    m = load_checkpoint(p)
    assert m.D is None and any("latent_avg" in w for w in m.info["warnings"])
    assert torch.equal(m.G.mapping.w_avg, torch.zeros(16))
    ref = {k: v for k, v in G.state_dict().items() if k != "mapping.w_avg"}
    got = {k: v for k, v in m.G.state_dict().items() if k != "mapping.w_avg"}
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_rosinality_standard_channel_layout_is_inferred(tmp_path):
    """rosinality's channel table (512 up to 32 px, then 256·cm at 64 …) = base 16384·cm, max 512."""
    for cm in (1, 2):
        cfg = GeneratorConfig(resolution=128, z_dim=8, w_dim=8, channel_base=16384 * cm, channel_max=512,
                              mapping_layers=1)
        g, _ = nf.rosinality_state_dicts(Generator(cfg))
        from dragd.daemon.model.checkpoints import rosinality_generator_config
        got = rosinality_generator_config(g)
        assert (got.channel_base, got.channel_max) == (16384 * cm, 512)


# ---------------------------------------------------------------------------------------------
# Native safetensors


def test_native_round_trip_fp32_is_exact(tmp_path, G, D):
    p = tmp_path / "m.safetensors"
    save_native(p, G, D, info={"source": "test", "kimg": 1.5, "placeholder": "true"}, dtype=torch.float32)
    m = load_checkpoint(p)
    _same_state(m.G, G)
    _same_state(m.D, D)
    assert m.info["format"] == "dragd" and m.info["source"] == "test" and m.info["kimg"] == "1.5"
    assert m.info["dtype"] == "float32" and m.info["placeholder"] == "true"


def test_native_round_trip_fp16(tmp_path, G):
    p = tmp_path / "m16.safetensors"
    save_native(p, G)
    m = load_checkpoint(p)
    assert m.D is None and m.info["dtype"] == "float16"
    for k, v in G.state_dict().items():
        assert m.G.state_dict()[k].dtype == torch.float32
        assert torch.equal(m.G.state_dict()[k], v.half().float()), k
    assert (_images(m.G) - _images(G)).abs().max() < 0.05


def test_safetensors_that_is_not_dragd(tmp_path):
    from safetensors.torch import save_file
    p = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(p), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a dragd model"):
        load_checkpoint(p)


def test_native_newer_format_version(tmp_path, G):
    from safetensors.torch import save_file
    p = tmp_path / "v2.safetensors"
    save_file({"G.x": torch.zeros(1)}, str(p), metadata={"format": "dragd", "format_version": "2",
                                                         "generator_config": G.cfg.to_json()})
    with pytest.raises(CheckpointError, match="format version '2'.*update dragd"):
        load_checkpoint(p)


# ---------------------------------------------------------------------------------------------
# `dragd models convert`


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_models_convert_cli(tmp_path, G, D, dtype):
    from dragd.daemon import cli

    src = _write(tmp_path, "in.pkl", nf.network_pickle_bytes(G, D))
    out = tmp_path / "out" / "model.safetensors"
    assert cli.main(["models", "convert", str(src), str(out), "--dtype", dtype]) == 0
    m = load_checkpoint(out)
    assert m.info["source_format"] == "nvidia-pickle" and m.D is not None
    if dtype == "float32":
        _same_state(m.G, G)
        assert torch.equal(_images(m.G), _images(G))
    else:
        assert (_images(m.G) - _images(G)).abs().max() < 0.05


def test_models_convert_cli_reports_bad_input(tmp_path, capsys):
    from dragd.daemon import cli

    src = _write(tmp_path, "bad.pkl", b"\x89PNG\r\n\x1a\n0000")
    assert cli.main(["models", "convert", str(src), str(tmp_path / "o.safetensors")]) == 2
    assert "PNG image" in capsys.readouterr().err


def test_models_parser_hooks_into_a_cli():
    from dragd.daemon.cli import models as cli_models

    ap = argparse.ArgumentParser()
    cli_models.add_parser(ap.add_subparsers(dest="command"))
    args = ap.parse_args(["models", "convert", "a.pkl", "b.safetensors", "--no-d"])
    assert args.handler is cli_models.cmd_convert and args.no_d


def test_corrupted_pickles_only_ever_raise_checkpoint_errors(tmp_path, G, D):
    """Random byte damage must end in a CheckpointError (or a clean load), nothing else."""
    import random

    data = bytearray(nf.network_pickle_bytes(G, D, protocol=4))
    rng = random.Random(0)
    p = tmp_path / "damaged.pkl"
    for _ in range(40):
        bad = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            bad[rng.randrange(2, len(bad))] = rng.randrange(256)
        p.write_bytes(bytes(bad))
        try:
            load_checkpoint(p)
        except CheckpointError:
            pass
