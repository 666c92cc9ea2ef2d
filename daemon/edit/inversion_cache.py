"""Cache of inversions: in memory (LRU by bytes) and on disk (safetensors, LRU by bytes).

An entry is keyed by (model id, content hash of the cropped layer pixels, crop geometry,
inversion settings, perceptual backend). On disk an entry is one file ``<key>.safetensors``
holding the pivot latent (fp32) and the tuned generator as *deltas* against the base weights
(fp16 by default: 2 bytes per synthesis weight instead of a full fp32 copy; `put` checks that
the image rebuilt from the rounded deltas stays within ``max_psnr_loss_db`` of the exact one
against the target and stores fp32 deltas otherwise). Files are written to a temporary name
in the same folder, fsync'd and renamed into place (atomic on POSIX and Windows), and the
folder is trimmed to ``max_disk_bytes`` by evicting the least recently used files (file mtime,
refreshed on every hit). Every file carries a SHA-256 of its tensors and metadata: a file that
cannot be read back (truncated, garbage, bit flips, no checksum because an older version wrote
it, non-finite values, written for a different base) is logged, deleted and treated as a miss,
so the inversion is redone and the entry rewritten.

The folder may hold files the cache never wrote (a user's models, another program's data):
trimming and the disk size count only files whose header names this cache's format and whose
key is the file's own name, so nothing else there is ever removed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from . import perceptual as perc
from .image_prep import CropGeometry, PreparedTarget
from .inversion import (CancelFn, Inversion, InversionSettings, PhaseResult, ProgressFn,
                        apply_weight_deltas, invert, preset, weight_deltas)

log = logging.getLogger(__name__)

CACHE_FORMAT = "dragd-inversion-1"
_SUFFIX = ".safetensors"
_TMP_PREFIX = ".dragd-inversion-tmp-"
# Our headers are a few KB; anything claiming more is not ours and is not read into memory.
_MAX_HEADER_BYTES = 16 << 20


def cache_key(model_id: str, content_hash: str, geometry: CropGeometry | None,
              settings: InversionSettings, backend: str) -> str:
    """Stable hex key of everything an inversion depends on."""
    payload = json.dumps({"format": CACHE_FORMAT, "model": model_id, "content": content_hash,
                          "geometry": geometry.to_dict() if geometry is not None else None,
                          "settings": settings.cache_token(), "backend": backend}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:40]


def _digest(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """SHA-256 of the metadata (but its own checksum) and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "checksum"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def _inversion_bytes(inv: Inversion) -> int:
    n = inv.w.numel() * inv.w.element_size()
    for t in list(inv.generator.synthesis.parameters()) + list(inv.generator.synthesis.buffers()):
        n += t.numel() * t.element_size()
    return n


