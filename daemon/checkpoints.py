"""Checkpoint loading and saving: every supported format → our own Generator/Discriminator.

Supported inputs (the format is sniffed from the file's content, not its extension):

* **NVIDIA network pickles** (StyleGAN2-ADA-PyTorch `training/networks.py`, the StyleGAN3
  repository's `training/networks_stylegan2.py`), as the DragGAN model zoo uses them: a dict
  with ``G``, ``D``, ``G_ema``, ``training_set_kwargs``, ``augment_pipe``. Each network is a
  ``torch_utils.persistence`` object that embeds the Python source of its module and, under
  plain ``pickle``, executes it. We never do that: a restricted unpickler resolves only a short
  list of globals, each to a function of ours that builds inert data (a record of class name,
  init kwargs and state; tensors rebuilt from their raw bytes). The embedded source is only
  *parsed* (``ast``, never executed) to read the defaults of the constructor arguments.
* **NVIDIA TensorFlow pickles** (original StyleGAN2: ``stylegan2-car-config-f.pkl``,
  ``stylegan2-cat-config-f.pkl``): a tuple ``(G, D, Gs)`` of ``dnnlib.tflib.network.Network``
  states holding numpy arrays; converted with the variable mapping of NVIDIA's ``legacy.py``.
* **rosinality** ``.pt`` checkpoints (``g_ema`` state dict, optional ``latent_avg``, ``d``),
  read with ``torch.load(weights_only=True)``.
* **dragd native** ``.safetensors``: metadata ``format=dragd``, ``format_version=1``,
  ``generator_config`` (JSON), optional ``discriminator_config``, free-form info; tensors
  ``G.<name>`` / ``D.<name>`` in fp16 or fp32.

Anything else fails with a `CheckpointError` whose message says what the file is and what to
do. `load_checkpoint(path)` is the one entry point.
"""
from __future__ import annotations

import argparse
import ast
import collections
import io
import json
import math
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .ops import setup_filter
from .stylegan2 import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig

NATIVE_FORMAT = "dragd"
NATIVE_FORMAT_VERSION = "1"
SUPPORTED = ("StyleGAN2 / StyleGAN2-ADA network pickles (PyTorch or the original TensorFlow ones), "
             "rosinality .pt, dragd .safetensors")


class CheckpointError(Exception):
    """A checkpoint could not be loaded; the message says why and what to do."""


@dataclass
class LoadedModel:
    G: Generator                          # eval mode, requires_grad False
    D: Discriminator | None               # None when the checkpoint has none (or it is unusable)
    info: dict = field(default_factory=dict)   # format, name, path, source facts, warnings


# =============================================================================================
# Restricted unpickling: inert stand-ins for the few globals real checkpoints use.


class _Refused(CheckpointError):
    pass


class _Inert:
    """Base of our stand-in objects: pickle's BUILD on them is refused."""
    __slots__ = ()

    def __setstate__(self, state):
        raise _Refused(f"unexpected object state for {type(self).__name__}")

    def __reduce__(self):  # never pickled back out
        raise TypeError(f"{type(self).__name__} is a loader-internal object")


class PersistentRecord(_Inert):
    """What `torch_utils.persistence._reconstruct_persistent_obj(meta)` stands for, unexecuted."""
    __slots__ = ("class_name", "module_src", "state", "version")

    def __init__(self, class_name: str, module_src: str, state: dict, version: int):
        self.class_name, self.module_src, self.state, self.version = class_name, module_src, state, version

    @property
    def init_args(self) -> tuple:
        return tuple(self.state.get("_init_args", ()) or ())

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get("_init_kwargs", {}) or {})

    def __repr__(self):
        return f"PersistentRecord({self.class_name})"


class TFNetworkRecord(_Inert):
    """Stand-in for `dnnlib.tflib.network.Network`: keeps the pickled state, builds no graph."""
    __slots__ = ("state",)

    def __init__(self, *args):
        self.state = None

    def __setstate__(self, state):
        if not isinstance(state, dict) or getattr(self, "state", None) is not None:
            raise _Refused("malformed TensorFlow network state")
        self.state = state


class _EasyDict(dict):
    """Stand-in for `dnnlib.util.EasyDict`: a plain dict (no attribute magic)."""
    __slots__ = ()

    def __setstate__(self, state):
        if state:
            raise _Refused("unexpected EasyDict state")

    def __reduce__(self):
        return (dict, (dict(self),))


