"""The real backend: models, PTI inversion, the drag loop and paste-back, on one device.

It implements :class:`dragd.daemon.service.backend.Backend` for the ZeroMQ server and is used
directly (in-process) by `dragd edit` when no daemon answers. All heavy methods run on
the server's single worker thread; the cheap ones read cached state under a lock.
"""
from __future__ import annotations

import ctypes
import dataclasses
import gc
import logging
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ...protocol import ErrorCode, Image
from ..edit.image_prep import CropGeometry
from ..edit.inversion import InversionSettings, preset
from ..edit.inversion_cache import InversionCache
from ..edit.session import (DragProgress, DragSettings, EditCancelled, EditError, EditModel, EditSession,
                            generator_nbytes)
from ..model import registry as model_registry
from ..model.checkpoints import CheckpointError, LoadedModel, load_checkpoint
from ..model.device import DeviceError, describe_device, pick_device
from .backend import Backend, BackendError, Cancelled, CancelToken

log = logging.getLogger("dragd.backend")


@dataclass
class _Model:
    name: str
    edit: EditModel
    seconds: float

    @property
    def loaded(self) -> LoadedModel:
        return self.edit.loaded


#: How each kind of edit error is answered on the wire.
_EDIT_ERROR_CODES = {"pixels": ErrorCode.BAD_PIXELS, "points": ErrorCode.BAD_POINTS,
                     "mask": ErrorCode.BAD_VALUE, "state": ErrorCode.BAD_STATE,
                     "too_large": ErrorCode.TOO_LARGE, "align": ErrorCode.BAD_VALUE}


def _bytes_to_array(data: Any, width: int, height: int, channels: int) -> np.ndarray:
    arr = np.frombuffer(memoryview(data), dtype=np.uint8)
    return arr.reshape(height, width, channels)


def _image(arr: np.ndarray) -> Image:
    return Image(arr.data, arr.shape[1], arr.shape[0], arr.shape[2])


