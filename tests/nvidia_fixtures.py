"""Builders of checkpoint files in third-party layouts, for the loader tests.

Nothing here imports or copies NVIDIA's or rosinality's code. The files are written opcode by
opcode with a pure-Python pickler so that they have the structure real files have (studied
with `pickletools.dis` on pickles written by NVIDIA's own training loop; see
benchmarks/verify_reference.py, which compares the two structures when the reference code is
at hand):

* NVIDIA network pickle: protocol 3 or 4; a dict with G, D, G_ema, augment_pipe,
  training_set_kwargs. Each network is `torch_utils.persistence._reconstruct_persistent_obj`
  REDUCEd on a meta dict {type: 'class', version: 6, module_src, class_name, state}, where state
  is the module's `__dict__` (training, _parameters/_buffers OrderedDicts, hook OrderedDicts,
  _modules, plain attributes such as numpy float64 gains, _init_args, _init_kwargs with
  `dnnlib.util.EasyDict` values). Parameters are `torch._utils._rebuild_parameter` around
  `torch._utils._rebuild_tensor_v2`, whose storage is `torch.storage._load_from_bytes(bytes)`;
  the bytes are a legacy `torch.save` of the storage (magic number, protocol 1001, sys info,
  a persistent-id record naming `torch.FloatStorage`, the key list, then count + raw data).
* Original TensorFlow pickle: a tuple (G, D, Gs) of `dnnlib.tflib.network.Network` objects
  (NEWOBJ + BUILD with {version, name, static_kwargs, components, build_module_src,
  build_func_name, variables}); variables are numpy arrays (`numpy.core.multiarray._reconstruct`).
* rosinality: a `g_ema` state dict in rosinality's parameter layout.

The embedded `module_src` strings are signature-only stand-ins written for these tests: the
loader only parses them for class names and constructor defaults, it never runs them.
"""
from __future__ import annotations

import argparse
import collections
import io
import math
import pickle
import struct
from typing import Any

import numpy as np
import torch

from dragd.daemon.model.ops import setup_filter
from dragd.daemon.model.stylegan2 import Discriminator, Generator

# ---------------------------------------------------------------------------------------------
# Signature-only module sources (constructor argument names and defaults of the two NVIDIA
# StyleGAN2 code bases, and a StyleGAN3 one). The loader reads them with `ast`.

_COMMON_SRC = '''
import numpy as np
import torch
from torch_utils import persistence

@persistence.persistent_class
class FullyConnectedLayer(torch.nn.Module):
    def __init__(self, in_features, out_features, bias=True, activation='linear', lr_multiplier=1, bias_init=0):
        super().__init__()

@persistence.persistent_class
class Conv2dLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, bias=True, activation='linear', up=1, down=1,
                 resample_filter=[1,3,3,1], conv_clamp=None, channels_last=False, trainable=True):
        super().__init__()

@persistence.persistent_class
class SynthesisLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, resolution, kernel_size=3, up=1, use_noise=True,
                 activation='lrelu', resample_filter=[1,3,3,1], conv_clamp=None, channels_last=False):
        super().__init__()

@persistence.persistent_class
class ToRGBLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None, channels_last=False):
        super().__init__()

@persistence.persistent_class
class DiscriminatorBlock(torch.nn.Module):
    def __init__(self, in_channels, tmp_channels, out_channels, resolution, img_channels, first_layer_idx,
                 architecture='resnet', activation='lrelu', resample_filter=[1,3,3,1], conv_clamp=None,
                 use_fp16=False, fp16_channels_last=False, freeze_layers=0):
        super().__init__()

@persistence.persistent_class
class MinibatchStdLayer(torch.nn.Module):
    def __init__(self, group_size, num_channels=1):
        super().__init__()

@persistence.persistent_class
class DiscriminatorEpilogue(torch.nn.Module):
    def __init__(self, in_channels, cmap_dim, resolution, img_channels, architecture='resnet',
                 mbstd_group_size=4, mbstd_num_channels=1, activation='lrelu', conv_clamp=None):
        super().__init__()
'''