class _Storage(_Inert):
    """A rebuilt tensor storage: a flat tensor of its dtype."""
    __slots__ = ("flat",)

    def __init__(self, flat: torch.Tensor):
        self.flat = flat


class _StorageType(_Inert):
    __slots__ = ("dtype", "name")

    def __init__(self, dtype: torch.dtype, name: str):
        self.dtype, self.name = dtype, name


class _TypeMarker(_Inert):
    """Stands for a class that real pickles name but that we never call (torch.Tensor, …)."""
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


_TENSOR_TYPE = _TypeMarker("torch.Tensor")
_PARAMETER_TYPE = _TypeMarker("torch.nn.parameter.Parameter")
_NDARRAY_TYPE = _TypeMarker("numpy.ndarray")

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_TORCH_PROTOCOL = 1001
_MAX_TENSOR_BYTES = 4 << 30


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Plain data only: any global at all is refused."""

    def find_class(self, module, name):
        raise _Refused(f"refused global {module}.{name} inside legacy tensor bytes")


class _LegacyStorageUnpickler(pickle.Unpickler):
    """The object record of a legacy `torch.save`: storage type names and storage references."""

    def __init__(self, f):
        super().__init__(f)
        self.storages: dict[str, tuple[_StorageType, int]] = {}
        self.placeholders: dict[str, "_PendingStorage"] = {}

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name], name)
        raise _Refused(f"refused global {module}.{name} inside legacy tensor bytes")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise _Refused(f"unexpected persistent id in legacy tensor bytes: {str(pid)[:80]}")
        _, stype, key, _location, numel, view = pid
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not _is_int(numel) or numel < 0:
            raise _Refused("malformed storage reference in legacy tensor bytes")
        if view is not None:
            raise _Refused("storage views in legacy tensor bytes are not supported")
        if key in self.storages and self.storages[key] != (stype.dtype, numel):
            raise _Refused("inconsistent storage reference in legacy tensor bytes")
        self.storages[key] = (stype.dtype, numel)
        return self.placeholders.setdefault(key, _PendingStorage(key))


class _PendingStorage(_Inert):
    __slots__ = ("key",)

    def __init__(self, key):
        self.key = key


def _read_legacy_storage(data: bytes) -> _Storage:
    """Parse the bytes of a legacy (non-zip) `torch.save(storage)`.

    Layout: pickled magic number, protocol version, sys-info dict, the object (a persistent
    storage reference), the list of storage keys, then per key an int64 element count and
    the raw little-endian data. Every pickle in it is read with globals refused except the
    storage type names; nothing in it can run code.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise _Refused("torch.storage._load_from_bytes called with non-bytes")
    f = io.BytesIO(data)
    try:
        magic = _NoGlobalsUnpickler(f).load()
        if magic != _LEGACY_TORCH_MAGIC:
            raise _Refused("tensor bytes are not in the legacy torch.save format")
        if _NoGlobalsUnpickler(f).load() != _LEGACY_TORCH_PROTOCOL:
            raise _Refused("unsupported legacy torch.save protocol version")
        sys_info = _NoGlobalsUnpickler(f).load()
        if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
            raise _Refused("big-endian legacy tensor data is not supported")
        up = _LegacyStorageUnpickler(f)
        root = up.load()
        keys = _NoGlobalsUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError) as exc:
        raise _Refused(f"corrupt legacy tensor bytes ({exc})") from None
    if not isinstance(root, _PendingStorage) or not isinstance(keys, list):
        raise _Refused("legacy tensor bytes do not hold a single storage")
    result = None
    for key in keys:
        if key not in up.storages:
            raise _Refused("legacy tensor bytes list an unknown storage key")
        dtype, numel = up.storages[key]
        head = f.read(8)
        if len(head) != 8:
            raise _Refused("legacy tensor bytes are truncated")
        (count,) = struct.unpack("<q", head)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if count != numel or count * itemsize > _MAX_TENSOR_BYTES:
            raise _Refused("legacy tensor bytes have an inconsistent size")
        raw = f.read(count * itemsize)
        if len(raw) != count * itemsize:
            raise _Refused("legacy tensor bytes are truncated")
        if key == root.key:
            flat = torch.empty(count, dtype=dtype)
            if count:
                flat.view(torch.uint8).numpy()[:] = np.frombuffer(raw, dtype=np.uint8)
            result = _Storage(flat)
    if result is None:
        raise _Refused("legacy tensor bytes lack the data of their storage")
    return result


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise _Refused("tensor rebuilt from something that is not a storage")
    if not (_is_int(storage_offset) and isinstance(size, tuple) and isinstance(stride, tuple)
            and len(size) == len(stride) and all(_is_int(v) and v >= 0 for v in size + stride)
            and storage_offset >= 0):
        raise _Refused("malformed tensor geometry")
    numel = math.prod(size)
    if numel:
        extent = storage_offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1
        if extent > storage.flat.numel() or numel > storage.flat.numel():
            raise _Refused("tensor geometry exceeds its storage")
    flat = storage.flat
    if storage_offset == 0 and numel == flat.numel() and stride == _contiguous_strides(size):
        return flat.view(size)                # the whole storage, contiguous: no copy needed
    return flat.as_strided(size, stride, storage_offset).clone()


