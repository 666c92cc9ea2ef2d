"""The restricted unpickler: the security boundary for NVIDIA network pickles.

Plain ``pickle`` would run the Python source those pickles embed. Here only the globals in
`ALLOWED_GLOBALS` resolve, each to a function of ours that builds inert data (records of class
name, init kwargs and state; tensors and arrays rebuilt from their raw bytes by our own
readers); every other global is refused with a CheckpointError naming it. This file imports
nothing of the generator, so it can be audited on its own."""
from __future__ import annotations

import collections
import io
import math
import pickle
import re
import struct
from typing import Any

import numpy as np
import torch

from .common import CheckpointError, _is_int


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