ADA_MODULE_SRC = _COMMON_SRC + '''
@persistence.persistent_class
class MappingNetwork(torch.nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, embed_features=None, layer_features=None,
                 activation='lrelu', lr_multiplier=0.01, w_avg_beta=0.995):
        super().__init__()

@persistence.persistent_class
class SynthesisBlock(torch.nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, is_last, architecture='skip',
                 resample_filter=[1,3,3,1], conv_clamp=None, use_fp16=False, fp16_channels_last=False,
                 **layer_kwargs):
        super().__init__()

@persistence.persistent_class
class SynthesisNetwork(torch.nn.Module):
    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512,
                 num_fp16_res=0, **block_kwargs):
        super().__init__()

@persistence.persistent_class
class Generator(torch.nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs={}, synthesis_kwargs={}):
        super().__init__()

@persistence.persistent_class
class Discriminator(torch.nn.Module):
    def __init__(self, c_dim, img_resolution, img_channels, architecture='resnet', channel_base=32768,
                 channel_max=512, num_fp16_res=0, conv_clamp=None, cmap_dim=None, block_kwargs={},
                 mapping_kwargs={}, epilogue_kwargs={}):
        super().__init__()
'''

# The StyleGAN3 repository's networks_stylegan2.py: other defaults, flat synthesis kwargs.
SG3REPO_MODULE_SRC = _COMMON_SRC + '''
@persistence.persistent_class
class MappingNetwork(torch.nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, embed_features=None, layer_features=None,
                 activation='lrelu', lr_multiplier=0.01, w_avg_beta=0.998):
        super().__init__()

@persistence.persistent_class
class SynthesisBlock(torch.nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, is_last, architecture='skip',
                 resample_filter=[1,3,3,1], conv_clamp=256, use_fp16=False, fp16_channels_last=False,
                 fused_modconv_default=True, **layer_kwargs):
        super().__init__()

@persistence.persistent_class
class SynthesisNetwork(torch.nn.Module):
    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512,
                 num_fp16_res=4, **block_kwargs):
        super().__init__()

@persistence.persistent_class
class Generator(torch.nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs={}, **synthesis_kwargs):
        super().__init__()

@persistence.persistent_class
class Discriminator(torch.nn.Module):
    def __init__(self, c_dim, img_resolution, img_channels, architecture='resnet', channel_base=32768,
                 channel_max=512, num_fp16_res=4, conv_clamp=256, cmap_dim=None, block_kwargs={},
                 mapping_kwargs={}, epilogue_kwargs={}):
        super().__init__()
'''

STYLEGAN3_MODULE_SRC = '''
import torch
from torch_utils import persistence

@persistence.persistent_class
class MappingNetwork(torch.nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=2, lr_multiplier=0.01, w_avg_beta=0.998):
        super().__init__()

@persistence.persistent_class
class SynthesisInput(torch.nn.Module):
    def __init__(self, w_dim, channels, size, sampling_rate, bandwidth):
        super().__init__()

@persistence.persistent_class
class SynthesisLayer(torch.nn.Module):
    def __init__(self, w_dim, is_torgb, is_critically_sampled, use_fp16, in_channels, out_channels, in_size,
                 out_size, in_sampling_rate, out_sampling_rate, in_cutoff, out_cutoff, in_half_width,
                 out_half_width, conv_kernel=3, filter_size=6, lrelu_upsampling=2, use_radial_filters=False,
                 conv_clamp=256, magnitude_ema_beta=0.999):
        super().__init__()

@persistence.persistent_class
class SynthesisNetwork(torch.nn.Module):
    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512, num_layers=14,
                 num_critical=2, first_cutoff=2, first_stopband=2**2.1, last_stopband_rel=2**0.3, margin_size=10,
                 output_scale=0.25, num_fp16_res=4, **layer_kwargs):
        super().__init__()

@persistence.persistent_class
class Generator(torch.nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs={}, **synthesis_kwargs):
        super().__init__()
'''

# ---------------------------------------------------------------------------------------------
# A pure-Python pickler that can name arbitrary globals without importing them.


class GlobalRef:
    """Pickled as the global `module.name` (GLOBAL / STACK_GLOBAL), never resolved here."""
    _cache: dict[tuple[str, str], "GlobalRef"] = {}

    def __new__(cls, module: str, name: str):
        key = (module, name)
        if key not in cls._cache:
            obj = super().__new__(cls)
            obj.module, obj.name = module, name
            cls._cache[key] = obj
        return cls._cache[key]

    def __call__(self, *args, **kwargs):          # save_reduce() insists on a callable
        raise RuntimeError("fixture global reference, not callable")

    def __repr__(self):
        return f"GlobalRef({self.module}.{self.name})"


class Reduce:
    """Pickled as func(*args) (REDUCE), optionally followed by BUILD(state)."""

    def __init__(self, func: GlobalRef, args: tuple, state: Any = None):
        self.func, self.args, self.state = func, args, state


class NewObj:
    """Pickled as cls.__new__(cls) (NEWOBJ) then BUILD(state): how TF Network objects appear."""

    def __init__(self, cls: GlobalRef, state: Any):
        self.cls, self.state = cls, state