def _contiguous_strides(size: tuple) -> tuple:
    out, acc = [], 1
    for s in reversed(size):
        out.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(out))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, torch.Tensor):
        raise _Refused("parameter rebuilt from something that is not a tensor")
    return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
    return _rebuild_parameter(data)


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in (_rebuild_tensor_v2, _rebuild_parameter, _rebuild_parameter_with_state):
        raise _Refused("_rebuild_from_type_v2 with an unexpected function")
    if new_type not in (_TENSOR_TYPE, _PARAMETER_TYPE) or not isinstance(args, tuple):
        raise _Refused("_rebuild_from_type_v2 with an unexpected type")
    return func(*args)


def _reconstruct_persistent_obj(meta):
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise _Refused("malformed torch_utils.persistence record")
    class_name, module_src, state = meta.get("class_name"), meta.get("module_src"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(module_src, str) or not isinstance(state, dict):
        raise _Refused("malformed torch_utils.persistence record")
    return PersistentRecord(class_name, module_src, dict(state), meta.get("version"))


# ---- numpy stand-ins (numpy scalars in module attributes; arrays in TensorFlow pickles) ----

_NP_DTYPE_RE = re.compile(r"^(b1|\?|[iu][1248]|f[248]|c(8|16))$")


class _NPDType(_Inert):
    __slots__ = ("spec", "order")

    def __init__(self, spec, align=False, copy=False):
        if not isinstance(spec, str) or not _NP_DTYPE_RE.match(spec):
            raise _Refused(f"refused numpy dtype {str(spec)[:20]!r}")
        self.spec, self.order = spec, "="

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise _Refused("malformed numpy dtype state")
        if len(state) > 2 and any(v is not None for v in state[2:5]):
            raise _Refused("structured numpy dtypes are not supported")
        self.order = state[1]

    def resolve(self) -> np.dtype:
        return np.dtype(("" if self.order == "|" else self.order) + self.spec)


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, _NPDType) or not isinstance(data, bytes):
        raise _Refused("malformed numpy scalar")
    dt = dtype.resolve()
    if len(data) != dt.itemsize:
        raise _Refused("malformed numpy scalar")
    return np.frombuffer(data, dtype=dt, count=1)[0]


class _NDArrayBuilder(_Inert):
    __slots__ = ("array",)

    def __init__(self):
        self.array = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or self.array is not None:
            raise _Refused("malformed numpy array state")
        if len(state) == 5:
            state = state[1:]
        if len(state) != 4:
            raise _Refused("malformed numpy array state")
        shape, dtype, fortran, raw = state
        self.array = _np_array(raw, dtype, shape, "F" if fortran else "C")


def _np_array(raw, dtype, shape, order) -> np.ndarray:
    if not isinstance(dtype, _NPDType):
        raise _Refused("numpy array with a refused dtype")
    if isinstance(raw, pickle.PickleBuffer):
        raw = bytes(raw.raw())
    if not isinstance(raw, (bytes, bytearray)):
        raise _Refused("numpy object arrays are refused")
    if not (isinstance(shape, tuple) and all(_is_int(s) and s >= 0 for s in shape)):
        raise _Refused("malformed numpy array shape")
    dt = dtype.resolve()
    if math.prod(shape) * dt.itemsize != len(raw):
        raise _Refused("numpy array data does not match its shape")
    return np.frombuffer(bytes(raw), dtype=dt).reshape(shape, order=order).copy()


