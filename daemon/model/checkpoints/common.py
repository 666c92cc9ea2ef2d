"""What every checkpoint reader shares: the error, the loaded-model record, and building
our modules strictly from a state dict (refusing a config that asks for more weights than the
file holds, before anything is allocated)."""
from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass, field

import numpy as np
import torch

from ..stylegan2 import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig


SUPPORTED = ("StyleGAN2 / StyleGAN2-ADA network pickles (PyTorch or the original TensorFlow ones), "
             "rosinality .pt, dragd .safetensors")

class CheckpointError(Exception):
    """A checkpoint could not be loaded; the message says why and what to do."""

@dataclass
class LoadedModel:
    G: Generator                          # eval mode, requires_grad False
    D: Discriminator | None               # None when the checkpoint has none (or it is unusable)
    info: dict = field(default_factory=dict)   # format, name, path, source facts, warnings

    @property
    def drag_lr(self) -> float | None:
        """The model's own default drag learning rate (metadata 'drag_lr'), if it has one."""
        try:
            lr = float(self.info["drag_lr"])
        except (KeyError, TypeError, ValueError):
            return None
        return lr if 0 < lr < 1 else None

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)

_FILTER_TAPS = [1, 3, 3, 1]

#: Init kwargs are a few dozen values; a tree far larger is shared references multiplying.
_MAX_KWARGS_NODES = 10_000

#: Longest module, parameter or variable name we accept (keys are joined along the tree).
MAX_NAME_CHARS = 200

_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 2, 60, 60
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 4

def _short(value) -> str:
    """repr of a value read from a checkpoint, bounded (it may be huge, or a shared-reference DAG)."""
    return _SHORT.repr(value)

def _plain(obj, depth=0, budget=None):
    """EasyDict → dict, recursively (init kwargs), visiting at most _MAX_KWARGS_NODES values."""
    budget = [_MAX_KWARGS_NODES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0:
        raise CheckpointError(f"init kwargs hold more than {_MAX_KWARGS_NODES} values (shared references "
                              "repeated over and over?)")
    if depth > 20:
        raise CheckpointError("init kwargs nested too deeply")
    if isinstance(obj, dict):
        return {k: _plain(v, depth + 1, budget) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v, depth + 1, budget) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj

def _filter_taps_ok(taps) -> bool:
    # only a short flat list is worth converting: numpy would expand a nested DAG in full
    if not (isinstance(taps, (list, tuple)) and len(taps) <= 8
            and all(isinstance(v, (int, float)) for v in taps)):
        return False
    try:
        return list(np.asarray(taps, dtype=np.float64).ravel()) == _FILTER_TAPS and np.asarray(taps).ndim == 1
    except (TypeError, ValueError):
        return False

def _require(cond: bool, msg: str):
    if not cond:
        raise CheckpointError(msg)

def expected_numel(cfg: GeneratorConfig | DiscriminatorConfig) -> int:
    """Number of elements in the state dict of Generator(cfg) / Discriminator(cfg), computed
    without building anything (a hostile config must not make us allocate gigabytes)."""
    if isinstance(cfg, GeneratorConfig):
        hidden = cfg.layer_features or cfg.w_dim
        feats = [cfg.z_dim] + [hidden] * (cfg.mapping_layers - 1) + [cfg.w_dim]
        n = sum(a * b + b for a, b in zip(feats, feats[1:])) + cfg.w_dim            # fc layers, w_avg
        modconv = lambda i, o, k, res: o * i * k * k + cfg.w_dim * i + i + o + (res * res + 1 if k == 3 else 0)  # noqa: E731
        for k in range(1, cfg.num_blocks + 1):
            res = 2 ** (k + 1)
            c = cfg.channels(res)
            if res == 4:
                n += c * 16
            else:
                n += modconv(cfg.channels(res // 2), c, 3, res)
            n += modconv(c, c, 3, res) + modconv(c, cfg.img_channels, 1, res)
        return n
    n = 0
    top = cfg.resolution
    n += cfg.img_channels * cfg.channels(top) + cfg.channels(top)                  # fromrgb
    for log2 in range(int(math.log2(top)), 2, -1):
        res = 2 ** log2
        t, o = cfg.channels(res), cfg.channels(res // 2)
        n += t * t * 9 + t + o * t * 9 + o + o * t
    c4 = cfg.channels(4)
    return n + (c4 + cfg.mbstd_num_channels) * c4 * 9 + c4 + c4 * 16 * c4 + c4 + c4 + 1

def _build(cls, cfg, sd: dict, what: str):
    """cls(cfg) loaded strictly from sd; a config asking for more weights than sd holds is
    refused before anything is allocated."""
    have = sum(v.numel() for v in sd.values())
    need = expected_numel(cfg)
    if need > have:
        raise CheckpointError(f"{what}: the configuration needs {need} weights but the file holds {have}")
    module = cls(cfg)
    _check_layout(module, sd, what)
    module.load_state_dict({k: v.to(torch.float32).contiguous() for k, v in sd.items()}, strict=True, assign=True)
    return module

def _check_layout(module: torch.nn.Module, sd: dict, what: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {', '.join(unexpected[:4])})")
        raise CheckpointError(f"{what}: weights do not match the StyleGAN2 layout: {'; '.join(parts)}")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"{what}: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
        if not v.is_floating_point():
            raise CheckpointError(f"{what}: {k} is not a floating-point tensor ({v.dtype})")

def _finish(module: torch.nn.Module | None):
    if module is not None:
        module.eval().requires_grad_(False)
    return module
