"""NVIDIA StyleGAN2-ADA / StyleGAN3-repo network pickles → our Generator/Discriminator.

The unpickled records carry the init kwargs; the defaults of the constructor arguments are read
out of the embedded module source with ``ast`` (parsed, never executed)."""
from __future__ import annotations

import ast
from typing import Any

import torch

from ..ops import setup_filter
from ..stylegan2 import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig
from .common import (CheckpointError, LoadedModel, SUPPORTED, _FILTER_TAPS, _build, _filter_taps_ok,
                     MAX_NAME_CHARS, _finish, _is_int, _plain, _require, _short)
from .unpickler import PersistentRecord


class _Signature:
    def __init__(self, node: ast.FunctionDef):
        a = node.args
        pos = [x.arg for x in a.posonlyargs + a.args][1:]               # drop self
        self.positional = pos
        self.kwonly = [x.arg for x in a.kwonlyargs]
        self.varkw = a.kwarg.arg if a.kwarg else None
        self.defaults: dict[str, Any] = {}
        self.unknown_default: set[str] = set()
        for name, node_ in zip(pos[len(pos) - len(a.defaults):], a.defaults):
            self._set_default(name, node_)
        for name, node_ in zip(self.kwonly, a.kw_defaults):
            if node_ is not None:
                self._set_default(name, node_)

    def _set_default(self, name, node_):
        try:
            self.defaults[name] = ast.literal_eval(node_)
        except (ValueError, TypeError, SyntaxError, RecursionError):
            self.unknown_default.add(name)

    def bind(self, args: tuple, kwargs: dict, what: str) -> tuple[dict, dict]:
        """→ (named parameters with defaults filled in, extra **kwargs)."""
        if len(args) > len(self.positional):
            raise CheckpointError(f"{what}: too many positional init arguments")
        out = dict(zip(self.positional, args))
        extra = {}
        for k, v in kwargs.items():
            if k in out:
                raise CheckpointError(f"{what}: init argument {k!r} given twice")
            if k in self.positional or k in self.kwonly:
                out[k] = v
            elif self.varkw:
                extra[k] = v
            else:
                raise CheckpointError(f"{what}: init argument {k!r} does not exist in the embedded code")
        for k, v in self.defaults.items():
            out.setdefault(k, v)
        return out, extra

class _ModuleCode:
    """Class names and `__init__` signatures of an embedded network module."""

    def __init__(self, src: str):
        try:
            tree = ast.parse(src)
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            raise CheckpointError(f"the network code embedded in the pickle cannot be parsed ({exc})") from None
        self.classes: dict[str, _Signature | None] = {}
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
                self.classes[node.name] = _Signature(init) if init else None
        self.fused_modconv_default = "fused_modconv_default" in src

    def sig(self, class_name: str) -> _Signature:
        s = self.classes.get(class_name)
        if s is None:
            raise CheckpointError(f"the network code embedded in the pickle has no usable class {class_name}")
        return s

    @property
    def variant(self) -> str:
        if "SynthesisInput" in self.classes:
            return "stylegan3"
        return "stylegan3-repo networks_stylegan2" if self.fused_modconv_default else "stylegan2-ada-pytorch networks"

_G_CLASSES = ("Generator", "MappingNetwork", "SynthesisNetwork", "SynthesisBlock", "SynthesisLayer",
              "ToRGBLayer", "FullyConnectedLayer")

_D_CLASSES = ("Discriminator", "DiscriminatorBlock", "DiscriminatorEpilogue", "Conv2dLayer",
              "FullyConnectedLayer", "MinibatchStdLayer")

def _merge(base: dict, extra: dict, what: str) -> dict:
    """dict(base, **extra), refusing a key given twice (NVIDIA's own constructor would fail too)."""
    dup = set(base) & set(extra)
    if dup:
        raise CheckpointError(f"{what}: init argument(s) {sorted(dup)} given twice")
    return {**base, **extra}

