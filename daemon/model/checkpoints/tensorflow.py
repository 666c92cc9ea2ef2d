"""Original TensorFlow StyleGAN2 pickles (variable mapping as in NVIDIA's legacy.py)."""
from __future__ import annotations

import math
import re

import numpy as np
import torch

from ..stylegan2 import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig
from .common import (CheckpointError, LoadedModel, SUPPORTED, _FILTER_TAPS, _build, _filter_taps_ok,
                     MAX_NAME_CHARS, _finish, _is_int, _plain, _require, _short)
from .unpickler import TFNetworkRecord, _NDArrayBuilder


_TF_G_KWARGS = {"latent_size", "label_size", "dlatent_size", "resolution", "num_channels", "mapping_layers",
                "label_fmaps", "mapping_fmaps", "mapping_nonlinearity", "mapping_lrmul", "w_avg_beta",
                "fmap_base", "fmap_max", "num_fp16_res", "conv_clamp", "architecture", "resample_kernel",
                "use_noise", "nonlinearity", "truncation_psi", "truncation_cutoff", "style_mixing_prob",
                "structure", "conditioning", "fused_modconv"}

_TF_D_KWARGS = {"label_size", "resolution", "num_channels", "architecture", "fmap_base", "fmap_max",
                "num_fp16_res", "conv_clamp", "mapping_fmaps", "nonlinearity", "resample_kernel",
                "freeze_layers", "mapping_layers", "mapping_lrmul", "mbstd_group_size", "mbstd_num_features",
                "structure", "conditioning"}

def _tf_params(net: TFNetworkRecord, what: str) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    seen: set[int] = set()

    def walk(prefix, n, depth):
        if depth > 8 or not isinstance(n, TFNetworkRecord) or not isinstance(n.state, dict):
            raise CheckpointError(f"{what}: malformed TensorFlow network")
        if id(n) in seen:      # walked as a tree, shared components would multiply
            raise CheckpointError(f"{what}: TensorFlow component {prefix or 'top level'} is the same object as "
                                  "another component (shared references)")
        seen.add(id(n))
        variables, components = n.state.get("variables") or [], n.state.get("components") or {}
        if not isinstance(variables, list) or not isinstance(components, dict):
            raise CheckpointError(f"{what}: malformed TensorFlow network")
        for item in variables:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
                    and len(item[0]) <= MAX_NAME_CHARS):
                raise CheckpointError(f"{what}: malformed TensorFlow variable list")
            value = item[1]
            if isinstance(value, _NDArrayBuilder):
                value = value.array
            if isinstance(value, np.generic):
                value = np.asarray(value)
            if not isinstance(value, np.ndarray):
                raise CheckpointError(f"{what}: TensorFlow variable {item[0]} is not an array")
            out[prefix + item[0]] = value
        for cname, comp in components.items():
            if not isinstance(cname, str) or len(cname) > MAX_NAME_CHARS:
                raise CheckpointError(f"{what}: malformed TensorFlow component name")
            walk(f"{prefix}{cname}/", comp, depth + 1)

    walk("", net, 0)
    return out

def _tf_kwargs(net: TFNetworkRecord, allowed: set, what: str) -> dict:
    st = net.state
    version = st.get("version")
    if not _is_int(version) or version < 4:
        raise CheckpointError(f"{what}: TensorFlow pickle version {version} is too old (StyleGAN1?); "
                              f"supported: {SUPPORTED}")
    kw = _plain(dict(st.get("static_kwargs") or {}))
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise CheckpointError(f"{what}: unsupported TensorFlow network option(s) {unknown}")
    return kw

def _tf_get(params: dict, name: str, what: str) -> np.ndarray:
    if name not in params:
        raise CheckpointError(f"{what}: TensorFlow variable {name} is missing")
    return params[name]