class UnhashedDict:
    """Pickled as a dict of `items` without ever hashing the keys here (the hash-bomb tests)."""

    def __init__(self, items: list):
        self.items = items


class FixturePickler(pickle._Pickler):
    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, UnhashedDict):
            self.write(pickle.EMPTY_DICT + pickle.MARK)
            for k, v in obj.items:
                self.save(k)
                self.save(v)
            self.write(pickle.SETITEMS)
            return
        if isinstance(obj, GlobalRef):
            if id(obj) in self.memo:
                self.write(self.get(self.memo[id(obj)][0]))
                return
            if self.proto >= 4:
                self.save(obj.module)
                self.save(obj.name)
                self.write(pickle.STACK_GLOBAL)
            else:
                self.write(pickle.GLOBAL + obj.module.encode() + b"\n" + obj.name.encode() + b"\n")
            self.memoize(obj)
            return
        if isinstance(obj, Reduce):
            if id(obj) in self.memo:
                self.write(self.get(self.memo[id(obj)][0]))
                return
            self.save_reduce(obj.func, obj.args, obj=obj)
            if obj.state is not None:
                self.save(obj.state)
                self.write(pickle.BUILD)
            return
        if isinstance(obj, NewObj):
            if id(obj) in self.memo:
                self.write(self.get(self.memo[id(obj)][0]))
                return
            self.save(obj.cls)
            self.save(())
            self.write(pickle.NEWOBJ)
            self.memoize(obj)
            self.save(obj.state)
            self.write(pickle.BUILD)
            return
        super().save(obj, save_persistent_id)


def dumps(obj, protocol: int = 4) -> bytes:
    buf = io.BytesIO()
    FixturePickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Tensors the way `pickle.dump` of a torch module writes them.

_STORAGE_NAMES = {torch.float32: "FloatStorage", torch.float16: "HalfStorage", torch.float64: "DoubleStorage",
                  torch.int64: "LongStorage", torch.uint8: "ByteStorage"}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_key_counter = [94000000000000]


class _StorageRef:
    def __init__(self, key, name, numel):
        self.key, self.name, self.numel = key, name, numel


class _LegacyPickler(FixturePickler):
    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            return ("storage", GlobalRef("torch", obj.name), obj.key, "cpu", obj.numel, None)
        return None