def _generator_config_from_record(rec: PersistentRecord, code: _ModuleCode, what: str) -> GeneratorConfig:
    g, g_extra = code.sig("Generator").bind(rec.init_args, _plain(rec.init_kwargs), f"{what} Generator")
    known = {"z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs"}
    for k, v in g.items():
        if k not in known and v is not None:       # e.g. DragGAN's `resize`, StyleGAN-Human's `square`
            raise CheckpointError(f"{what}: generator option {k}={_short(v)} is not supported")
    for k in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"):
        _require(_is_int(g.get(k)), f"{what}: generator init argument {k} missing or not an integer")
    if g["c_dim"] != 0:
        raise CheckpointError(f"{what}: conditional models (c_dim={g['c_dim']}) are not supported")
    synth = dict(g.get("synthesis_kwargs") or {})
    synth.update(g_extra)                                   # StyleGAN3-repo: **synthesis_kwargs
    mapping = dict(g.get("mapping_kwargs") or {})
    m, m_extra = code.sig("MappingNetwork").bind(
        (), _merge(dict(z_dim=g["z_dim"], c_dim=0, w_dim=g["w_dim"], num_ws=None), mapping, what),
        f"{what} MappingNetwork")
    s, block_kw = code.sig("SynthesisNetwork").bind(
        (), _merge(dict(w_dim=g["w_dim"], img_resolution=g["img_resolution"], img_channels=g["img_channels"]),
                   synth, what),
        f"{what} SynthesisNetwork")
    b, layer_kw = code.sig("SynthesisBlock").bind(
        (), _merge(dict(in_channels=0, out_channels=0, w_dim=g["w_dim"], resolution=4,
                        img_channels=g["img_channels"], is_last=False), block_kw, what), f"{what} SynthesisBlock")
    layer_kw = dict(layer_kw)
    layer_kw.setdefault("conv_clamp", b.get("conv_clamp"))
    lyr, _ = code.sig("SynthesisLayer").bind(
        (), _merge(dict(in_channels=0, out_channels=0, w_dim=g["w_dim"], resolution=4), layer_kw, what),
        f"{what} SynthesisLayer")
    arch = b.get("architecture", "skip")
    _require(arch == "skip", f"{what}: synthesis architecture {_short(arch)} is not supported (only 'skip', "
                             "the StyleGAN2 config-F layout)")
    _require(lyr.get("use_noise", True) is True, f"{what}: generators without noise inputs are not supported")
    _require(lyr.get("activation", "lrelu") == "lrelu" and m.get("activation", "lrelu") == "lrelu",
             f"{what}: only the lrelu activation is supported")
    _require(lyr.get("kernel_size", 3) == 3, f"{what}: only 3×3 synthesis convolutions are supported")
    for taps in (b.get("resample_filter", _FILTER_TAPS), lyr.get("resample_filter", _FILTER_TAPS)):
        _require(_filter_taps_ok(taps), f"{what}: resample filter {_short(taps)} is not supported (only [1,3,3,1])")
    conv_clamp = b.get("conv_clamp")
    try:
        return GeneratorConfig(
            resolution=g["img_resolution"], z_dim=g["z_dim"], w_dim=g["w_dim"], img_channels=g["img_channels"],
            channel_base=s.get("channel_base", 32768), channel_max=s.get("channel_max", 512),
            mapping_layers=m.get("num_layers", 8), mapping_lr_multiplier=m.get("lr_multiplier", 0.01),
            layer_features=m.get("layer_features"), conv_clamp=conv_clamp,
            num_fp16_res=s.get("num_fp16_res", 0) or 0,
            w_avg_beta=m["w_avg_beta"] if m.get("w_avg_beta") is not None else 0.995)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{what}: unsupported generator configuration ({exc})") from None

def _discriminator_config_from_record(rec: PersistentRecord, code: _ModuleCode, what: str) -> DiscriminatorConfig:
    d, _ = code.sig("Discriminator").bind(rec.init_args, _plain(rec.init_kwargs), f"{what} Discriminator")
    for k in ("c_dim", "img_resolution", "img_channels"):
        _require(_is_int(d.get(k)), f"{what}: discriminator init argument {k} missing or not an integer")
    _require(d["c_dim"] == 0, f"{what}: conditional discriminators (c_dim={d['c_dim']}) are not supported")
    arch = d.get("architecture", "resnet")
    _require(arch == "resnet", f"{what}: discriminator architecture {_short(arch)} is not supported (only 'resnet')")
    blk, _ = code.sig("DiscriminatorBlock").bind(
        (), _merge(dict(in_channels=0, tmp_channels=0, out_channels=0, resolution=4, first_layer_idx=0,
                        img_channels=d["img_channels"], architecture=arch, conv_clamp=d.get("conv_clamp")),
                   dict(d.get("block_kwargs") or {}), what), f"{what} DiscriminatorBlock")
    epi, _ = code.sig("DiscriminatorEpilogue").bind(
        (), _merge(dict(in_channels=0, cmap_dim=0, resolution=4, img_channels=d["img_channels"],
                        architecture=arch, conv_clamp=d.get("conv_clamp")),
                   dict(d.get("epilogue_kwargs") or {}), what), f"{what} DiscriminatorEpilogue")
    _require(blk.get("activation", "lrelu") == "lrelu" and epi.get("activation", "lrelu") == "lrelu",
             f"{what}: only the lrelu discriminator activation is supported")
    _require(_filter_taps_ok(blk.get("resample_filter", _FILTER_TAPS)),
             f"{what}: discriminator resample filter is not [1,3,3,1]")
    conv_clamp = d.get("conv_clamp")
    gs = epi.get("mbstd_group_size", 4)
    try:
        return DiscriminatorConfig(
            resolution=d["img_resolution"], img_channels=d["img_channels"],
            channel_base=d.get("channel_base", 32768), channel_max=d.get("channel_max", 512),
            conv_clamp=conv_clamp, mbstd_group_size=gs, mbstd_num_channels=epi.get("mbstd_num_channels", 1),
            num_fp16_res=d.get("num_fp16_res", 0) or 0)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{what}: unsupported discriminator configuration ({exc})") from None

_MAX_MODULES = 10_000