def _from_tf_pickle(obj: tuple, name: str) -> LoadedModel:
    what = f"checkpoint {name}"
    _, tf_D, tf_Gs = obj
    kw = _tf_kwargs(tf_Gs, _TF_G_KWARGS, what)

    def k(key, default):
        v = kw.get(key, default)
        return default if v is None else v

    _require(k("label_size", 0) == 0, f"{what}: conditional models are not supported")
    _require(k("architecture", "skip") == "skip", f"{what}: synthesis architecture "
                                                  f"{_short(k('architecture', 'skip'))} is not supported")
    _require(k("use_noise", True) is True, f"{what}: generators without noise are not supported")
    _require(k("nonlinearity", "lrelu") == "lrelu" and k("mapping_nonlinearity", "lrelu") == "lrelu",
             f"{what}: only lrelu is supported")
    _require(_filter_taps_ok(k("resample_kernel", _FILTER_TAPS)), f"{what}: resample kernel is not [1,3,3,1]")
    params = _tf_params(tf_Gs, what)
    if any(re.fullmatch(r"synthesis/ToRGB_lod\d+/.*", n) for n in params):
        raise CheckpointError(f"{what}: 'orig' synthesis architecture (ToRGB_lod) is not supported")
    w_dim = k("dlatent_size", 512)
    conv_clamp = kw.get("conv_clamp")
    try:
        cfg = GeneratorConfig(
            resolution=k("resolution", 1024), z_dim=k("latent_size", 512), w_dim=w_dim,
            img_channels=k("num_channels", 3), channel_base=_doubled(k("fmap_base", 16384)),
            channel_max=k("fmap_max", 512), mapping_layers=k("mapping_layers", 8),
            mapping_lr_multiplier=k("mapping_lrmul", 0.01), layer_features=kw.get("mapping_fmaps"),
            conv_clamp=conv_clamp, num_fp16_res=k("num_fp16_res", 0), w_avg_beta=k("w_avg_beta", 0.995))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{what}: unsupported generator configuration ({exc})") from None
    P = lambda n: _tf_get(params, n, what)  # noqa: E731
    sd: dict[str, np.ndarray] = {"mapping.w_avg": P("dlatent_avg")}
    for i in range(cfg.mapping_layers):
        sd[f"mapping.fc{i}.weight"] = P(f"mapping/Dense{i}/weight").T
        sd[f"mapping.fc{i}.bias"] = P(f"mapping/Dense{i}/bias")

    def modconv(dst, src, noise_idx, flip=False):
        w = P(f"synthesis/{src}/weight")
        if flip:
            w = w[::-1, ::-1]
        sd[f"{dst}.weight"] = w.transpose(3, 2, 0, 1)
        sd[f"{dst}.bias"] = P(f"synthesis/{src}/bias")
        sd[f"{dst}.noise_const"] = P(f"synthesis/noise{noise_idx}")[0, 0]
        sd[f"{dst}.noise_strength"] = P(f"synthesis/{src}/noise_strength")
        sd[f"{dst}.affine.weight"] = P(f"synthesis/{src}/mod_weight").T
        sd[f"{dst}.affine.bias"] = P(f"synthesis/{src}/mod_bias") + 1

    def torgb(dst, src):
        sd[f"{dst}.weight"] = P(f"synthesis/{src}/weight").transpose(3, 2, 0, 1)
        sd[f"{dst}.bias"] = P(f"synthesis/{src}/bias")
        sd[f"{dst}.affine.weight"] = P(f"synthesis/{src}/mod_weight").T
        sd[f"{dst}.affine.bias"] = P(f"synthesis/{src}/mod_bias") + 1

    sd["synthesis.b4.const"] = P("synthesis/4x4/Const/const")[0]
    modconv("synthesis.b4.conv1", "4x4/Conv", 0)
    torgb("synthesis.b4.torgb", "4x4/ToRGB")
    for k in range(2, cfg.num_blocks + 1):
        r = 2 ** (k + 1)
        modconv(f"synthesis.b{r}.conv0", f"{r}x{r}/Conv0_up", 2 * k - 3, flip=True)
        modconv(f"synthesis.b{r}.conv1", f"{r}x{r}/Conv1", 2 * k - 2)
        torgb(f"synthesis.b{r}.torgb", f"{r}x{r}/ToRGB")
    G = _build(Generator, cfg, {n: torch.from_numpy(np.array(v, dtype=np.float32, order="C")) for n, v in sd.items()},
               what)

    warnings: list[str] = []
    D = None
    try:
        D = _tf_discriminator(tf_D, what)
    except CheckpointError as exc:
        warnings.append(f"discriminator not loaded: {exc}")
    info = {"format": "nvidia-tf-pickle", "network": "Gs", "code": "stylegan2 (TensorFlow)", "warnings": warnings}
    return LoadedModel(_finish(G), _finish(D), info)

