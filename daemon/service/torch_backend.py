"""The real backend: models, PTI inversion, the drag loop and paste-back, on one device.

It implements :class:`dragd.daemon.service.backend.Backend` for the ZeroMQ server and is used
directly (in-process) by `dragd edit` when no daemon answers. All heavy methods run on
the server's single worker thread; the cheap ones read cached state under a lock.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage

from ...protocol.schema import ErrorCode, Image
from ..model import registry as model_registry
from .backend import Backend, BackendError, Cancelled, CancelToken
from ..model.device import DeviceError, describe_device, pick_device
from ..model.checkpoints import CheckpointError, LoadedModel, load_checkpoint
from ..edit.drag import DragConfig, DragInputError, DragSession
from ..edit.image_prep import (CropGeometry, LayerError, PreparedTarget, content_hash, prepare_target,
                         tensor_to_uint8, validate_layer)
from ..edit.inversion import Inversion, InversionCancelled, InversionSettings, preset
from ..edit.inversion_cache import InversionCache, inversion_key, invert_cached
from ..edit.pasteback import generator_correspondence, paste_back

log = logging.getLogger("dragd.backend")


@dataclass
class _Model:
    name: str
    model_id: str                      # name + file identity, part of the inversion cache key
    loaded: LoadedModel
    seconds: float

    @property
    def drag_lr(self) -> float | None:
        return self.loaded.drag_lr


@dataclass
class _Session:
    model: _Model
    layer: np.ndarray                  # [H, W, C] uint8, the layer as opened (never modified)
    prepared: PreparedTarget
    generator: torch.nn.Module         # the PTI-tuned private generator (or the base one)
    start_latent: torch.Tensor         # pivot, [1, w_dim] or [1, num_ws, w_dim]
    info: dict
    inversion: Inversion | None = None  # None: opened without inversion (method "none")
    drag: DragSession | None = None
    mask: np.ndarray | None = None     # layer-size float32 in [0, 1], of the last drag
    paste: str = "resample"            # paste-back mode of the last drag
    max_shift: float = 0.0             # longest arrow of the last drag, generator px

    @property
    def geometry(self) -> CropGeometry:
        return self.prepared.geometry

    def nbytes(self) -> int:
        n = self.layer.nbytes
        if self.generator is not self.model.loaded.G:
            n += sum(p.numel() * p.element_size() for p in self.generator.parameters())
        return n


def _bytes_to_array(data: Any, width: int, height: int, channels: int) -> np.ndarray:
    arr = np.frombuffer(memoryview(data), dtype=np.uint8)
    return arr.reshape(height, width, channels)


class TorchBackend(Backend):
    def __init__(self, model: str = "default", device: str = "auto",
                 cache_dir: Path | None = None, cache_memory_bytes: int = 2 << 30,
                 cache_disk_bytes: int = 8 << 30, preload: bool = True):
        try:
            self.device = pick_device(device)
        except DeviceError as exc:
            raise BackendError(ErrorCode.MODEL_ERROR, str(exc)) from None
        self.device_name = describe_device(self.device)
        self.default_model = model
        self._lock = threading.Lock()
        self._models: dict[str, _Model] = {}
        self._current: str | None = None
        self._sessions: dict[str, _Session] = {}
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
        with self._lock:
            loaded = dict(self._models)
            current = self._current
        out = []
        for name in self._model_names():
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
            path = model_registry.resolve_model(name)
            loaded = load_checkpoint(path, device=self.device)
        except model_registry.ModelError as exc:
            raise BackendError(ErrorCode.UNKNOWN_MODEL, str(exc)) from None
        except CheckpointError as exc:
            raise BackendError(ErrorCode.MODEL_ERROR, str(exc)) from None
        stat = Path(path).stat()
        model = _Model(name, f"{name}:{stat.st_size}:{int(stat.st_mtime)}", loaded, time.perf_counter() - t0)
        log.info("model_loaded name=%s resolution=%d device=%s seconds=%.2f",
                 name, loaded.G.resolution, self.device_name, model.seconds)
        with self._lock:
            self._models[name] = model
            self._current = name
        return model

    def _model_for(self, name: str | None) -> _Model:
        if name is None:
            if self._current is None:
                return self._load(self.default_model)
            return self._models[self._current]
        return self._load(name)

    def open_session(self, session_id, image, width, height, channels, settings, progress, cancel):
        model = self._model_for(settings.get("model"))
        G = model.loaded.G
        layer = _bytes_to_array(image, width, height, channels).copy()
        roi = settings.get("roi")
        box = None if roi is None else (roi["x"], roi["y"], roi["x"] + roi["width"], roi["y"] + roi["height"])
        try:
            prepared = prepare_target(layer, G.resolution, roi=box, device=self.device)
        except LayerError as exc:
            raise BackendError(ErrorCode.BAD_PIXELS, str(exc)) from None
        inv_settings = _inversion_settings(settings.get("invert") or {})
        t0 = time.perf_counter()
        inv = None
        if inv_settings is None:                     # method "none": edit the mean face
            generator, latent, info = G, G.mean_w().unsqueeze(0), {"inversion": "none"}
        else:
            def on_progress(ev):
                stage = "invert" if ev.phase == "pivot" else "tune"
                progress({"stage": stage, "step": ev.step, "total": ev.total,
                          "losses": {k: float(v) for k, v in ev.losses.items()},
                          "message": f"{'inverting' if stage == 'invert' else 'tuning'} {ev.step}/{ev.total}"})
            try:
                inv = invert_cached(G, prepared, model_id=model.model_id, cache=self.cache,
                                    settings=inv_settings, D=model.loaded.D, progress=on_progress,
                                    cancel=lambda: cancel.cancelled)
            except InversionCancelled:
                raise Cancelled(cancel.reason or "cancelled") from None
            generator, latent, info = inv.generator, inv.w, inv.summary()
            info["continues_edit"] = bool(inv.meta.get("continues_edit"))
            if info["continues_edit"]:
                log.info("session %s continues an earlier edit of this layer: no inversion", session_id)
        session = _Session(model, layer, prepared, generator, latent, info, inversion=inv)
        with self._lock:
            self._sessions[session_id] = session
        recon = self._render_layer(session, generator.synthesize(latent, noise_mode="const").image)
        return {"model": model.name, "resolution": G.resolution, "bytes": session.nbytes(),
                "seconds": time.perf_counter() - t0, "info": _plain_info(info, session.geometry),
                "image": recon}

    def drag(self, session_id, points, mask, params, progress, cancel):
        s = self._session(session_id)
        geo = s.geometry
        handles = to_generator(geo, [p[0] for p in points])
        targets = to_generator(geo, [p[1] for p in points])
        self._check_inside_crop(points, handles, targets, geo)
        mask_layer = None
        if mask is not None:
            mask_layer = _bytes_to_array(mask, geo.layer_width, geo.layer_height, 1)[..., 0]
            mask_layer = mask_layer.astype(np.float32) / 255.0
            if not mask_layer.any():
                raise BackendError(ErrorCode.BAD_VALUE, "the selection (movable region) is empty; "
                                   "select the part that may move, or clear the selection to let "
                                   "everything move")
        cfg = _drag_config(params, geo.scale, s.model.drag_lr)
        gen_mask = None if mask_layer is None else _mask_to_generator(mask_layer, geo)
        try:
            if s.drag is None:
                s.drag = DragSession(s.generator, s.start_latent, handles, targets, mask=gen_mask, config=cfg)
            else:
                s.drag.config = cfg
                s.drag.set_mask(gen_mask)
                s.drag.set_points(handles, targets)
        except DragInputError as exc:
            raise BackendError(ErrorCode.BAD_POINTS, f"{exc} (coordinates in the {geo.resolution}-px "
                               "working image)") from None
        s.mask = mask_layer
        preview_every = int(params.get("preview_every") or 0)
        preview_size = int(params.get("preview_max_size") or 256)
        last = None
        t0 = time.perf_counter()
        for r in s.drag.run(max_steps=cfg.max_steps, cancel=lambda: cancel.cancelled,
                            preview_every=preview_every):
            last = r
            hl = to_layer(geo, r.handles.numpy()).tolist()
            dist = float(np.mean(r.distances.numpy())) / geo.scale
            event = {"stage": "drag", "step": r.step, "total": cfg.max_steps, "handles": hl,
                     "losses": {k: float(v) for k, v in r.losses.items()}, "distance": dist}
            frames = None
            if r.image is not None and not r.done:
                frames = {"preview": self._preview(s, r.image, preview_size)}
            progress(event, frames)
        s.paste = params.get("paste") or "resample"
        s.max_shift = float(np.max(np.linalg.norm(targets - handles, axis=1)))
        image = self._render_layer(s, last.image if last.image is not None else s.drag.render())
        self._remember_result(s, image)
        return {"image": image, "handles": to_layer(geo, last.handles.numpy()).tolist(),
                "steps": last.step, "stop": last.reason, "distance": float(np.mean(last.distances.numpy())) / geo.scale,
                "history": len(s.drag.history) - 1, "bytes": s.nbytes(),
                "info": {"seconds": time.perf_counter() - t0}}

    def undo(self, session_id, steps, progress, cancel):
        s = self._session(session_id)
        if s.drag is None:
            raise BackendError(ErrorCode.BAD_STATE, "nothing to undo: no drag has run in this session")
        try:
            for _ in range(steps):
                snap = s.drag.undo()
        except DragInputError:
            raise BackendError(ErrorCode.BAD_STATE, f"cannot undo {steps} drag(s): the session is "
                               "back at the image it was opened with") from None
        target = len(s.drag.history) - 1
        image = self._render_layer(s, s.drag.render())
        self._remember_result(s, image)
        return {"image": image, "history": target,
                "handles": to_layer(s.geometry, snap.handles.numpy()).tolist(), "bytes": s.nbytes()}

    def reset_points(self, session_id):
        s = self._session(session_id)
        if s.drag is not None:
            s.drag.reset_points()

    def close_session(self, session_id):
        with self._lock:
            self._sessions.pop(session_id, None)

    def close(self):
        with self._lock:
            self._sessions.clear()

    # -- helpers -----------------------------------------------------------------------------

    def _session(self, sid: str) -> _Session:
        with self._lock:
            s = self._sessions.get(sid)
        if s is None:
            raise BackendError(ErrorCode.UNKNOWN_SESSION)
        return s

    @staticmethod
    def _check_inside_crop(points, handles, targets, geo: CropGeometry) -> None:
        """Every point inside the crop, and no two handles on one working pixel — checked in the
        user's layer coordinates so the message names the points as the user drew them."""
        res = geo.resolution
        for i, (p, h, t) in enumerate(zip(points, handles, targets)):
            for what, layer_xy, g in (("handle", p[0], h), ("target", p[1], t)):
                if not (-0.5 <= g[0] <= res - 0.5 and -0.5 <= g[1] <= res - 0.5):
                    x0, y0, x1, y1 = geo.valid
                    raise BackendError(ErrorCode.BAD_POINTS,
                                       f"{what} {i + 1} at ({layer_xy[0]:.1f}, {layer_xy[1]:.1f}) lies outside "
                                       f"the region being edited ({x0},{y0})–({x1},{y1}); select a region "
                                       f"that contains all points, or none to edit the whole layer")
        cells = np.round(np.asarray(handles)).astype(int)
        for i in range(len(cells)):
            for j in range(i):
                if (cells[i] == cells[j]).all():
                    (xi, yi), (xj, yj) = points[i][0], points[j][0]
                    raise BackendError(ErrorCode.BAD_POINTS,
                                       f"handles {j + 1} ({xj:.0f}, {yj:.0f}) and {i + 1} ({xi:.0f}, {yi:.0f}) "
                                       f"fall on the same pixel of the {res}-px working image; they are a "
                                       f"duplicate: remove one, or move them at least {1 / geo.scale:.0f} px apart")

    def _remember_result(self, s: _Session, image: Image) -> None:
        """Let a later open_session on exactly these pixels (the host's result layer, same region
        and inversion settings) continue from this state: no inversion to wait for, and no
        inversion error piling up edit after edit. In memory only: the entry shares the tuned
        generator with this session."""
        inv = s.inversion
        if inv is None or s.drag is None:
            return
        arr = _bytes_to_array(image.data, image.width, image.height, image.channels)
        key = inversion_key(s.model.model_id, content_hash(validate_layer(arr), s.geometry), s.geometry,
                            inv.settings, s.model.loaded.D)
        edited = dataclasses.replace(inv, w=s.drag.latent, space="w+",
                                     meta={**inv.meta, "cache_key": key, "continues_edit": True})
        self.cache.put(key, edited, s.model.loaded.G, disk=False)

    def _render_layer(self, s: _Session, gen_image: torch.Tensor) -> Image:
        """The generated crop composited into the full-size layer (the session's paste mode)."""
        crop = tensor_to_uint8(gen_image)
        if s.paste == "detail" and s.drag is not None:
            with torch.no_grad():
                corr = generator_correspondence(s.generator, s.start_latent, s.drag.latent,
                                                max_shift_px=max(4.0, 1.5 * s.max_shift))
                recon = s.generator.synthesize(s.start_latent, noise_mode="const").image
            out = paste_back(s.layer, crop, s.geometry, mask=s.mask, mode="detail",
                             correspondence=corr, reconstruction=recon)
        else:
            out = paste_back(s.layer, crop, s.geometry, mask=s.mask)
        return Image(np.ascontiguousarray(out).data, out.shape[1], out.shape[0], out.shape[2])

    def _preview(self, s: _Session, gen_image: torch.Tensor, max_size: int) -> Image:
        """A cheap full-layer preview at most max_size px wide/high: the layer downscaled once,
        with the generated crop pasted into its box (no mask feathering, no detail transfer)."""
        geo = s.geometry
        h, w = s.layer.shape[:2]
        scale = min(1.0, max_size / max(h, w))
        pw, ph = max(1, round(w * scale)), max(1, round(h * scale))
        key = (pw, ph)
        cached = s.info.get("_preview_base")
        if cached is None or cached[0] != key:
            base = np.asarray(PILImage.fromarray(s.layer[..., :3] if s.layer.shape[2] >= 3 else s.layer[..., 0])
                              .convert("RGB").resize(key, PILImage.Resampling.BILINEAR))
            s.info["_preview_base"] = (key, base)
        base = s.info["_preview_base"][1].copy()
        x0, y0, x1, y1 = geo.box
        bx0, by0 = round(x0 * scale), round(y0 * scale)
        side = max(1, round((x1 - x0) * scale))
        crop = PILImage.fromarray(tensor_to_uint8(gen_image)).resize((side, side), PILImage.Resampling.BILINEAR)
        canvas = PILImage.fromarray(base)
        canvas.paste(crop, (bx0, by0))
        arr = np.asarray(canvas, dtype=np.uint8)
        return Image(np.ascontiguousarray(arr).data, arr.shape[1], arr.shape[0], 3)