class InversionCache:
    """Two-level cache of `Inversion` results. Thread-safe (one lock around each operation)."""

    def __init__(self, directory: str | os.PathLike | None = None, max_memory_bytes: int = 2 << 30,
                 max_disk_bytes: int = 8 << 30, delta_dtype: torch.dtype = torch.float16,
                 max_psnr_loss_db: float = 0.1):
        self.directory = Path(directory) if directory is not None else None
        self.max_memory_bytes = int(max_memory_bytes)
        self.max_disk_bytes = int(max_disk_bytes)
        self.delta_dtype = delta_dtype
        self.max_psnr_loss_db = max_psnr_loss_db
        self._memory: "OrderedDict[str, tuple[Inversion, int]]" = OrderedDict()
        self._memory_bytes = 0
        self._lock = threading.RLock()
        self.stats = {"memory_hits": 0, "disk_hits": 0, "misses": 0, "corrupt": 0, "evicted_memory": 0,
                      "evicted_disk": 0}
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temp_files()

    # -- memory -------------------------------------------------------------------------------

    @property
    def memory_bytes(self) -> int:
        return self._memory_bytes

    def _remember(self, key: str, inv: Inversion) -> None:
        size = _inversion_bytes(inv)
        if key in self._memory:
            self._memory_bytes -= self._memory.pop(key)[1]
        if size > self.max_memory_bytes:
            return
        self._memory[key] = (inv, size)
        self._memory_bytes += size
        while self._memory_bytes > self.max_memory_bytes and self._memory:
            old_key, (_, old_size) = self._memory.popitem(last=False)
            self._memory_bytes -= old_size
            self.stats["evicted_memory"] += 1
            log.debug("inversion cache: evicted %s from memory", old_key)

    def memory_entries(self) -> list[tuple[str, Inversion]]:
        """The inversions kept in memory, least recently used first."""
        with self._lock:
            return [(k, inv) for k, (inv, _) in self._memory.items()]

    def forget(self, key: str) -> None:
        """Drop an entry from memory (its file on disk stays)."""
        with self._lock:
            hit = self._memory.pop(key, None)
            if hit is not None:
                self._memory_bytes -= hit[1]

    # -- disk ---------------------------------------------------------------------------------

    def path_for(self, key: str) -> Path | None:
        return None if self.directory is None else self.directory / f"{key}{_SUFFIX}"

    @property
    def disk_bytes(self) -> int:
        if self.directory is None:
            return 0
        return sum(st.st_size for _, st in self._own_files())

    def _own_files(self) -> list[tuple[Path, os.stat_result]]:
        """The entries this cache wrote (name ``<key>.safetensors``, our format and that key in
        the header): the only files it may count or delete."""
        out = []
        for p in self.directory.glob(f"*{_SUFFIX}"):
            if p.name.startswith(".") or not _is_own_entry(p):
                continue
            try:
                out.append((p, p.stat()))
            except OSError:
                continue
        return out

    def _remove_stale_temp_files(self, older_than_s: float = 3600) -> None:
        now = time.time()
        for p in self.directory.glob(f"{_TMP_PREFIX}*"):
            try:
                if now - p.stat().st_mtime > older_than_s:
                    p.unlink()
            except OSError:
                pass

    def _trim_disk(self, keep: Path | None = None) -> None:
        files = [(st.st_mtime, st.st_size, p) for p, st in self._own_files()]
        total = sum(f[1] for f in files)
        for _, size, p in sorted(files, key=lambda f: f[0]):
            if total <= self.max_disk_bytes:
                break
            if keep is not None and p == keep:
                continue
            try:
                p.unlink()
                total -= size
                self.stats["evicted_disk"] += 1
                log.info("inversion cache: evicted %s from disk (over %d bytes)", p.name, self.max_disk_bytes)
            except OSError:
                pass

    def _write_atomic(self, path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_SUFFIX, dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def _encode(self, key: str, inv: Inversion, base: nn.Module, target: torch.Tensor | None,
                weight: torch.Tensor | None) -> bytes:
        exact = weight_deltas(base, inv.generator)
        dtype = self.delta_dtype
        if dtype != torch.float32 and target is not None and exact:
            rounded = {k: v.to(dtype) for k, v in exact.items()}
            with torch.no_grad():
                restored = apply_weight_deltas(base, rounded).synthesize(inv.w, noise_mode="const").image
                original = inv.generator.synthesize(inv.w, noise_mode="const").image
                t = target.to(original.device)
                w = weight.to(original.device) if weight is not None else None
                loss = float(perc.psnr(original, t, w)[0] - perc.psnr(restored, t, w)[0])
            # `not <=` so that a NaN loss (fp16 deltas overflowed) also falls back to fp32.
            if not abs(loss) <= self.max_psnr_loss_db:
                log.info("inversion cache: %s deltas cost %.3f dB; storing fp32", dtype, loss)
                dtype = torch.float32
        tensors = {"w": inv.w.detach().to("cpu", torch.float32).contiguous()}
        for name, d in exact.items():
            tensors[f"delta.{name}"] = d.detach().to("cpu", dtype).contiguous()
        meta = {"format": CACHE_FORMAT, "key": key, "space": inv.space,
                "perceptual_backend": inv.perceptual_backend, "seconds": repr(inv.seconds),
                "pivot": json.dumps(inv.pivot.to_dict()),
                "tuning": json.dumps(inv.tuning.to_dict() if inv.tuning else None),
                "settings": json.dumps(inv.settings.to_dict()),
                "meta": json.dumps(inv.meta, default=str)}
        meta["checksum"] = _digest(tensors, meta)
        return st_save(tensors, metadata=meta)

    def _decode(self, key: str, data: bytes, base: nn.Module) -> Inversion:
        tensors = st_load(data)
        meta = _read_metadata(data)
        if meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"unknown format {meta.get('format')!r}")
        if meta.get("key") != key:
            raise ValueError("the file holds a different key")
        if "checksum" not in meta:
            raise ValueError("no checksum (an older version wrote it)")
        if meta["checksum"] != _digest(tensors, meta):
            raise ValueError("checksum mismatch: the file changed after it was written")
        bad = _first_non_finite(tensors)
        if bad is not None:
            raise ValueError(f"{bad} holds NaN or infinite values")
        device = next(base.parameters()).device
        w = tensors.pop("w").to(device)
        deltas = {name[len("delta."):]: t for name, t in tensors.items() if name.startswith("delta.")}
        generator = apply_weight_deltas(base, deltas)
        expected_w = (1, base.w_dim) if meta["space"] == "w" else (1, base.num_ws, base.w_dim)
        if tuple(w.shape) != expected_w:
            raise ValueError(f"latent shape {tuple(w.shape)} does not fit the model ({expected_w})")
        tuning = json.loads(meta["tuning"])
        return Inversion(w=w, generator=generator, space=meta["space"],
                         pivot=PhaseResult(**json.loads(meta["pivot"])),
                         tuning=PhaseResult(**tuning) if tuning else None,
                         perceptual_backend=meta["perceptual_backend"],
                         settings=InversionSettings.from_dict(json.loads(meta["settings"])),
                         seconds=float(meta["seconds"]), from_cache=True,
                         meta=json.loads(meta["meta"]))

    # -- API ------------------------------------------------------------------------------------

    def get(self, key: str, base: nn.Module) -> Inversion | None:
        """The cached inversion for key (rebuilt against base if it comes from disk), or None."""
        with self._lock:
            hit = self._memory.get(key)
            if hit is not None:
                self._memory.move_to_end(key)
                self.stats["memory_hits"] += 1
                return dataclasses.replace(hit[0], from_cache=True)
            path = self.path_for(key)
            if path is None or not path.is_file():
                self.stats["misses"] += 1
                return None
            try:
                inv = self._decode(key, path.read_bytes(), base)
            except Exception as exc:
                self.stats["corrupt"] += 1
                self.stats["misses"] += 1
                log.warning("inversion cache: ignoring corrupt file %s (%s: %s); it will be rebuilt",
                            path, type(exc).__name__, exc)
                try:
                    path.unlink()
                except OSError:
                    pass
                return None
            try:
                os.utime(path)          # LRU on disk = mtime
            except OSError:
                pass
            self.stats["disk_hits"] += 1
            self._remember(key, inv)
            return dataclasses.replace(inv, from_cache=True)

    def put(self, key: str, inv: Inversion, base: nn.Module, target: torch.Tensor | None = None,
            weight: torch.Tensor | None = None, disk: bool = True) -> None:
        """Store in memory and (if a directory is set and disk) on disk. target/weight enable the
        fp16 check."""
        bad = _first_non_finite({"w": inv.w, **dict(inv.generator.synthesis.named_parameters())})
        if bad is not None:
            log.warning("inversion cache: not storing %s: %s holds NaN or infinite values", key, bad)
            return
        with self._lock:
            self._remember(key, inv)
            path = self.path_for(key) if disk else None
            if path is None:
                return
            try:
                data = self._encode(key, inv, base, target, weight)
                self._write_atomic(path, data)
                self._trim_disk(keep=path)
            except OSError as exc:
                log.warning("inversion cache: could not write %s (%s)", path, exc)

    def __contains__(self, key: str) -> bool:
        path = self.path_for(key)
        return key in self._memory or (path is not None and path.is_file())