def _np_reconstruct(cls, shape, typecode):
    if cls is not _NDARRAY_TYPE:
        raise _Refused("numpy _reconstruct of something that is not an ndarray")
    return _NDArrayBuilder()


def _np_frombuffer(buf, dtype, shape, order):
    return _np_array(buf, dtype, tuple(shape), order if order in ("C", "F") else "C")


def _codecs_encode(text, encoding="utf-8"):
    """Protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1')."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused("_codecs.encode used for something other than bytes")
    return text.encode("latin1")


_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")

#: The only globals a network pickle may name, each mapped to our own inert function.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib.tflib.network", "Network"): TFNetworkRecord,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set, ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset, ("__builtin__", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("_codecs", "encode"): _codecs_encode,
    ("torch", "Tensor"): _TENSOR_TYPE,
    ("torch.nn.parameter", "Parameter"): _PARAMETER_TYPE,
    ("torch.storage", "_load_from_bytes"): _read_legacy_storage,
    ("numpy", "dtype"): _NPDType,
    ("numpy", "ndarray"): _NDARRAY_TYPE,
    **{(m, "scalar"): _np_scalar for m in _NUMPY_CORE},
    **{(m, "_reconstruct"): _np_reconstruct for m in _NUMPY_CORE},
    **{(m, "_frombuffer"): _np_frombuffer for m in _NUMPY_NUMERIC},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only `ALLOWED_GLOBALS`; everything else raises a CheckpointError naming it."""

    def find_class(self, module, name):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise _Refused(f"refused global {module}.{name}") from None

    def persistent_load(self, pid):
        raise _Refused("refused persistent id (network pickles have none)")


def restricted_load(f) -> Any:
    """Unpickle a network pickle with `RestrictedUnpickler` (raises CheckpointError/pickle errors)."""
    return RestrictedUnpickler(f).load()


# =============================================================================================
# Reading the constructor signatures out of the embedded module source (parsed, not run).


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
_FILTER_TAPS = [1, 3, 3, 1]


def _plain(obj, depth=0):
    """EasyDict → dict, recursively (init kwargs)."""
    if depth > 20:
        raise CheckpointError("init kwargs nested too deeply")
    if isinstance(obj, dict):
        return {k: _plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v, depth + 1) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _filter_taps_ok(taps) -> bool:
    try:
        return list(np.asarray(taps, dtype=np.float64).ravel()) == _FILTER_TAPS and np.asarray(taps).ndim == 1
    except (TypeError, ValueError):
        return False


def _merge(base: dict, extra: dict, what: str) -> dict:
    """dict(base, **extra), refusing a key given twice (NVIDIA's own constructor would fail too)."""
    dup = set(base) & set(extra)
    if dup:
        raise CheckpointError(f"{what}: init argument(s) {sorted(dup)} given twice")
    return {**base, **extra}


def _require(cond: bool, msg: str):
    if not cond:
        raise CheckpointError(msg)


def _generator_config_from_record(rec: PersistentRecord, code: _ModuleCode, what: str) -> GeneratorConfig:
    g, g_extra = code.sig("Generator").bind(rec.init_args, _plain(rec.init_kwargs), f"{what} Generator")
    known = {"z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs"}
    for k, v in g.items():
        if k not in known and v is not None:       # e.g. DragGAN's `resize`, StyleGAN-Human's `square`
            raise CheckpointError(f"{what}: generator option {k}={v!r} is not supported")
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
    _require(arch == "skip", f"{what}: synthesis architecture {arch!r} is not supported (only 'skip', "
                             "the StyleGAN2 config-F layout)")
    _require(lyr.get("use_noise", True) is True, f"{what}: generators without noise inputs are not supported")
    _require(lyr.get("activation", "lrelu") == "lrelu" and m.get("activation", "lrelu") == "lrelu",
             f"{what}: only the lrelu activation is supported")
    _require(lyr.get("kernel_size", 3) == 3, f"{what}: only 3×3 synthesis convolutions are supported")
    for taps in (b.get("resample_filter", _FILTER_TAPS), lyr.get("resample_filter", _FILTER_TAPS)):
        _require(_filter_taps_ok(taps), f"{what}: resample filter {taps!r} is not supported (only [1,3,3,1])")
    conv_clamp = b.get("conv_clamp")
    try:
        return GeneratorConfig(
            resolution=g["img_resolution"], z_dim=g["z_dim"], w_dim=g["w_dim"], img_channels=g["img_channels"],
            channel_base=int(s.get("channel_base", 32768)), channel_max=int(s.get("channel_max", 512)),
            mapping_layers=int(m.get("num_layers", 8)),
            mapping_lr_multiplier=float(m.get("lr_multiplier", 0.01)),
            layer_features=m.get("layer_features"),
            conv_clamp=None if conv_clamp is None else float(conv_clamp),
            num_fp16_res=int(s.get("num_fp16_res", 0) or 0),
            w_avg_beta=float(m["w_avg_beta"]) if m.get("w_avg_beta") is not None else 0.995)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{what}: unsupported generator configuration ({exc})") from None


