"""Checkpoint configurations of the wrong type or range are CheckpointErrors naming the field.

A config comes from a file off the internet; before these checks `mapping_layers=2.0`,
`channel_max=-1` or `z_dim=0` failed deep in torch (TypeError, RuntimeError,
ZeroDivisionError) with a traceback instead of a sentence.
"""
from __future__ import annotations

import json

import pytest
import torch

import nvidia_fixtures as nf
from dragd.daemon.model.checkpoints import CheckpointError, load_checkpoint, save_native
from dragd.daemon.model.stylegan2 import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig

G_CFG = dict(resolution=16, z_dim=16, w_dim=16, channel_base=128, channel_max=16, mapping_layers=2)
D_CFG = dict(resolution=16, channel_base=128, channel_max=16)

#: (field, bad value) for every field: a wrong type, and values out of range.
BAD_G = [("resolution", 16.0), ("resolution", 0), ("resolution", 24), ("resolution", 4096), ("z_dim", 0),
         ("z_dim", 2.5), ("z_dim", "16"), ("w_dim", -3), ("w_dim", True), ("img_channels", 2),
         ("img_channels", 0), ("channel_base", 0), ("channel_base", 8), ("channel_max", -1),
         ("channel_max", 0), ("mapping_layers", 2.0), ("mapping_layers", 0), ("mapping_layers", 10**6),
         ("mapping_lr_multiplier", 0.0), ("mapping_lr_multiplier", float("nan")), ("layer_features", 0),
         ("conv_clamp", -1.0), ("conv_clamp", float("inf")), ("num_fp16_res", -1), ("w_avg_beta", 2.0),
         ("w_avg_beta", [0.9])]
BAD_D = [("resolution", 12), ("img_channels", 9), ("channel_base", -5), ("channel_max", 0),
         ("conv_clamp", 0.0), ("mbstd_group_size", 0), ("mbstd_num_channels", 0), ("num_fp16_res", 1.5)]


@pytest.mark.parametrize("field, value", BAD_G)
def test_generator_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        GeneratorConfig(**{**G_CFG, field: value})


@pytest.mark.parametrize("field, value", BAD_D)
def test_discriminator_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        DiscriminatorConfig(**{**D_CFG, field: value})


def test_numpy_scalars_become_plain_numbers():
    import numpy as np

    cfg = GeneratorConfig(**{**G_CFG, "z_dim": np.int64(16), "w_avg_beta": np.float32(0.99)})
    assert type(cfg.z_dim) is int and type(cfg.w_avg_beta) is float
    assert GeneratorConfig.from_json(cfg.to_json()) == cfg


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return Generator(GeneratorConfig(**G_CFG)).eval(), Discriminator(DiscriminatorConfig(**D_CFG)).eval()


@pytest.mark.parametrize("field, value", [f for f in BAD_G if isinstance(f[1], (int, float, str))
                                          and not isinstance(f[1], bool)])
def test_native_file_with_a_bad_config_is_refused(tmp_path, small, field, value):
    G, D = small
    path = tmp_path / "m.safetensors"
    save_native(path, G, D)
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    cfg = json.loads(header["__metadata__"]["generator_config"])
    cfg[field] = value
    header["__metadata__"]["generator_config"] = json.dumps(cfg)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + n:])
    with pytest.raises(CheckpointError, match=field):
        load_checkpoint(path)


@pytest.mark.parametrize("where, key, value", [
    ("mapping", "num_layers", 2.0), ("synthesis", "channel_max", -1), ("top", "z_dim", 0),
    ("synthesis", "channel_base", 0), ("mapping", "lr_multiplier", float("nan")), ("top", "w_dim", 2.5)])
def test_nvidia_pickle_with_a_bad_config_is_refused(tmp_path, small, where, key, value):
    G, _ = small
    cfg = G.cfg
    mapping = nf.easydict(num_layers=cfg.mapping_layers)
    synthesis = nf.easydict(channel_base=cfg.channel_base, channel_max=cfg.channel_max, num_fp16_res=0,
                            conv_clamp=None)
    kw = {"z_dim": cfg.z_dim, "w_dim": cfg.w_dim, "mapping_kwargs": mapping, "synthesis_kwargs": synthesis,
          "c_dim": 0, "img_resolution": cfg.resolution, "img_channels": cfg.img_channels}
    {"mapping": mapping, "synthesis": synthesis, "top": kw}[where][key] = value
    path = tmp_path / "bad.pkl"
    path.write_bytes(nf.network_pickle_bytes(G, None, G_record=nf.nvidia_generator(G, init_kwargs=kw)))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    name = {"num_layers": "mapping_layers", "lr_multiplier": "mapping_lr_multiplier"}.get(key, key)
    assert name in str(err.value) or key in str(err.value), err.value