def _read_metadata(data: bytes) -> dict:
    """The safetensors header's __metadata__ (the format is: u64 length, JSON header)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    return header.get("__metadata__", {}) or {}


def _is_own_entry(path: Path) -> bool:
    """Whether path is a cache entry: its header says our format and its key is the file's name.
    Reads only the header; anything unreadable or foreign is False."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= _MAX_HEADER_BYTES:
                return False
            header = json.loads(f.read(n))
        meta = header.get("__metadata__") or {}
        return meta.get("format") == CACHE_FORMAT and meta.get("key") == path.stem
    except (OSError, ValueError, AttributeError):
        return False


def inversion_key(model_id: str, content_hash: str, geometry: CropGeometry,
                  settings: InversionSettings, D: nn.Module | None = None) -> str:
    """The cache key under which `invert_cached` looks up these pixels with these settings."""
    return cache_key(model_id, content_hash, geometry, settings,
                     perc.resolve_backend(settings.perceptual, D))


def invert_cached(G: nn.Module, prepared: PreparedTarget, *, model_id: str,
                  cache: InversionCache | None = None, settings: InversionSettings | str | None = None,
                  D: nn.Module | None = None, progress: ProgressFn | None = None,
                  cancel: CancelFn | None = None) -> Inversion:
    """Invert a prepared layer, or return the cached inversion of the same pixels/settings/model.

    On a hit no optimisation step runs (so ``progress`` is never called) and the result has
    ``from_cache=True``. The result's ``meta`` carries the crop geometry, model id and key.
    """
    if settings is None:
        settings = preset("balanced")
    elif isinstance(settings, str):
        settings = preset(settings)
    key = inversion_key(model_id, prepared.content_hash, prepared.geometry, settings, D)
    if cache is not None:
        hit = cache.get(key, G)
        if hit is not None:
            log.info("inversion cache hit %s", key)
            return hit
    inv = invert(G, prepared.target, prepared.weight, settings=settings, D=D, progress=progress, cancel=cancel)
    inv.meta.update({"model_id": model_id, "cache_key": key, "geometry": prepared.geometry.to_dict()})
    if cache is not None:
        cache.put(key, inv, G, prepared.target, prepared.weight)
    return inv