def _tf_discriminator(tf_D, what: str) -> Discriminator:
    if not isinstance(tf_D, TFNetworkRecord):
        raise CheckpointError("malformed TensorFlow discriminator")
    kw = _tf_kwargs(tf_D, _TF_D_KWARGS, what)

    def k(key, default):
        v = kw.get(key, default)
        return default if v is None else v

    _require(k("label_size", 0) == 0, "conditional discriminator")
    _require(k("architecture", "resnet") == "resnet", f"architecture {_short(k('architecture', 'resnet'))}")
    _require(k("nonlinearity", "lrelu") == "lrelu", "activation is not lrelu")
    _require(_filter_taps_ok(k("resample_kernel", _FILTER_TAPS)), "resample kernel is not [1,3,3,1]")
    conv_clamp = kw.get("conv_clamp")
    try:
        cfg = DiscriminatorConfig(
            resolution=k("resolution", 1024), img_channels=k("num_channels", 3),
            channel_base=_doubled(k("fmap_base", 16384)), channel_max=k("fmap_max", 512), conv_clamp=conv_clamp,
            mbstd_group_size=k("mbstd_group_size", 4),    # D_stylegan2's own default
            mbstd_num_channels=k("mbstd_num_features", 1), num_fp16_res=k("num_fp16_res", 0))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{what}: unsupported discriminator configuration ({exc})") from None
    params = _tf_params(tf_D, what)
    P = lambda n: _tf_get(params, n, what)  # noqa: E731
    sd = {}
    res = cfg.resolution
    sd[f"b{res}.fromrgb.weight"] = P(f"{res}x{res}/FromRGB/weight").transpose(3, 2, 0, 1)
    sd[f"b{res}.fromrgb.bias"] = P(f"{res}x{res}/FromRGB/bias")
    for r in (2 ** i for i in range(int(math.log2(res)), 2, -1)):
        sd[f"b{r}.conv0.weight"] = P(f"{r}x{r}/Conv0/weight").transpose(3, 2, 0, 1)
        sd[f"b{r}.conv0.bias"] = P(f"{r}x{r}/Conv0/bias")
        sd[f"b{r}.conv1.weight"] = P(f"{r}x{r}/Conv1_down/weight").transpose(3, 2, 0, 1)
        sd[f"b{r}.conv1.bias"] = P(f"{r}x{r}/Conv1_down/bias")
        sd[f"b{r}.skip.weight"] = P(f"{r}x{r}/Skip/weight").transpose(3, 2, 0, 1)
    sd["b4.conv.weight"] = P("4x4/Conv/weight").transpose(3, 2, 0, 1)
    sd["b4.conv.bias"] = P("4x4/Conv/bias")
    sd["b4.fc.weight"] = P("4x4/Dense0/weight").T
    sd["b4.fc.bias"] = P("4x4/Dense0/bias")
    sd["b4.out.weight"] = P("Output/weight").T
    sd["b4.out.bias"] = P("Output/bias")
    return _build(Discriminator, cfg,
                  {n: torch.from_numpy(np.array(v, dtype=np.float32, order="C")) for n, v in sd.items()}, f"{what} (D)")


def _doubled(fmap_base):
    """TF's fmap_base is half of PyTorch's channel_base; a non-integer is left for the config
    to refuse by name."""
    return fmap_base * 2 if isinstance(fmap_base, int) and not isinstance(fmap_base, bool) else fmap_base