def _record_state_dict(rec: PersistentRecord, prefix: str = "", out: dict | None = None, depth: int = 0,
                       seen: set | None = None) -> dict:
    """Flatten a record tree into a state dict (parameters + persistent buffers). Each record
    is visited once: a module reached twice is refused, since a tree of shared references
    would otherwise be walked (and its names joined) an exponential number of times."""
    out = {} if out is None else out
    seen = set() if seen is None else seen
    if depth > 32:
        raise CheckpointError("network module tree nested too deeply")
    if id(rec) in seen:
        raise CheckpointError(f"network module {prefix or 'top level'} is the same object as another module "
                              "of the tree (shared references)")
    seen.add(id(rec))
    if len(seen) > _MAX_MODULES:
        raise CheckpointError(f"network module tree has more than {_MAX_MODULES} modules")
    st = rec.state
    non_persistent = st.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        items = st.get(group) or {}
        if not isinstance(items, dict):
            raise CheckpointError(f"malformed module state at {prefix or 'top level'}")
        for name, t in items.items():
            _check_name(name, prefix)
            if t is None or (group == "_buffers" and name in non_persistent):
                continue
            if not isinstance(t, torch.Tensor):
                raise CheckpointError(f"{prefix}{name} is not a tensor")
            out[prefix + name] = t
    modules = st.get("_modules") or {}
    if not isinstance(modules, dict):
        raise CheckpointError(f"malformed module state at {prefix or 'top level'}")
    for name, child in modules.items():
        _check_name(name, prefix)
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise CheckpointError(f"submodule {prefix}{name} is not a persistent network module")
        _record_state_dict(child, f"{prefix}{name}.", out, depth + 1, seen)
    return out

def _check_name(name, prefix: str) -> None:
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
        raise CheckpointError(f"module state at {prefix or 'top level'} has a name that is not a short string")

def _drop_resample_filters(sd: dict, what: str) -> dict:
    ref = setup_filter(_FILTER_TAPS)
    out = {}
    for k, v in sd.items():
        if k.endswith("resample_filter"):
            if tuple(v.shape) != tuple(ref.shape) or not torch.allclose(v.float(), ref, atol=1e-6):
                raise CheckpointError(f"{what}: {k} is not the [1,3,3,1] filter our code uses")
            continue
        out[k] = v
    return out

def _from_nvidia_pickle_dict(data: dict, name: str) -> LoadedModel:
    warnings: list[str] = []
    key = next((k for k in ("G_ema", "G") if isinstance(data.get(k), PersistentRecord)), None)
    if key is None:
        raise CheckpointError(f"{name}: network pickle without G_ema or G (keys: {_short(sorted(map(str, data))[:8])})")
    if key == "G":
        warnings.append("no G_ema in the pickle: using the raw training generator G")
    rec = data[key]
    if not isinstance(rec, PersistentRecord):
        raise CheckpointError(f"{name}: {key} is not a persistent network object")
    code = _ModuleCode(rec.module_src)
    if code.variant == "stylegan3":
        raise CheckpointError(
            f"checkpoint {name} is a StyleGAN3 pickle (training.networks_stylegan3.{rec.class_name}): StyleGAN3 "
            f"(alias-free) generators are not supported yet; supported: {SUPPORTED}")
    if rec.class_name != "Generator":
        raise CheckpointError(f"checkpoint {name}: {key} is a {rec.class_name}, not a StyleGAN2 Generator; "
                              f"supported: {SUPPORTED}")
    missing = [c for c in _G_CLASSES if c not in code.classes]
    if missing:
        raise CheckpointError(f"checkpoint {name}: unrecognised network code (no {', '.join(missing)}); "
                              f"supported: {SUPPORTED}")
    cfg = _generator_config_from_record(rec, code, f"checkpoint {name}")
    G = _build(Generator, cfg, _drop_resample_filters(_record_state_dict(rec), f"{name} {key}"),
               f"checkpoint {name} ({key})")
    D = None
    d_rec = data.get("D")
    if isinstance(d_rec, PersistentRecord):
        try:
            d_code = code if d_rec.module_src == rec.module_src else _ModuleCode(d_rec.module_src)
            miss = [c for c in _D_CLASSES if c not in d_code.classes]
            _require(not miss and d_rec.class_name == "Discriminator", "unrecognised discriminator code")
            dcfg = _discriminator_config_from_record(d_rec, d_code, f"checkpoint {name}")
            D = _build(Discriminator, dcfg, _drop_resample_filters(_record_state_dict(d_rec), f"{name} D"),
                       f"checkpoint {name} (D)")
        except (CheckpointError, TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            D = None
            warnings.append(f"discriminator not loaded: {exc}")
    info = {"format": "nvidia-pickle", "network": key, "code": code.variant, "warnings": warnings}
    tsk = data.get("training_set_kwargs")
    if isinstance(tsk, dict):
        info["training_set"] = {k: v for k, v in _plain(tsk).items()
                                if isinstance(v, (str, int, float, bool, type(None)))}
    return LoadedModel(_finish(G), _finish(D), info)