class TorchBackend(Backend):
    def __init__(self, model: str = "default", device: str = "auto",
                 cache_dir: Path | None = None, cache_memory_bytes: int = 2 << 30,
                 cache_disk_bytes: int = 8 << 30, preload: bool = True,
                 allowed_models: Sequence[str | Path] = ()):
        try:
            self.device = pick_device(device)
        except DeviceError as exc:
            raise BackendError(ErrorCode.MODEL_ERROR, str(exc)) from None
        self.device_name = describe_device(self.device)
        self.default_model = model
        self.allowed_models = tuple(Path(p).expanduser() for p in allowed_models)
        self._lock = threading.Lock()
        self._models: dict[str, _Model] = {}
        self._current: str | None = None
        self._sessions: dict[str, EditSession] = {}
        self._session_bytes: dict[str, int] = {}      # each session's own, as last counted
        self._generator_bytes: "weakref.WeakKeyDictionary[torch.nn.Module, int]" = weakref.WeakKeyDictionary()
        if cache_dir is None:
            cache_dir = model_registry.cache_dir().parent / "inversions"
        self.cache = InversionCache(cache_dir, max_memory_bytes=cache_memory_bytes,
                                    max_disk_bytes=cache_disk_bytes)
        if preload:
            self._load(model)

    # -- socket thread -----------------------------------------------------------------------

    def hello_info(self) -> dict:
        with self._lock:
            return {"device": self.device_name, "models": self._model_names(),
                    "loaded_model": self._current}

    def list_models(self) -> list[dict]:
        with self._lock:           # the worker may be adding a model right now
            loaded = dict(self._models)
            current = self._current
            names = self._model_names()
        out = []
        for name in names:
            m = loaded.get(name)
            out.append({"name": name, "loaded": name == current,
                        "resolution": m.loaded.G.resolution if m else None,
                        "info": {k: v for k, v in (m.loaded.info if m else {}).items()
                                 if isinstance(v, (str, int, float, bool))}})
        return out

    def status(self) -> dict:
        out = {"device": self.device_name, "sessions": len(self._sessions)}
        if self.device.type == "cuda":
            out.update(allocated=torch.cuda.memory_allocated(self.device),
                       reserved=torch.cuda.memory_reserved(self.device))
        return out

    def _model_names(self) -> list[str]:
        names = ["default"] + [st.entry.name for st in model_registry.iter_present()]
        for n in self._models:
            if n not in names:
                names.append(n)
        return names

    # -- worker thread -----------------------------------------------------------------------

    def load_model(self, name: str, progress, cancel: CancelToken) -> dict:
        m = self._load(name)
        return {"model": m.name, "resolution": m.loaded.G.resolution, "seconds": m.seconds,
                "info": {k: v for k, v in m.loaded.info.items() if isinstance(v, (str, int, float, bool))}}

    def _load(self, name: str) -> _Model:
        with self._lock:
            if name in self._models:
                self._current = name
                return self._models[name]
        t0 = time.perf_counter()
        try:
            path = model_registry.resolve_model(name, allowed=self._model_folders())
            loaded = load_checkpoint(path, device=self.device)
        except model_registry.ModelError as exc:
            raise BackendError(ErrorCode.UNKNOWN_MODEL, str(exc)) from None
        except CheckpointError as exc:
            raise BackendError(ErrorCode.MODEL_ERROR, str(exc)) from None
        for key, value in model_registry.known_metadata(name, path).items():
            loaded.info.setdefault(key, value)          # what the file says wins
        stat = Path(path).stat()
        model = _Model(name, EditModel(loaded, f"{name}:{stat.st_size}:{int(stat.st_mtime)}"),
                       time.perf_counter() - t0)
        log.info("model_loaded name=%s resolution=%d device=%s seconds=%.2f",
                 name, loaded.G.resolution, self.device_name, model.seconds)
        with self._lock:
            self._models[name] = model
            self._current = name
        return model

    def _model_folders(self) -> tuple[Path, ...]:
        """Where a client may point `load_model` (besides the model cache): what the operator
        named at start. A client naming any other path must not make the daemon open it."""
        own = self.default_model
        if own == "default" or own in model_registry.REGISTRY:
            return self.allowed_models
        return (Path(own).expanduser(), *self.allowed_models)

    def _model_for(self, name: str | None) -> _Model:
        if name is None:
            if self._current is None:
                return self._load(self.default_model)
            return self._models[self._current]
        return self._load(name)

    def open_session(self, session_id, image, width, height, channels, settings, progress, cancel):
        model = self._model_for(settings.get("model"))
        layer = _bytes_to_array(image, width, height, channels).copy()
        roi = settings.get("roi")
        box = None if roi is None else (roi["x"], roi["y"], roi["x"] + roi["width"], roi["y"] + roi["height"])

        def on_progress(stage, step, total, losses):
            progress({"stage": stage, "step": step, "total": total, "losses": losses,
                      "message": f"{'inverting' if stage == 'invert' else 'tuning'} {step}/{total}"})
        t0 = time.perf_counter()
        try:
            session = EditSession.open(model.edit, layer, roi=box,
                                       settings=_inversion_settings(settings.get("invert") or {}),
                                       cache=self.cache, device=self.device, progress=on_progress,
                                       cancel=lambda: cancel.cancelled, align=settings.get("align") or "auto")
        except EditError as exc:
            raise _backend_error(exc) from None
        except EditCancelled:
            raise Cancelled(cancel.reason or "cancelled") from None
        if session.info.get("continues_edit"):
            log.info("session %s continues an earlier edit of this layer: no inversion", session_id)
        with self._lock:
            self._sessions[session_id] = session
        out = {"model": model.name, "resolution": model.loaded.G.resolution, "bytes": self._counted(session_id, session),
               "seconds": time.perf_counter() - t0, "info": _plain_info(session.info, session.geometry)}
        if settings.get("reconstruction", "layer") != "none":
            out["image"] = _image(session.reconstruction())
        return out

    def drag(self, session_id, points, mask, params, progress, cancel):
        s = self._session(session_id)
        geo = s.geometry
        mask_layer = None if mask is None else _bytes_to_array(mask, geo.layer_width, geo.layer_height, 1)[..., 0]

        def on_step(p: DragProgress):
            event = {"stage": "drag", "step": p.step, "total": p.total, "handles": p.handles,
                     "losses": p.losses, "distance": p.distance}
            progress(event, None if p.preview is None else {"preview": _image(p.preview)})
        t0 = time.perf_counter()
        try:
            out = s.drag(points, mask_layer, _drag_settings(params), on_step, cancel=lambda: cancel.cancelled)
        except EditError as exc:
            raise _backend_error(exc) from None
        return {"image": _image(out.image), "handles": out.handles, "steps": out.steps, "stop": out.stop,
                "distance": out.distance, "history": out.history, "bytes": self._counted(session_id, s),
                "info": {"seconds": time.perf_counter() - t0}}

    def undo(self, session_id, steps, progress, cancel):
        s = self._session(session_id)
        try:
            image, history, handles = s.undo(steps)
        except EditError as exc:
            raise _backend_error(exc) from None
        return {"image": _image(image), "history": history, "handles": handles, "bytes": self._counted(session_id, s)}

    def reset_points(self, session_id):
        self._session(session_id).reset_points()

    def close_session(self, session_id):
        with self._lock:
            self._sessions.pop(session_id, None)
            self._session_bytes.pop(session_id, None)

    def trim_memory(self, budget):
        """Sessions' own bytes + every tuned generator once + the cache's entries; drops the
        least recently used cache entries whose generator no session uses while over budget."""
        with self._lock:
            held = sum(self._session_bytes.values())
            in_use = {id(g): g for g in (s.tuned_generator for s in self._sessions.values()) if g is not None}
        held += sum(self._gen_bytes(g) for g in in_use.values())
        entries = [(k, inv, id(inv.generator)) for k, inv in self.cache.memory_entries()]
        refs: dict[int, int] = {}
        for _, inv, gid in entries:
            refs[gid] = refs.get(gid, 0) + 1
        cache_only = {gid: inv.generator for _, inv, gid in entries if gid not in in_use}
        held += sum(inv.w.nbytes for _, inv, _ in entries) + sum(self._gen_bytes(g) for g in cache_only.values())
        for key, inv, gid in entries:          # least recently used first
            if held <= budget:
                break
            if gid in in_use:                  # it frees only a latent; the session keeps the rest
                continue
            self.cache.forget(key)
            held -= inv.w.nbytes
            refs[gid] -= 1
            if refs[gid] == 0:
                held -= self._gen_bytes(inv.generator)
        return held

    def _gen_bytes(self, g: torch.nn.Module) -> int:
        n = self._generator_bytes.get(g)
        if n is None:
            n = self._generator_bytes[g] = generator_nbytes(g)
        return n

    def _counted(self, session_id: str, s: EditSession) -> int:
        n = s.nbytes()
        with self._lock:
            if session_id in self._sessions:
                self._session_bytes[session_id] = n
        return n

    def release_memory(self, collect=True):
        if collect:
            gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        _trim_heap()

    def close(self):
        with self._lock:
            self._sessions.clear()

    def _session(self, sid: str) -> EditSession:
        with self._lock:
            s = self._sessions.get(sid)
        if s is None:
            raise BackendError(ErrorCode.UNKNOWN_SESSION)
        return s