def legacy_storage_bytes(t: torch.Tensor, inner: Any = None) -> bytes:
    """Legacy `torch.save(storage)` bytes of a contiguous tensor's data.

    `inner` replaces the storage record (to hide something else in it, for the refusal tests).
    """
    t = t.detach().contiguous().cpu()
    _key_counter[0] += 8
    key = str(_key_counter[0])
    buf = io.BytesIO()
    for part in (_LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True,
                                       "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        _LegacyPickler(buf, protocol=2).dump(part)
    ref = _StorageRef(key, _STORAGE_NAMES[t.dtype], t.numel())
    _LegacyPickler(buf, protocol=2).dump(ref if inner is None else inner)
    _LegacyPickler(buf, protocol=2).dump([key])
    buf.write(struct.pack("<q", t.numel()))
    buf.write(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return buf.getvalue()


def tensor(t: torch.Tensor) -> Reduce:
    t = t.detach().contiguous().cpu()
    storage = Reduce(GlobalRef("torch.storage", "_load_from_bytes"), (legacy_storage_bytes(t),))
    return Reduce(GlobalRef("torch._utils", "_rebuild_tensor_v2"),
                  (storage, 0, tuple(t.shape), tuple(t.stride()), False, collections.OrderedDict()))


def parameter(t: torch.Tensor) -> Reduce:
    return Reduce(GlobalRef("torch._utils", "_rebuild_parameter"), (tensor(t), False, collections.OrderedDict()))


def np_float64(v: float) -> Reduce:
    """A numpy float64 scalar as numpy 1.x pickles it (the era of the real checkpoints)."""
    return Reduce(GlobalRef("numpy.core.multiarray", "scalar"), (np.dtype("float64"), struct.pack("<d", v)))


def np_array(a: np.ndarray) -> Reduce:
    a = np.array(a, dtype=np.float32, order="C")
    return Reduce(GlobalRef("numpy.core.multiarray", "_reconstruct"), (GlobalRef("numpy", "ndarray"), (0,), b"b"),
                  state=(1, tuple(a.shape), np.dtype("float32"), False, a.tobytes()))


def easydict(**kw) -> dict:
    """A `dnnlib.util.EasyDict` as pickled: NEWOBJ of the class, then SETITEMS."""
    return _EasyDictObj(kw)


class _EasyDictObj(dict):
    pass


def _save_easydict(self, obj):
    self.save(GlobalRef("dnnlib.util", "EasyDict"))
    self.save(())
    self.write(pickle.NEWOBJ)
    self.memoize(obj)
    self._batch_setitems(iter(obj.items()))


FixturePickler.dispatch = dict(FixturePickler.dispatch)
FixturePickler.dispatch[_EasyDictObj] = _save_easydict

# ---------------------------------------------------------------------------------------------
# NVIDIA persistent-object trees built from our own modules (same names, same classes).

_HAS_RESAMPLE_FILTER = {"SynthesisLayer", "SynthesisBlock", "Conv2dLayer", "DiscriminatorBlock"}
_BUFFER_NAMES = {"noise_const", "w_avg", "resample_filter"}


def persistent(class_name: str, module_src: str, state: dict) -> Reduce:
    meta = {"type": "class", "version": 6, "module_src": module_src, "class_name": class_name, "state": state}
    return Reduce(GlobalRef("torch_utils.persistence", "_reconstruct_persistent_obj"), (meta,))


def module_state(params: dict, buffers: dict, modules: dict, attrs: dict, init_args: tuple,
                 init_kwargs: dict) -> dict:
    """An nn.Module `__dict__` of the PyTorch 1.7–1.9 era, which the real checkpoints come from."""
    od = collections.OrderedDict
    state = {"training": False, "_parameters": od(params), "_buffers": od(buffers),
             "_non_persistent_buffers_set": set(), "_backward_hooks": od(), "_forward_hooks": od(),
             "_forward_pre_hooks": od(), "_state_dict_hooks": od(), "_load_state_dict_pre_hooks": od(),
             "_modules": od(modules)}
    state.update(attrs)
    state["_init_args"] = init_args
    state["_init_kwargs"] = init_kwargs
    return state


def _module_tree(module: torch.nn.Module, module_src: str, top_init_kwargs: dict, top_attrs: dict,
                 extra_buffers: dict | None = None) -> Reduce:
    def build(m: torch.nn.Module, top: bool) -> Reduce:
        cls = type(m).__name__
        params, buffers = {}, {}
        if cls in _HAS_RESAMPLE_FILTER:
            buffers["resample_filter"] = tensor(setup_filter([1, 3, 3, 1]))
        for name, p in m.named_parameters(recurse=False):
            params[name] = parameter(p)
        for name, b in m.named_buffers(recurse=False):
            if name == "resample_filter":
                continue
            buffers[name] = tensor(b)
        children = {name: build(c, False) for name, c in m.named_children()}
        attrs = dict(top_attrs) if top else _attrs_of(m)
        kwargs = top_init_kwargs if top else {}
        return persistent(cls, module_src, module_state(params, buffers, children, attrs, (), kwargs))

    return build(module, True)


def _attrs_of(m: torch.nn.Module) -> dict:
    """A few plain attributes as the real modules carry them (values are not read by the loader)."""
    cls = type(m).__name__
    out: dict[str, Any] = {}
    if cls == "FullyConnectedLayer":
        out = {"activation": m.activation, "weight_gain": np_float64(m.weight_gain), "bias_gain": m.bias_gain}
    elif cls in ("SynthesisLayer",):
        out = {"resolution": m.resolution, "up": m.up, "use_noise": True, "activation": "lrelu",
               "conv_clamp": m.conv_clamp, "padding": m.padding, "act_gain": np_float64(math.sqrt(2))}
    elif cls == "Conv2dLayer":
        out = {"activation": m.activation, "up": 1, "down": m.down, "conv_clamp": m.conv_clamp,
               "padding": m.padding, "weight_gain": np_float64(m.weight_gain), "act_gain": np_float64(m.act_gain)}
    elif cls == "MinibatchStdLayer":
        out = {"group_size": m.group_size, "num_channels": m.num_channels}
    return out


def nvidia_generator(G: Generator, variant: str = "ada", module_src: str | None = None,
                     init_kwargs: dict | None = None) -> Reduce:
    """The persistent-object record of G as NVIDIA's training loop pickles it."""
    cfg = G.cfg
    if init_kwargs is None:
        mapping = easydict(num_layers=cfg.mapping_layers)
        if cfg.layer_features is not None:
            mapping["layer_features"] = cfg.layer_features
        if variant == "ada":
            init_kwargs = {"z_dim": cfg.z_dim, "w_dim": cfg.w_dim, "mapping_kwargs": mapping,
                           "synthesis_kwargs": easydict(channel_base=cfg.channel_base, channel_max=cfg.channel_max,
                                                        num_fp16_res=cfg.num_fp16_res, conv_clamp=cfg.conv_clamp)}
        else:   # StyleGAN3 repo: flat synthesis kwargs; conv_clamp left to its default (256) when 256
            init_kwargs = {"z_dim": cfg.z_dim, "w_dim": cfg.w_dim, "mapping_kwargs": mapping,
                           "channel_base": cfg.channel_base, "channel_max": cfg.channel_max,
                           "fused_modconv_default": "inference_only"}
            if cfg.conv_clamp != 256:
                init_kwargs["conv_clamp"] = cfg.conv_clamp
            if cfg.num_fp16_res != 4:
                init_kwargs["num_fp16_res"] = cfg.num_fp16_res
        init_kwargs.update(c_dim=0, img_resolution=cfg.resolution, img_channels=cfg.img_channels)
    src = module_src or (ADA_MODULE_SRC if variant == "ada" else SG3REPO_MODULE_SRC)
    attrs = {"z_dim": cfg.z_dim, "c_dim": 0, "w_dim": cfg.w_dim, "img_resolution": cfg.resolution,
             "img_channels": cfg.img_channels, "num_ws": G.num_ws}
    return _module_tree(G, src, init_kwargs, attrs)


def nvidia_discriminator(D: Discriminator, variant: str = "ada", module_src: str | None = None) -> Reduce:
    cfg = D.cfg
    init_kwargs = {"block_kwargs": easydict(), "mapping_kwargs": easydict(),
                   "epilogue_kwargs": easydict(mbstd_group_size=cfg.mbstd_group_size),
                   "channel_base": cfg.channel_base, "channel_max": cfg.channel_max,
                   "num_fp16_res": cfg.num_fp16_res, "conv_clamp": cfg.conv_clamp,
                   "c_dim": 0, "img_resolution": cfg.resolution, "img_channels": cfg.img_channels}
    src = module_src or (ADA_MODULE_SRC if variant == "ada" else SG3REPO_MODULE_SRC)
    attrs = {"c_dim": 0, "img_resolution": cfg.resolution, "img_resolution_log2": int(math.log2(cfg.resolution)),
             "img_channels": cfg.img_channels, "block_resolutions": list(D.block_resolutions)}
    return _module_tree(D, src, init_kwargs, attrs)


def augment_pipe_record(module_src: str = "class AugmentPipe: pass\n") -> Reduce:
    """A small stand-in for ADA's AugmentPipe record (a persistent object with a buffer)."""
    state = module_state({}, {"p": tensor(torch.zeros([]))}, {}, {"xflip": 1.0, "rotate90": 1.0},
                         (), {"xflip": 1, "rotate90": 1})
    return persistent("AugmentPipe", module_src, state)


def network_pickle_bytes(G: Generator, D: Discriminator | None = None, variant: str = "ada", protocol: int = 4,
                         G_record: Any = None, extra: dict | None = None, with_augment: bool = True) -> bytes:
    """A whole training-loop snapshot: {G, D, G_ema, augment_pipe, training_set_kwargs}."""
    g_rec = G_record if G_record is not None else nvidia_generator(G, variant)
    data = {"G": g_rec, "D": nvidia_discriminator(D, variant) if D is not None else None, "G_ema": g_rec,
            "augment_pipe": augment_pipe_record() if with_augment else None,
            "training_set_kwargs": {"class_name": "training.dataset.ImageFolderDataset", "path": "/data/set.zip",
                                    "use_labels": False, "max_size": 1000, "xflip": False,
                                    "resolution": G.cfg.resolution}}
    data.update(extra or {})
    return dumps(data, protocol)


def stylegan3_pickle_bytes(protocol: int = 4) -> bytes:
    """A StyleGAN3 (alias-free) generator record: right module, a few tensors, no usable weights."""
    state = module_state({}, {"freqs": tensor(torch.randn(8, 2))}, {}, {"z_dim": 8},
                         (), {"z_dim": 8, "c_dim": 0, "w_dim": 8, "img_resolution": 16, "img_channels": 3,
                              "mapping_kwargs": easydict(num_layers=2), "channel_base": 256, "channel_max": 16,
                              "magnitude_ema_beta": 0.999})
    g = persistent("Generator", STYLEGAN3_MODULE_SRC, state)
    return dumps({"G": g, "D": None, "G_ema": g, "augment_pipe": None, "training_set_kwargs": None}, protocol)


# ---------------------------------------------------------------------------------------------
# Original TensorFlow StyleGAN2 pickles


TF_BUILD_SRC = "def G_main(*a, **k):\n    raise SystemExit('build code')\n"


def tf_network(name: str, static_kwargs: dict, variables: list, components: dict | None = None,
               build_module_src: str | None = None) -> NewObj:
    state = {"version": 4, "name": name, "static_kwargs": static_kwargs, "components": components or {},
             "build_module_src": build_module_src or TF_BUILD_SRC,
             "build_func_name": f"{name}_main", "variables": variables}
    return NewObj(GlobalRef("dnnlib.tflib.network", "Network"), state)


def tf_generator_variables(G: Generator) -> tuple[list, list, list]:
    """Our G → (Gs own variables, mapping variables, synthesis variables) in TF naming/layout."""
    sd = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in G.state_dict().items()}
    cfg = G.cfg
    own = [("lod", np.zeros([], np.float32)), ("dlatent_avg", sd["mapping.w_avg"])]
    mapping = []
    for i in range(cfg.mapping_layers):
        mapping += [(f"Dense{i}/weight", sd[f"mapping.fc{i}.weight"].T), (f"Dense{i}/bias", sd[f"mapping.fc{i}.bias"])]
    synth = [("lod", np.zeros([], np.float32))]

    def conv(src, tf_name, flip=False):
        w = sd[f"{src}.weight"].transpose(2, 3, 1, 0)
        if flip:
            w = w[::-1, ::-1]
        return [(f"{tf_name}/weight", w), (f"{tf_name}/mod_weight", sd[f"{src}.affine.weight"].T),
                (f"{tf_name}/mod_bias", sd[f"{src}.affine.bias"] - 1),
                (f"{tf_name}/noise_strength", sd[f"{src}.noise_strength"]), (f"{tf_name}/bias", sd[f"{src}.bias"])]

    def rgb(src, tf_name):
        return [(f"{tf_name}/weight", sd[f"{src}.weight"].transpose(2, 3, 1, 0)),
                (f"{tf_name}/mod_weight", sd[f"{src}.affine.weight"].T),
                (f"{tf_name}/mod_bias", sd[f"{src}.affine.bias"] - 1), (f"{tf_name}/bias", sd[f"{src}.bias"])]

    log2 = int(math.log2(cfg.resolution))
    noise = [sd["synthesis.b4.conv1.noise_const"]]
    for lg in range(3, log2 + 1):
        r = 2 ** lg
        noise += [sd[f"synthesis.b{r}.conv0.noise_const"], sd[f"synthesis.b{r}.conv1.noise_const"]]
    synth += [(f"noise{i}", n[None, None]) for i, n in enumerate(noise)]
    synth += [("4x4/Const/const", sd["synthesis.b4.const"][None])]
    synth += conv("synthesis.b4.conv1", "4x4/Conv") + rgb("synthesis.b4.torgb", "4x4/ToRGB")
    for lg in range(3, log2 + 1):
        r = 2 ** lg
        synth += conv(f"synthesis.b{r}.conv0", f"{r}x{r}/Conv0_up", flip=True)
        synth += conv(f"synthesis.b{r}.conv1", f"{r}x{r}/Conv1") + rgb(f"synthesis.b{r}.torgb", f"{r}x{r}/ToRGB")
    return own, mapping, synth


def tf_discriminator_variables(D: Discriminator) -> list:
    sd = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in D.state_dict().items()}
    k4 = lambda w: w.transpose(2, 3, 1, 0)  # noqa: E731  [O,I,kh,kw] → TF [kh,kw,I,O]
    res = D.cfg.resolution
    out = [(f"{res}x{res}/FromRGB/weight", k4(sd[f"b{res}.fromrgb.weight"])),
           (f"{res}x{res}/FromRGB/bias", sd[f"b{res}.fromrgb.bias"])]
    for r in D.block_resolutions:
        out += [(f"{r}x{r}/Conv0/weight", k4(sd[f"b{r}.conv0.weight"])), (f"{r}x{r}/Conv0/bias", sd[f"b{r}.conv0.bias"]),
                (f"{r}x{r}/Conv1_down/weight", k4(sd[f"b{r}.conv1.weight"])),
                (f"{r}x{r}/Conv1_down/bias", sd[f"b{r}.conv1.bias"]),
                (f"{r}x{r}/Skip/weight", k4(sd[f"b{r}.skip.weight"]))]
    out += [("4x4/Conv/weight", k4(sd["b4.conv.weight"])), ("4x4/Conv/bias", sd["b4.conv.bias"]),
            ("4x4/Dense0/weight", sd["b4.fc.weight"].T), ("4x4/Dense0/bias", sd["b4.fc.bias"]),
            ("Output/weight", sd["b4.out.weight"].T), ("Output/bias", sd["b4.out.bias"])]
    return out