def _discriminator_config_from_record(rec: PersistentRecord, code: _ModuleCode, what: str) -> DiscriminatorConfig:
    d, _ = code.sig("Discriminator").bind(rec.init_args, _plain(rec.init_kwargs), f"{what} Discriminator")
    for k in ("c_dim", "img_resolution", "img_channels"):
        _require(_is_int(d.get(k)), f"{what}: discriminator init argument {k} missing or not an integer")
    _require(d["c_dim"] == 0, f"{what}: conditional discriminators (c_dim={d['c_dim']}) are not supported")
    arch = d.get("architecture", "resnet")
    _require(arch == "resnet", f"{what}: discriminator architecture {arch!r} is not supported (only 'resnet')")
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
    return DiscriminatorConfig(
        resolution=d["img_resolution"], img_channels=d["img_channels"],
        channel_base=int(d.get("channel_base", 32768)), channel_max=int(d.get("channel_max", 512)),
        conv_clamp=None if conv_clamp is None else float(conv_clamp),
        mbstd_group_size=None if gs is None else int(gs),
        mbstd_num_channels=int(epi.get("mbstd_num_channels", 1)),
        num_fp16_res=int(d.get("num_fp16_res", 0) or 0))


def _record_state_dict(rec: PersistentRecord, prefix: str = "", out: dict | None = None, depth: int = 0) -> dict:
    """Flatten a record tree into a state dict (parameters + persistent buffers)."""
    out = {} if out is None else out
    if depth > 32:
        raise CheckpointError("network module tree nested too deeply")
    st = rec.state
    non_persistent = st.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        items = st.get(group) or {}
        if not isinstance(items, dict):
            raise CheckpointError(f"malformed module state at {prefix or 'top level'}")
        for name, t in items.items():
            if t is None or (group == "_buffers" and name in non_persistent):
                continue
            if not isinstance(t, torch.Tensor):
                raise CheckpointError(f"{prefix}{name} is not a tensor")
            out[prefix + name] = t
    for name, child in (st.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise CheckpointError(f"submodule {prefix}{name} is not a persistent network module")
        _record_state_dict(child, f"{prefix}{name}.", out, depth + 1)
    return out


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


def expected_numel(cfg: GeneratorConfig | DiscriminatorConfig) -> int:
    """Number of elements in the state dict of Generator(cfg) / Discriminator(cfg), computed
    without building anything (a hostile config must not make us allocate gigabytes)."""
    if isinstance(cfg, GeneratorConfig):
        hidden = cfg.layer_features or cfg.w_dim
        feats = [cfg.z_dim] + [hidden] * (cfg.mapping_layers - 1) + [cfg.w_dim]
        n = sum(a * b + b for a, b in zip(feats, feats[1:])) + cfg.w_dim            # fc layers, w_avg
        modconv = lambda i, o, k, res: o * i * k * k + cfg.w_dim * i + i + o + (res * res + 1 if k == 3 else 0)  # noqa: E731
        for log2 in range(2, int(math.log2(cfg.resolution)) + 1):
            res = 2 ** log2
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


def _from_nvidia_pickle_dict(data: dict, name: str) -> LoadedModel:
    warnings: list[str] = []
    key = next((k for k in ("G_ema", "G") if isinstance(data.get(k), PersistentRecord)), None)
    if key is None:
        raise CheckpointError(f"{name}: network pickle without G_ema or G (keys: {sorted(map(str, data))[:8]})")
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


# =============================================================================================
# Original TensorFlow StyleGAN2 pickles (variable mapping as in NVIDIA's legacy.py).

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

    def walk(prefix, n, depth):
        if depth > 8 or not isinstance(n, TFNetworkRecord) or not isinstance(n.state, dict):
            raise CheckpointError(f"{what}: malformed TensorFlow network")
        for item in n.state.get("variables") or []:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
                raise CheckpointError(f"{what}: malformed TensorFlow variable list")
            value = item[1]
            if isinstance(value, _NDArrayBuilder):
                value = value.array
            if isinstance(value, np.generic):
                value = np.asarray(value)
            if not isinstance(value, np.ndarray):
                raise CheckpointError(f"{what}: TensorFlow variable {item[0]} is not an array")
            out[prefix + item[0]] = value
        for cname, comp in (n.state.get("components") or {}).items():
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
                                                  f"{k('architecture', 'skip')!r} is not supported")
    _require(k("use_noise", True) is True, f"{what}: generators without noise are not supported")
    _require(k("nonlinearity", "lrelu") == "lrelu" and k("mapping_nonlinearity", "lrelu") == "lrelu",
             f"{what}: only lrelu is supported")
    _require(_filter_taps_ok(k("resample_kernel", _FILTER_TAPS)), f"{what}: resample kernel is not [1,3,3,1]")
    params = _tf_params(tf_Gs, what)
    if any(re.fullmatch(r"synthesis/ToRGB_lod\d+/.*", n) for n in params):
        raise CheckpointError(f"{what}: 'orig' synthesis architecture (ToRGB_lod) is not supported")
    w_dim = int(k("dlatent_size", 512))
    conv_clamp = kw.get("conv_clamp")
    cfg = GeneratorConfig(
        resolution=int(k("resolution", 1024)), z_dim=int(k("latent_size", 512)), w_dim=w_dim,
        img_channels=int(k("num_channels", 3)), channel_base=int(k("fmap_base", 16384)) * 2,
        channel_max=int(k("fmap_max", 512)), mapping_layers=int(k("mapping_layers", 8)),
        mapping_lr_multiplier=float(k("mapping_lrmul", 0.01)), layer_features=kw.get("mapping_fmaps"),
        conv_clamp=None if conv_clamp is None else float(conv_clamp),
        num_fp16_res=int(k("num_fp16_res", 0)), w_avg_beta=float(k("w_avg_beta", 0.995)))
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
    for log2 in range(3, int(math.log2(cfg.resolution)) + 1):
        r = 2 ** log2
        modconv(f"synthesis.b{r}.conv0", f"{r}x{r}/Conv0_up", 2 * log2 - 5, flip=True)
        modconv(f"synthesis.b{r}.conv1", f"{r}x{r}/Conv1", 2 * log2 - 4)
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
    _require(k("architecture", "resnet") == "resnet", f"architecture {k('architecture', 'resnet')!r}")
    _require(k("nonlinearity", "lrelu") == "lrelu", "activation is not lrelu")
    _require(_filter_taps_ok(k("resample_kernel", _FILTER_TAPS)), "resample kernel is not [1,3,3,1]")
    conv_clamp = kw.get("conv_clamp")
    cfg = DiscriminatorConfig(
        resolution=int(k("resolution", 1024)), img_channels=int(k("num_channels", 3)),
        channel_base=int(k("fmap_base", 16384)) * 2, channel_max=int(k("fmap_max", 512)),
        conv_clamp=None if conv_clamp is None else float(conv_clamp),
        mbstd_group_size=int(k("mbstd_group_size", 4)),    # D_stylegan2's own default
        mbstd_num_channels=int(k("mbstd_num_features", 1)), num_fp16_res=int(k("num_fp16_res", 0)))
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


