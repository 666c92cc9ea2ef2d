"""rosinality/stylegan2-pytorch ``.pt`` checkpoints, read with ``torch.load(weights_only=True)``."""
from __future__ import annotations

import argparse
import math
import os
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from ..ops import setup_filter
from ..stylegan2 import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig
from .common import CheckpointError, LoadedModel, SUPPORTED, _FILTER_TAPS, _build, _finish, _require


def _rosinality_kernel_ok(t: torch.Tensor, scale: float) -> bool:
    ref = setup_filter(_FILTER_TAPS) * scale
    return tuple(t.shape) == tuple(ref.shape) and torch.allclose(t.float(), ref, atol=1e-6)

def _infer_channels(channels: dict[int, int], what: str) -> tuple[int, int]:
    """Per-resolution channel counts → (channel_base, channel_max) of our min(base // res, max) rule."""
    cmax = max(channels.values())
    below = [r for r in sorted(channels) if channels[r] < cmax]
    base = channels[below[0]] * below[0] if below else cmax * max(channels)
    for r, c in channels.items():
        if min(base // r, cmax) != c:
            raise CheckpointError(f"{what}: channel layout {dict(sorted(channels.items()))} cannot be "
                                  "expressed as min(base / resolution, max)")
    return base, cmax

def rosinality_generator_config(g: dict, what: str = "rosinality checkpoint") -> GeneratorConfig:
    n_mlp = 0
    while f"style.{n_mlp + 1}.weight" in g:
        n_mlp += 1
    _require(n_mlp > 0 and "input.input" in g and "conv1.conv.weight" in g,
             f"{what}: not a rosinality generator state dict")
    style_dim, z_dim = g["style.1.weight"].shape
    n_rgb = 0
    while f"to_rgbs.{n_rgb}.conv.weight" in g:
        n_rgb += 1
    resolution = 2 ** (n_rgb + 2)
    channels = {4: int(g["input.input"].shape[1])}
    for j in range(n_rgb):
        channels[2 ** (j + 3)] = int(g[f"convs.{2 * j}.conv.weight"].shape[1])
    base, cmax = _infer_channels(channels, what)
    img_channels = int(g["to_rgb1.conv.weight"].shape[1])
    try:
        return GeneratorConfig(resolution=resolution, z_dim=int(z_dim), w_dim=int(style_dim), img_channels=img_channels,
                               channel_base=base, channel_max=cmax, mapping_layers=n_mlp,
                               mapping_lr_multiplier=0.01, layer_features=None, conv_clamp=None)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{what}: unsupported generator ({exc})") from None

class _WeightReader:
    """Reads a foreign state dict key by key, remembering what it read, so that a converter can
    refuse a file with weights it did not use (`unread`)."""

    def __init__(self, weights: dict, missing: Callable[[str], str]):
        self.weights, self.missing, self.read = weights, missing, set()

    def __call__(self, key: str):
        if key not in self.weights:
            raise CheckpointError(self.missing(key))
        self.read.add(key)
        return self.weights[key]

    def unread(self) -> list[str]:
        return sorted(set(self.weights) - self.read)

def rosinality_to_ours(g: dict, cfg: GeneratorConfig, latent_avg: torch.Tensor | None = None,
                       what: str = "rosinality checkpoint") -> dict:
    """rosinality `Generator.state_dict()` → our Generator's state dict (strictly: all keys used)."""
    take = _WeightReader(g, lambda key: f"{what}: {key} is missing")

    sd = {}
    for i in range(cfg.mapping_layers):
        sd[f"mapping.fc{i}.weight"] = take(f"style.{i + 1}.weight")
        sd[f"mapping.fc{i}.bias"] = take(f"style.{i + 1}.bias")
    sd["mapping.w_avg"] = (latent_avg.reshape(-1) if latent_avg is not None else torch.zeros(cfg.w_dim))
    sd["synthesis.b4.const"] = take("input.input")[0]

    def styled(dst, src, noise_idx):
        sd[f"{dst}.weight"] = take(f"{src}.conv.weight")[0]
        sd[f"{dst}.affine.weight"] = take(f"{src}.conv.modulation.weight")
        sd[f"{dst}.affine.bias"] = take(f"{src}.conv.modulation.bias")
        sd[f"{dst}.noise_strength"] = take(f"{src}.noise.weight").reshape([])
        sd[f"{dst}.bias"] = take(f"{src}.activate.bias")
        sd[f"{dst}.noise_const"] = take(f"noises.noise_{noise_idx}")[0, 0]

    def rgb(dst, src):
        sd[f"{dst}.weight"] = take(f"{src}.conv.weight")[0]
        sd[f"{dst}.affine.weight"] = take(f"{src}.conv.modulation.weight")
        sd[f"{dst}.affine.bias"] = take(f"{src}.conv.modulation.bias")
        sd[f"{dst}.bias"] = take(f"{src}.bias").reshape(-1)

    styled("synthesis.b4.conv1", "conv1", 0)
    rgb("synthesis.b4.torgb", "to_rgb1")
    for j in range(cfg.num_blocks - 1):           # rosinality's convs / to_rgbs j: our block j + 2
        r = 2 ** (j + 3)
        styled(f"synthesis.b{r}.conv0", f"convs.{2 * j}", 2 * j + 1)
        styled(f"synthesis.b{r}.conv1", f"convs.{2 * j + 1}", 2 * j + 2)
        rgb(f"synthesis.b{r}.torgb", f"to_rgbs.{j}")
        blur = take(f"convs.{2 * j}.conv.blur.kernel")
        up = take(f"to_rgbs.{j}.upsample.kernel")
        _require(_rosinality_kernel_ok(blur, 4) and _rosinality_kernel_ok(up, 4),
                 f"{what}: blur kernel is not [1,3,3,1]")
    leftover = take.unread()
    if leftover:
        raise CheckpointError(f"{what}: unexpected generator weights {leftover[:4]} (not a StyleGAN2 config-F "
                              "generator?)")
    return sd

def rosinality_discriminator_to_ours(d: dict, resolution: int, what: str = "rosinality checkpoint"
                                     ) -> tuple[DiscriminatorConfig, dict]:
    take = _WeightReader(d, lambda key: f"{what}: discriminator weight {key} is missing")

    log2 = int(math.log2(resolution))
    channels = {resolution: int(take("convs.0.0.weight").shape[0])}
    for k in range(1, log2 - 1):
        channels[2 ** (log2 - k)] = int(take(f"convs.{k}.conv2.1.weight").shape[0])
    base, cmax = _infer_channels(channels, what)
    img_channels = int(d["convs.0.0.weight"].shape[1])
    try:
        cfg = DiscriminatorConfig(resolution=resolution, img_channels=img_channels, channel_base=base,
                                  channel_max=cmax, conv_clamp=None, mbstd_group_size=4, mbstd_num_channels=1)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{what}: unsupported discriminator ({exc})") from None
    sd = {f"b{resolution}.fromrgb.weight": take("convs.0.0.weight"),
          f"b{resolution}.fromrgb.bias": take("convs.0.1.bias")}
    for k in range(1, log2 - 1):
        r = 2 ** (log2 - k + 1)
        sd[f"b{r}.conv0.weight"] = take(f"convs.{k}.conv1.0.weight")
        sd[f"b{r}.conv0.bias"] = take(f"convs.{k}.conv1.1.bias")
        sd[f"b{r}.conv1.weight"] = take(f"convs.{k}.conv2.1.weight")
        sd[f"b{r}.conv1.bias"] = take(f"convs.{k}.conv2.2.bias")
        sd[f"b{r}.skip.weight"] = take(f"convs.{k}.skip.1.weight")
        _require(_rosinality_kernel_ok(take(f"convs.{k}.conv2.0.kernel"), 1)
                 and _rosinality_kernel_ok(take(f"convs.{k}.skip.0.kernel"), 1),
                 f"{what}: discriminator blur kernel is not [1,3,3,1]")
    sd["b4.conv.weight"] = take("final_conv.0.weight")
    sd["b4.conv.bias"] = take("final_conv.1.bias")
    sd["b4.fc.weight"] = take("final_linear.0.weight")
    sd["b4.fc.bias"] = take("final_linear.0.bias")
    sd["b4.out.weight"] = take("final_linear.1.weight")
    sd["b4.out.bias"] = take("final_linear.1.bias")
    leftover = take.unread()
    if leftover:
        raise CheckpointError(f"{what}: unexpected discriminator weights {leftover[:4]}")
    return cfg, sd

def _torch_load_weights_only(path, name: str):
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", msg)
        if m or "Weights only load failed" in msg:
            what = f"refused global {m.group(1)}" if m else "it needs more than plain tensors and containers"
            raise CheckpointError(f"checkpoint {name} was refused ({what}): a torch.save file may only hold "
                                  f"tensors and plain containers; supported: {SUPPORTED}") from None
        if "truncated" in msg:
            raise CheckpointError(f"checkpoint {name} is truncated (incomplete download?); download it again") from None
        raise CheckpointError(f"checkpoint {name} is not a valid torch.save file ({msg[:200]})") from None
    except EOFError:
        raise CheckpointError(f"checkpoint {name} is truncated (incomplete download?); download it again") from None
    except RuntimeError as exc:
        msg = str(exc)
        if "central directory" in msg or "zip archive" in msg or "truncated" in msg.lower():
            raise CheckpointError(f"checkpoint {name} is truncated or a damaged zip (incomplete download?): "
                                  f"{msg[:160]}") from None
        raise CheckpointError(f"checkpoint {name} could not be read as a torch.save file ({msg[:200]})") from None
    except Exception as exc:      # torch.load reports damaged files with many exception types
        raise CheckpointError(f"checkpoint {name} is a damaged torch.save file (incomplete or corrupted download?): "
                              f"{type(exc).__name__}: {str(exc)[:160]}") from None

def check_zip_inflation(z: zipfile.ZipFile, file_bytes: int, name: str) -> None:
    """torch.save stores its members uncompressed; members that claim to inflate far beyond the
    file (a zip bomb) are refused before anything is inflated."""
    claimed = sum(info.file_size for info in z.infolist())
    if claimed > 2 * file_bytes + (1 << 20):
        raise CheckpointError(f"checkpoint {name} is refused: its zip members would inflate to {claimed >> 20} MiB "
                              f"from a {file_bytes}-byte file (torch.save files are not compressed; a zip bomb?)")

def load_rosinality(path: str | os.PathLike, name: str | None = None) -> LoadedModel:
    name = name or Path(path).name
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                check_zip_inflation(z, os.path.getsize(path), name)
        except (zipfile.BadZipFile, ValueError, NotImplementedError, OSError, EOFError):
            raise CheckpointError(f"checkpoint {name} is a truncated or damaged zip file (incomplete "
                                  "download?); download it again") from None
    obj = _torch_load_weights_only(path, name)
    try:
        return _from_rosinality_obj(obj, name)
    except (KeyError, IndexError, ValueError, TypeError, AttributeError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {name} is a malformed rosinality checkpoint ({type(exc).__name__}: "
                              f"{str(exc)[:200]})") from None

def _from_rosinality_obj(obj, name: str) -> LoadedModel:
    what = f"checkpoint {name}"
    if isinstance(obj, dict) and "g_ema" in obj:
        g = obj["g_ema"]
    elif isinstance(obj, dict) and "style.1.weight" in obj:
        g, obj = obj, {}
    else:
        keys = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{what} is a torch.save file but not a rosinality StyleGAN2 checkpoint "
                              f"(no 'g_ema'; top level: {keys}); supported: {SUPPORTED}")
    if not isinstance(g, dict) or not all(isinstance(v, torch.Tensor) for v in g.values()):
        raise CheckpointError(f"{what}: 'g_ema' is not a state dict")
    latent_avg = obj.get("latent_avg")
    if latent_avg is not None and not isinstance(latent_avg, torch.Tensor):
        raise CheckpointError(f"{what}: latent_avg is not a tensor")
    cfg = rosinality_generator_config(g, what)
    G = _build(Generator, cfg, rosinality_to_ours(g, cfg, latent_avg, what), what)
    warnings = []
    if latent_avg is None:
        warnings.append("no latent_avg in the checkpoint: the mean w is estimated from samples")
    D = None
    if isinstance(obj.get("d"), dict):
        try:
            dcfg, dsd = rosinality_discriminator_to_ours(obj["d"], cfg.resolution, what)
            D = _build(Discriminator, dcfg, dsd, f"{what} (D)")
        except CheckpointError as exc:
            D = None
            warnings.append(f"discriminator not loaded: {exc}")
    info = {"format": "rosinality", "network": "g_ema", "warnings": warnings}
    args = obj.get("args")
    if isinstance(args, argparse.Namespace):
        info["training_args"] = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool))}
    return LoadedModel(_finish(G), _finish(D), info)