def tf_static_kwargs_G(G: Generator) -> dict:
    cfg = G.cfg
    assert cfg.channel_base % 2 == 0
    return {"num_channels": cfg.img_channels, "resolution": cfg.resolution, "label_size": 0,
            "latent_size": cfg.z_dim, "dlatent_size": cfg.w_dim, "mapping_layers": cfg.mapping_layers,
            "mapping_fmaps": cfg.layer_features or cfg.w_dim, "fmap_base": cfg.channel_base // 2,
            "fmap_max": cfg.channel_max}


def tf_pickle_bytes(G: Generator, D: Discriminator, protocol: int = 4, build_module_src: str | None = None) -> bytes:
    """(G, D, Gs) like the original StyleGAN2 release; G and Gs share the weights here."""
    own, mapping, synth = tf_generator_variables(G)
    arr = lambda items: [(n, np_array(v)) for n, v in items]  # noqa: E731
    skw = tf_static_kwargs_G(G)
    comps = {"mapping": tf_network("G_mapping", dict(skw), arr(mapping), build_module_src=build_module_src),
             "synthesis": tf_network("G_synthesis", dict(skw), arr(synth), build_module_src=build_module_src)}
    Gs = tf_network("G", skw, arr(own), comps, build_module_src=build_module_src)
    dkw = {"num_channels": D.cfg.img_channels, "resolution": D.cfg.resolution, "label_size": 0,
           "fmap_base": D.cfg.channel_base // 2, "fmap_max": D.cfg.channel_max,
           "mbstd_group_size": D.cfg.mbstd_group_size}
    Dn = tf_network("D", dkw, arr(tf_discriminator_variables(D)))
    return dumps((Gs, Dn, Gs), protocol)


