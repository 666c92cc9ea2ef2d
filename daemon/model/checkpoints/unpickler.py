"""The restricted unpickler: the security boundary for NVIDIA network pickles.

Plain ``pickle`` would run the Python source those pickles embed. Here only the globals in
`ALLOWED_GLOBALS` resolve, each to a function of ours that builds inert data (records of class
name, init kwargs and state; tensors and arrays rebuilt from their raw bytes by our own
readers); every other global is refused with a CheckpointError naming it. This file imports
nothing of the generator, so it can be audited on its own.

Loading is also bounded, so that a small file cannot make it run for ever or exhaust memory
(a "billion laughs" pickle reuses one object through the memo thousands of times at two bytes
a reference): the unpickler is Python's own (its memo is a dict; the C one allocates an array
as long as the largest memo index the file names), a length field may not ask for more bytes
than the file has, what our functions build is charged against a budget proportional to the
file's size, dict keys and set members must be plain values (hashing a tuple that refers to
itself through shared references takes exponential time), and nesting is limited."""
from __future__ import annotations

import collections
import contextvars
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

#: Per object our functions build (record, tensor, array, copy), on top of its data bytes.
_OBJECT_BYTES = 64

_MAX_DEPTH = 200

_MAX_KEY_ITEMS = 16


class LoadBudget:
    """How much one load may build: twice the file's size plus a fixed allowance (a network
    pickle holds its tensor data once, so a real one needs about its own size)."""

    def __init__(self, file_bytes: int):
        self.file_bytes = file_bytes
        self.limit = 2 * file_bytes + (64 << 20)
        self.spent = 0

    def charge(self, nbytes: int) -> None:
        self.spent += nbytes + _OBJECT_BYTES
        if self.spent > self.limit:
            raise _Refused(f"it builds more than {self.limit >> 20} MiB from a {self.file_bytes}-byte file "
                           "(the same objects referenced over and over: a 'billion laughs' pickle?)")

_BUDGET: contextvars.ContextVar[LoadBudget | None] = contextvars.ContextVar("dragd_load_budget", default=None)

def _charge(nbytes: int) -> None:
    budget = _BUDGET.get()
    if budget is None:
        raise _Refused("loader functions may only run inside restricted_load")
    budget.charge(nbytes)

def _check_key(key, what: str) -> None:
    """Dict keys and set members: plain values, or small tuples of them (anything else could
    cost exponential time to hash)."""
    todo, seen = [key], 0
    while todo:
        k = todo.pop()
        seen += 1
        if seen > _MAX_KEY_ITEMS:
            raise _Refused(f"{what} is a tuple too large to be a key")
        if isinstance(k, tuple):
            todo.extend(k)
        elif not isinstance(k, (str, bytes, int, float, type(None))):
            raise _Refused(f"{what} of type {type(k).__name__} (only plain values may be keys)")

class _ClampedReader:
    """A file whose reads never ask for more than it has left: a length field of 2**60 must not
    allocate 2**60 bytes before finding out the file is short."""

    def __init__(self, f, size: int):
        self._f, self._left = f, size

    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        return data

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)

    def readline(self) -> bytes:
        line = self._f.readline(max(self._left, 0))
        self._left -= len(line)
        return line

def _stream_size(f) -> int:
    here = f.tell()
    end = f.seek(0, io.SEEK_END)
    f.seek(here)
    return end - here

class _BoundedUnpickler(pickle._Unpickler):
    """Python's unpickler with the bounds above (see the module docstring)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, f):
        size = _stream_size(f)
        self._size = size
        super().__init__(_ClampedReader(f, size))

    def load_mark(self):
        if len(self.metastack) >= _MAX_DEPTH:
            raise _Refused(f"pickle nested more than {_MAX_DEPTH} levels deep")
        super().load_mark()
    dispatch[pickle.MARK[0]] = load_mark

    def load_bytearray8(self):
        (n,) = struct.unpack("<Q", self.read(8))
        if n > self._size:
            raise _Refused("a byte array longer than the file")
        self.append(bytearray(self.read(n)))
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8

    def load_dict(self):
        items = self.pop_mark()
        for key in items[::2]:
            _check_key(key, "dict key")
        self.append({items[i]: items[i + 1] for i in range(0, len(items), 2)})
    dispatch[pickle.DICT[0]] = load_dict

    def load_setitem(self):
        _check_key(self.stack[-2], "dict key")
        super().load_setitem()
    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self):
        for key in self.stack[::2]:
            _check_key(key, "dict key")
        super().load_setitems()
    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_additems(self):
        for item in self.stack:
            _check_key(item, "set member")
        super().load_additems()
    dispatch[pickle.ADDITEMS[0]] = load_additems

    def load_frozenset(self):
        for item in self.stack:
            _check_key(item, "set member")
        super().load_frozenset()
    dispatch[pickle.FROZENSET[0]] = load_frozenset

class _NoGlobalsUnpickler(_BoundedUnpickler):
    """Plain data only: any global at all is refused."""

    def find_class(self, module, name):
        raise _Refused(f"refused global {module}.{name} inside legacy tensor bytes")

class _LegacyStorageUnpickler(_BoundedUnpickler):
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
            raise _Refused(f"unexpected persistent id in legacy tensor bytes (a {type(pid).__name__})")
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
            _charge(count * itemsize)
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
        _charge(0)
        return flat.view(size)                # the whole storage, contiguous: no copy needed
    _charge(numel * flat.element_size())
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
    _charge(0)
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
    _charge(_OBJECT_BYTES * len(state))
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
    _charge(0)
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
    _charge(2 * len(raw))
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
    _charge(len(text))
    return text.encode("latin1")

def _copied_items(items, what: str) -> list:
    """set(list), frozenset(list): each call copies, so each is charged, and members must be
    plain values."""
    if not isinstance(items, (list, tuple, set, frozenset)):
        raise _Refused(f"{what} built from something that is not a list")
    _charge(_OBJECT_BYTES * len(items))
    for item in items:
        _check_key(item, f"{what} member")
    return list(items)

def _set(items=()):
    return set(_copied_items(items, "set"))

def _frozenset(items=()):
    return frozenset(_copied_items(items, "frozenset"))

def _ordered_dict(*args):
    """Pickles build an OrderedDict empty and fill it with SETITEMS (whose keys are checked)."""
    if args not in ((), ((),), ([],)):
        raise _Refused("OrderedDict built from arguments")
    _charge(0)
    return collections.OrderedDict()

_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")

_NUMPY_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")

#: The only globals a network pickle may name, each mapped to our own inert function.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib.tflib.network", "Network"): TFNetworkRecord,
    ("collections", "OrderedDict"): _ordered_dict,
    ("builtins", "set"): _set, ("__builtin__", "set"): _set,
    ("builtins", "frozenset"): _frozenset, ("__builtin__", "frozenset"): _frozenset,
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

class RestrictedUnpickler(_BoundedUnpickler):
    """Resolves only `ALLOWED_GLOBALS`; everything else raises a CheckpointError naming it."""

    def find_class(self, module, name):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise _Refused(f"refused global {module}.{name}") from None

    def persistent_load(self, pid):
        raise _Refused("refused persistent id (network pickles have none)")

def restricted_load(f) -> Any:
    """Unpickle a network pickle with `RestrictedUnpickler`, within a `LoadBudget` of the
    stream's size (raises CheckpointError/pickle errors)."""
    token = _BUDGET.set(LoadBudget(_stream_size(f)))
    try:
        return RestrictedUnpickler(f).load()
    finally:
        _BUDGET.reset(token)