def _trim_heap() -> None:
    """Hand freed heap pages back to the system: glibc keeps them after many small frees (a
    burst of sessions, an allocation that failed half-way), so RSS would stay at its peak."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):      # not glibc
        pass


def _backend_error(exc: EditError) -> BackendError:
    return BackendError(_EDIT_ERROR_CODES[exc.kind], str(exc))


def _inversion_settings(inv: dict) -> InversionSettings | None:
    method = inv.get("method") or "pti"
    if method == "none":
        return None
    quality = inv.get("quality") or "balanced"
    s = preset(quality)
    overrides: dict[str, Any] = {}
    if method in ("w", "w+"):
        overrides.update(space=method, tune_steps=0)
    if inv.get("w_steps") is not None:
        overrides["pivot_steps"] = int(inv["w_steps"])
    if inv.get("tune_steps") is not None and method == "pti":
        overrides["tune_steps"] = int(inv["tune_steps"])
    if inv.get("lr") is not None:
        overrides["pivot_lr"] = float(inv["lr"])
    if inv.get("tune_lr") is not None:
        overrides["tune_lr"] = float(inv["tune_lr"])
    if inv.get("seed") is not None:
        overrides["seed"] = int(inv["seed"])
    return dataclasses.replace(s, **overrides) if overrides else s


def _drag_settings(params: dict) -> DragSettings:
    """Protocol drag params → DragSettings (both in layer pixels)."""
    def opt(name):
        v = params.get(name)
        return None if v is None else float(v)
    return DragSettings(lr=opt("lr"), lambda_mask=float(params.get("lambda_mask", 20.0)),
                        space=params.get("space", "w+"), tracking=params.get("tracking", "l1"),
                        method=params.get("method", "dragd"),
                        max_steps=int(params.get("max_steps", 300)), stall_steps=int(params.get("stall_steps", 60)),
                        r1=opt("r1"), r2=opt("r2"), stop_distance=opt("stop_distance"),
                        paste=params.get("paste") or "resample",
                        preview_every=int(params.get("preview_every") or 0),
                        preview_max_size=int(params.get("preview_max_size") or 256))


def _plain_info(info: dict, geo: CropGeometry) -> dict:
    out = {"crop_box": list(geo.box), "resolution": geo.resolution}
    if hasattr(geo, "quad"):
        out["align_quad"] = [[float(x), float(y)] for x, y in geo.quad]
    for k, v in info.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, dict):
            out[k] = {kk: vv for kk, vv in v.items() if isinstance(vv, (str, int, float, bool)) or vv is None}
    return out