# ---------------------------------------------------------------------------------------------
# rosinality layout


def rosinality_state_dicts(G: Generator, D: Discriminator | None = None) -> tuple[dict, dict | None]:
    """Our modules' weights → rosinality `Generator` / `Discriminator` state dicts (our own mapping)."""
    sd = {k: v.detach().clone() for k, v in G.state_dict().items()}
    cfg = G.cfg
    g: dict[str, torch.Tensor] = {}
    for i in range(cfg.mapping_layers):
        g[f"style.{i + 1}.weight"] = sd[f"mapping.fc{i}.weight"]
        g[f"style.{i + 1}.bias"] = sd[f"mapping.fc{i}.bias"]
    g["input.input"] = sd["synthesis.b4.const"][None]

    def styled(dst, src, noise_idx, up):
        g[f"{dst}.conv.weight"] = sd[f"{src}.weight"][None]
        g[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"]
        g[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"]
        if up:
            g[f"{dst}.conv.blur.kernel"] = setup_filter([1, 3, 3, 1]) * 4
        g[f"{dst}.noise.weight"] = sd[f"{src}.noise_strength"].reshape(1)
        g[f"{dst}.activate.bias"] = sd[f"{src}.bias"]
        g[f"noises.noise_{noise_idx}"] = sd[f"{src}.noise_const"][None, None]

    def rgb(dst, src, up):
        if up:
            g[f"{dst}.upsample.kernel"] = setup_filter([1, 3, 3, 1]) * 4
        g[f"{dst}.conv.weight"] = sd[f"{src}.weight"][None]
        g[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"]
        g[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"]
        g[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(1, -1, 1, 1)

    styled("conv1", "synthesis.b4.conv1", 0, False)
    rgb("to_rgb1", "synthesis.b4.torgb", False)
    for j in range(int(math.log2(cfg.resolution)) - 2):
        r = 2 ** (j + 3)
        styled(f"convs.{2 * j}", f"synthesis.b{r}.conv0", 2 * j + 1, True)
        styled(f"convs.{2 * j + 1}", f"synthesis.b{r}.conv1", 2 * j + 2, False)
        rgb(f"to_rgbs.{j}", f"synthesis.b{r}.torgb", True)
    d = None
    if D is not None:
        dsd = {k: v.detach().clone() for k, v in D.state_dict().items()}
        res = D.cfg.resolution
        d = {"convs.0.0.weight": dsd[f"b{res}.fromrgb.weight"], "convs.0.1.bias": dsd[f"b{res}.fromrgb.bias"]}
        for k, r in enumerate(D.block_resolutions, start=1):
            d[f"convs.{k}.conv1.0.weight"] = dsd[f"b{r}.conv0.weight"]
            d[f"convs.{k}.conv1.1.bias"] = dsd[f"b{r}.conv0.bias"]
            d[f"convs.{k}.conv2.0.kernel"] = setup_filter([1, 3, 3, 1])
            d[f"convs.{k}.conv2.1.weight"] = dsd[f"b{r}.conv1.weight"]
            d[f"convs.{k}.conv2.2.bias"] = dsd[f"b{r}.conv1.bias"]
            d[f"convs.{k}.skip.0.kernel"] = setup_filter([1, 3, 3, 1])
            d[f"convs.{k}.skip.1.weight"] = dsd[f"b{r}.skip.weight"]
        d.update({"final_conv.0.weight": dsd["b4.conv.weight"], "final_conv.1.bias": dsd["b4.conv.bias"],
                  "final_linear.0.weight": dsd["b4.fc.weight"], "final_linear.0.bias": dsd["b4.fc.bias"],
                  "final_linear.1.weight": dsd["b4.out.weight"], "final_linear.1.bias": dsd["b4.out.bias"]})
    return g, d


def rosinality_training_checkpoint(G: Generator, D: Discriminator | None = None, latent_avg: bool = True) -> dict:
    """What rosinality's train.py saves (minus optimiser contents): g, d, g_ema, args, ada_aug_p."""
    g, d = rosinality_state_dicts(G, D)
    ckpt = {"g": g, "g_ema": g, "args": argparse.Namespace(size=G.cfg.resolution, channel_multiplier=2, iter=10,
                                                           batch=4, lr=0.002, r1=10.0, augment=False),
            "ada_aug_p": 0.0, "g_optim": {"state": {}, "param_groups": []}, "d_optim": {"state": {}, "param_groups": []}}
    if d is not None:
        ckpt["d"] = d
    if latent_avg:
        ckpt["latent_avg"] = G.mapping.w_avg.detach().clone()
    return ckpt


# ---------------------------------------------------------------------------------------------
# Hostile payloads for the refusal tests


def os_system(command: str) -> Reduce:
    """`os.system(command)` as a pickle REDUCE — what a hostile checkpoint would contain."""
    return Reduce(GlobalRef("os", "system"), (command,))


def posix_system(command: str) -> Reduce:
    return Reduce(GlobalRef("posix", "system"), (command,))


def builtins_exec(code: str) -> Reduce:
    return Reduce(GlobalRef("builtins", "exec"), (code,))


def storage_bytes_with(inner: Any) -> Reduce:
    """`torch.storage._load_from_bytes` whose legacy bytes hide `inner` in the storage record."""
    data = legacy_storage_bytes(torch.zeros(4), inner=inner)
    return Reduce(GlobalRef("torch.storage", "_load_from_bytes"), (data,))


# ---------------------------------------------------------------------------------------------
# Hostile files: tiny pickles whose shared references multiply when walked as trees


def shared_list_dag(depth: int, width: int) -> list:
    """[x]*width nested `depth` times: pickled as one memo reference per item, a few bytes a
    level, but width**depth values when walked as a tree."""
    node: Any = [0]
    for _ in range(depth):
        node = [node] * width
    return node


def module_dag(depth: int) -> Reduce:
    """A persistent module whose two submodules are the same module, `depth` levels deep."""
    node = persistent("FullyConnectedLayer", "class FullyConnectedLayer: pass\n",
                      module_state({"weight": parameter(torch.zeros(1))}, {}, {}, {}, (), {}))
    for _ in range(depth):
        node = persistent("FullyConnectedLayer", "class FullyConnectedLayer: pass\n",
                          module_state({}, {}, {"a": node, "b": node}, {}, (), {}))
    return node


def tf_component_dag(depth: int, width: int) -> NewObj:
    """A TensorFlow network whose components are `width` references to one network, nested."""
    node = tf_network("leaf", {}, [("w", np_array(np.zeros(1)))])
    for i in range(depth):
        node = tf_network(f"n{i}", {}, [], components={f"c{j}": node for j in range(width)})
    return node


def cloned_tensor_bomb(storage_floats: int, copies: int) -> Reduce:
    """`copies` tensors that each copy (offset 1: not a plain view) one shared storage."""
    storage = Reduce(GlobalRef("torch.storage", "_load_from_bytes"),
                     (legacy_storage_bytes(torch.zeros(storage_floats)),))
    rebuild = GlobalRef("torch._utils", "_rebuild_tensor_v2")
    args = (storage, 1, (storage_floats - 1,), (1,), False, collections.OrderedDict())
    return [Reduce(rebuild, args) for _ in range(copies)]