def load_network_pickle(path: str | os.PathLike, name: str | None = None) -> LoadedModel:
    """NVIDIA network pickle (PyTorch or TensorFlow StyleGAN2) → our modules, executing nothing."""
    name = name or Path(path).name
    try:
        with open(path, "rb") as f:
            obj = restricted_load(f)
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {name} was refused: {exc}. A network pickle may only contain "
                              "StyleGAN network records and tensors; this one asks for something else, so it "
                              "is not loaded (loading it with plain pickle could run arbitrary code)") from None
    except (EOFError, pickle.UnpicklingError) as exc:
        if isinstance(exc, EOFError) or "truncated" in str(exc):
            raise CheckpointError(f"checkpoint {name} is truncated (incomplete download?): {exc}; "
                                  "download it again") from None
        raise CheckpointError(f"checkpoint {name} is not a valid pickle ({exc})") from None
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, RecursionError, MemoryError,
            OverflowError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {name} is a malformed network pickle ({type(exc).__name__}: "
                              f"{str(exc)[:200]})") from None
    try:
        if isinstance(obj, tuple) and len(obj) == 3 and all(isinstance(n, TFNetworkRecord) for n in obj):
            return _from_tf_pickle(obj, name)
        if isinstance(obj, dict) and any(isinstance(v, PersistentRecord) for v in obj.values()):
            return _from_nvidia_pickle_dict(obj, name)
        if isinstance(obj, PersistentRecord):
            return _from_nvidia_pickle_dict({"G_ema": obj}, name)
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, RecursionError, OverflowError) as exc:
        raise CheckpointError(f"checkpoint {name} is a malformed network pickle ({type(exc).__name__}: "
                              f"{str(exc)[:200]})") from None
    raise CheckpointError(f"checkpoint {name} is a pickle but not a StyleGAN network pickle "
                          f"(top level: {type(obj).__name__}); supported: {SUPPORTED}")