def to_generator(geo: CropGeometry, points) -> np.ndarray:
    """Protocol points (continuous layer coordinates: pixel (i, j) covers [i, i+1)×[j, j+1)) →
    the engine's generator pixels (pixel centres on integers)."""
    return geo.layer_to_gen(np.asarray(points, dtype=np.float64) - 0.5)


def to_layer(geo: CropGeometry, points) -> np.ndarray:
    """The inverse of `to_generator`."""
    return geo.gen_to_layer(points) + 0.5


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


def _drag_config(params: dict, scale: float, model_lr: float | None = None) -> DragConfig:
    """Protocol params (layer pixels) → DragConfig (generator pixels)."""
    kw: dict[str, Any] = dict(lambda_mask=float(params.get("lambda_mask", 20.0)),
                              latent_space=params.get("space", "w+"),
                              tracking_norm=params.get("tracking", "l1"),
                              max_steps=int(params.get("max_steps", 300)),
                              stall_steps=int(params.get("stall_steps", 60)))
    if params.get("lr") is not None:
        kw["lr"] = float(params["lr"])
    elif model_lr is not None:
        kw["lr"] = model_lr
    for name in ("r1", "r2"):
        if params.get(name) is not None:
            kw[name] = max(1, int(round(float(params[name]) * scale)))
    if params.get("stop_distance") is not None:
        kw["stop_distance"] = max(1e-3, float(params["stop_distance"]) * scale)
    return DragConfig(**kw)


def _mask_to_generator(mask_layer: np.ndarray, geo: CropGeometry) -> torch.Tensor:
    """Layer-size movable mask [H, W] in [0, 1] → [R, R] over the crop (0 outside the layer)."""
    x0, y0, x1, y1 = geo.box
    side = x1 - x0
    canvas = np.zeros((side, side), dtype=np.float32)
    vx0, vy0, vx1, vy1 = geo.valid
    canvas[vy0 - y0:vy1 - y0, vx0 - x0:vx1 - x0] = mask_layer[vy0:vy1, vx0:vx1]
    img = PILImage.fromarray(canvas, mode="F").resize((geo.resolution, geo.resolution), PILImage.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.float32).clip(0.0, 1.0).copy())


def _plain_info(info: dict, geo: CropGeometry) -> dict:
    out = {"crop_box": list(geo.box), "resolution": geo.resolution}
    for k, v in info.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, dict):
            out[k] = {kk: vv for kk, vv in v.items() if isinstance(vv, (str, int, float, bool)) or vv is None}
    return out