# =============================================================================================
# rosinality/stylegan2-pytorch .pt checkpoints


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
    except ValueError as exc:
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
    for j in range(int(math.log2(cfg.resolution)) - 2):
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
    cfg = DiscriminatorConfig(resolution=resolution, img_channels=img_channels, channel_base=base,
                              channel_max=cmax, conv_clamp=None, mbstd_group_size=4, mbstd_num_channels=1)
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


def load_rosinality(path: str | os.PathLike, name: str | None = None) -> LoadedModel:
    name = name or Path(path).name
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


# =============================================================================================
# Native safetensors


def save_native(path: str | os.PathLike, G: Generator, D: Discriminator | None = None,
                info: dict | None = None, dtype: torch.dtype = torch.float16) -> None:
    """Write G (and D) as dragd safetensors; info values are stored as strings (JSON if not str)."""
    from safetensors.torch import save_file

    if dtype not in (torch.float16, torch.float32):
        raise ValueError("dtype must be torch.float16 or torch.float32")
    tensors = {f"G.{k}": v.detach().to("cpu", dtype).contiguous() for k, v in G.state_dict().items()}
    meta = {}
    for k, v in (info or {}).items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    meta.update(format=NATIVE_FORMAT, format_version=NATIVE_FORMAT_VERSION, generator_config=G.cfg.to_json(),
                dtype=str(dtype).removeprefix("torch."))
    if D is not None:
        tensors.update({f"D.{k}": v.detach().to("cpu", dtype).contiguous() for k, v in D.state_dict().items()})
        meta["discriminator_config"] = D.cfg.to_json()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.chmod(tmp, 0o644)            # safetensors writes 0600; a model is meant to be shared
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_native(path: str | os.PathLike, name: str | None = None) -> LoadedModel:
    from safetensors import SafetensorError, safe_open

    name = name or Path(path).name
    what = f"checkpoint {name}"
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            if meta.get("format") != NATIVE_FORMAT:
                raise CheckpointError(f"{what} is a safetensors file but not a dragd model (metadata format="
                                      f"{meta.get('format')!r}); convert it with `dragd models convert`")
            if meta.get("format_version") != NATIVE_FORMAT_VERSION:
                raise CheckpointError(f"{what} has dragd format version {meta.get('format_version')!r}; this "
                                      f"dragd reads version {NATIVE_FORMAT_VERSION}: update dragd")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, ValueError, OSError) as exc:
        msg = str(exc)
        hint = " (truncated or incomplete download?)" if re.search(r"incomplete|truncat|too small|out of bounds|"
                                                                     r"MetadataIncompleteBuffer|InvalidOffset", msg, re.I) else ""
        raise CheckpointError(f"{what} is a damaged safetensors file{hint}: {msg[:200]}") from None
    try:
        gcfg = GeneratorConfig.from_json(meta["generator_config"])
        dcfg = DiscriminatorConfig.from_json(meta["discriminator_config"]) if "discriminator_config" in meta else None
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{what}: bad model configuration in metadata ({exc})") from None
    g_sd = {k[2:]: v for k, v in tensors.items() if k.startswith("G.")}
    d_sd = {k[2:]: v for k, v in tensors.items() if k.startswith("D.")}
    other = [k for k in tensors if not k.startswith(("G.", "D."))]
    if other:
        raise CheckpointError(f"{what}: unexpected tensors {other[:4]}")
    G = _build(Generator, gcfg, g_sd, what)
    D = None
    if dcfg is not None:
        D = _build(Discriminator, dcfg, d_sd, f"{what} (D)")
    elif d_sd:
        raise CheckpointError(f"{what}: discriminator tensors without discriminator_config")
    info = {k: v for k, v in meta.items() if k not in ("generator_config", "discriminator_config")}
    info["format"] = "dragd"
    info["warnings"] = []
    return LoadedModel(_finish(G), _finish(D), info)


# =============================================================================================
# Sniffing and the entry point

_LEGACY_TORCH_HEAD = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
_WRONG_FORMATS = [
    (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip archive (unpack it first)"), (b"BZh", "a bzip2 archive (unpack it first)"),
    (b"\xfd7zXZ", "an xz archive (unpack it first)"), (b"7z\xbc\xaf", "a 7-zip archive (unpack it first)"),
    (b"Rar!", "a RAR archive (unpack it first)"), (b"%PDF", "a PDF document"),
]


def sniff_format(path: str | os.PathLike) -> str:
    """→ 'safetensors' | 'torch-zip' | 'torch-legacy' | 'pickle'; CheckpointError for anything else."""
    p = Path(path)
    name = p.name
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(64)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {path} is a directory, not a file") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from None
    if size == 0:
        raise CheckpointError(f"checkpoint {name} is empty (0 bytes): the download failed; fetch it again")
    if len(head) >= 9 and head[8:9] == b"{":
        (hlen,) = struct.unpack("<Q", head[:8])
        if hlen > 100 << 20:
            raise CheckpointError(f"checkpoint {name} is not a valid safetensors file (header length {hlen})")
        if 8 + hlen > size:
            raise CheckpointError(f"checkpoint {name} is a truncated safetensors file ({size} bytes, header "
                                  f"alone needs {8 + hlen}); download or export it again")
        return "safetensors"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "torch-zip"
    if head.startswith(_LEGACY_TORCH_HEAD):
        return "torch-legacy"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    for magic, what in _WRONG_FORMATS:
        if head.startswith(magic):
            raise CheckpointError(f"checkpoint {name} is {what}, not a model; supported: {SUPPORTED}")
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        raise CheckpointError(f"checkpoint {name} is an HTML page, not a model (the download returned an error "
                              f"or login page); supported: {SUPPORTED}")
    if text.startswith((b"{", b"[")):
        raise CheckpointError(f"checkpoint {name} looks like a JSON/text file, not a model; supported: {SUPPORTED}")
    if head[:1] in (b"(", b"c", b"}", b"]") and b"\n" in head:
        raise CheckpointError(f"checkpoint {name} is a protocol-0/1 pickle; network pickles use protocol 2 or "
                              f"later; supported: {SUPPORTED}")
    raise CheckpointError(f"checkpoint {name} is in an unknown format (first bytes {head[:8].hex()}); "
                          f"supported: {SUPPORTED}")


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Any supported checkpoint → LoadedModel(G, D, info) on `device`, in eval mode, frozen."""
    p = Path(path)
    kind = sniff_format(p)
    if kind == "safetensors":
        loaded = load_native(p)
    elif kind == "pickle":
        loaded = load_network_pickle(p)
    else:
        if kind == "torch-zip":
            try:
                with zipfile.ZipFile(p) as z:
                    names = z.namelist()
            except (zipfile.BadZipFile, ValueError, NotImplementedError, OSError, EOFError):
                raise CheckpointError(f"checkpoint {p.name} is a truncated or damaged zip file (incomplete "
                                      "download?); download it again") from None
            if not any(n.endswith("data.pkl") for n in names):
                raise CheckpointError(f"checkpoint {p.name} is a zip archive but not a torch.save file "
                                      f"(contains {names[:4]}); supported: {SUPPORTED}")
        loaded = load_rosinality(p)
    loaded.info.setdefault("warnings", [])
    loaded.info.update(name=p.stem, path=str(p), resolution=loaded.G.cfg.resolution,
                       has_discriminator=loaded.D is not None)
    loaded.G.to(device)
    if loaded.D is not None:
        loaded.D.to(device)
    return loaded


__all__ = ["CheckpointError", "LoadedModel", "load_checkpoint", "save_native", "load_native",
           "load_network_pickle", "load_rosinality", "sniff_format", "restricted_load", "RestrictedUnpickler",
           "ALLOWED_GLOBALS", "PersistentRecord", "rosinality_to_ours", "rosinality_generator_config",
           "rosinality_discriminator_to_ours"]
