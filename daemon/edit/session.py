"""One layer being edited: crop geometry → inversion → drag → paste-back, in one object.

An `EditSession` owns everything an edit of one layer needs and speaks the user's units
(continuous layer coordinates: pixel (i, j) covers [i, i+1)×[j, j+1)); the generator's pixels
(centres on integers) stay inside. The service layer only translates protocol fields into
these calls and the results back; it never touches geometry, latents or tensors.

Errors are `EditError`s whose `kind` names what was wrong ("pixels", "points", "mask",
"state", "too_large") and whose message is a sentence for the user; a cancelled inversion raises
`EditCancelled`.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image as PILImage

from ..model.checkpoints import LoadedModel
from . import align as face_align
from .domain import assess as assess_domain
from .faces import FacesUnavailable
from .drag import DragConfig, DragInputError, DragSession, DragSnapshot
from .image_prep import CropGeometry, CropTooLarge, LayerError, content_hash, prepare_target, tensor_to_uint8, validate_layer
from .inversion import Inversion, InversionCancelled, InversionSettings
from .inversion_cache import InversionCache, inversion_key, invert_cached
from .pasteback import generator_correspondence, paste_back

log = logging.getLogger("dragd.edit")

PASTE_MODES = ("resample", "detail")

# r1 and r2 sample features over (2r+1)² offsets per point, every step (with gradients for r1);
# bound those samples' memory, assuming StyleGAN2's widest feature maps (512 channels, float32,
# about 3 copies alive at once).
_RADIUS_SAMPLE_BYTES = 1 << 30
_SAMPLE_BYTES_PER_CHANNEL = 512 * 4 * 3
# A session's Python objects (geometry, info, settings, tensor headers) beyond its arrays.
_SESSION_OVERHEAD_BYTES = 16 << 10


class EditError(ValueError):
    """Bad input for an edit; `kind` is one of "pixels", "points", "mask", "state", "too_large",
    "align"."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class EditCancelled(Exception):
    pass


@dataclass(frozen=True)
class EditModel:
    """What an edit needs of a loaded model."""
    loaded: LoadedModel
    model_id: str                      # name + file identity, part of the inversion cache key


@dataclass(frozen=True)
class DragSettings:
    """A drag's settings in the user's units (layer pixels); None = the engine's default."""
    lr: float | None = None            # None: the model's own drag_lr, else the engine's
    lambda_mask: float = 20.0
    space: str = "w+"
    tracking: str = "l1"
    method: str = "dragd"              # drag.METHODS
    max_steps: int = 300
    stall_steps: int = 60
    r1: float | None = None
    r2: float | None = None
    stop_distance: float | None = None
    paste: str = "resample"
    preview_every: int = 0
    preview_max_size: int = 256


@dataclass
class DragProgress:
    step: int
    total: int
    handles: list                      # [[x, y], ...] layer pixels
    distance: float                    # mean handle → target distance, layer pixels
    losses: dict
    preview: np.ndarray | None         # H×W×3 uint8, at most preview_max_size on a side


@dataclass
class DragOutcome:
    image: np.ndarray                  # the whole layer, edited (same shape and channels)
    handles: list
    steps: int
    stop: str
    distance: float
    history: int                       # finished drags the session can go back through


#: progress(stage, step, total, losses) during inversion; stage "invert" | "tune".
InversionProgress = Callable[[str, int, int, dict], None]


class EditSession:
    def __init__(self, model: EditModel, layer: np.ndarray, geometry: CropGeometry,
                 generator: torch.nn.Module, latent: torch.Tensor, info: dict,
                 inversion: Inversion | None, cache: InversionCache | None):
        self.model = model
        self.layer = layer
        self.geometry = geometry
        self.generator = generator
        self.start_latent = latent
        self.info = info
        self.inversion = inversion
        self._cache = cache
        self.drag_session: DragSession | None = None
        self._mask: np.ndarray | None = None        # movable mask of the last drag, layer size, [0, 1]
        self._paste = "resample"
        self._max_shift = 0.0                       # longest arrow of the last drag, generator px
        self._preview_base: tuple | None = None      # (size, background, mask) of _preview

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, model: EditModel, layer: np.ndarray, *, roi: tuple[int, int, int, int] | None,
             settings: InversionSettings | None, cache: InversionCache | None, device,
             progress: InversionProgress, cancel: Callable[[], bool], align: str = "auto") -> "EditSession":
        """Crop (the FFHQ-aligned face when `align` or the model's metadata asks for it, else the
        ROI grown to a square), invert (or reuse the cache), ready to drag.
        `settings` None edits the mean face instead of inverting."""
        G = model.loaded.G
        try:
            prepared = _prepare(model, layer, roi, align, device)
        except CropTooLarge as exc:
            raise EditError("too_large", str(exc)) from None
        except LayerError as exc:
            raise EditError("pixels", str(exc)) from None
        aligned = isinstance(prepared.geometry, face_align.AlignedGeometry)
        if settings is None:
            return cls(model, layer, prepared.geometry, G, G.mean_w().unsqueeze(0),
                       {"inversion": "none", "align": prepared.geometry.kind if aligned else "none"}, None, cache)

        def on_progress(ev):
            progress("invert" if ev.phase == "pivot" else "tune", ev.step, ev.total,
                     {k: float(v) for k, v in ev.losses.items()})
        try:
            inv = invert_cached(G, prepared, model_id=model.model_id, cache=cache, settings=settings,
                                D=model.loaded.D, progress=on_progress, cancel=cancel)
        except InversionCancelled:
            raise EditCancelled() from None
        info = inv.summary()
        info["continues_edit"] = bool(inv.meta.get("continues_edit"))
        info["align"] = prepared.geometry.kind if aligned else "none"
        info["domain"] = assess_domain(inv, prepared, model.loaded.info, model.model_id.rsplit(":", 2)[0])
        return cls(model, layer, prepared.geometry, inv.generator, inv.w, info, inv, cache)

    def reconstruction(self) -> np.ndarray:
        """The layer with the inversion pasted in: what the edit starts from."""
        return self._render_layer(self.generator.synthesize(self.start_latent, noise_mode="const").image)

    def nbytes(self) -> int:
        """Memory this session holds of its own: the layer, latents, masks, the drag state and
        its undo history, the preview base, and its Python objects. Not the tuned generator,
        which the inversion cache and other sessions on the same pixels may share: see
        `tuned_generator`."""
        seen: set = set()
        held = [self.layer, self.start_latent, self._mask, self._preview_base, self.drag_session]
        if self.inversion is not None:
            held.append(self.inversion.w)
        return _SESSION_OVERHEAD_BYTES + sum(_held_bytes(x, seen) for x in held)

    @property
    def tuned_generator(self) -> torch.nn.Module | None:
        """The session's own copy of the generator (PTI), None when it drags the model's."""
        return None if self.generator is self.model.loaded.G else self.generator

    # -- dragging ------------------------------------------------------------------------------

    def drag(self, points, mask: np.ndarray | None, settings: DragSettings,
             on_step: Callable[[DragProgress], None], cancel: Callable[[], bool]) -> DragOutcome:
        """Drag `points` ([(handle, target)] in layer pixels) with `mask` (layer-size uint8,
        255 = may move; None = everything may move). A cancel ends the drag where it is."""
        geo = self.geometry
        handles = to_generator(geo, [p[0] for p in points])
        targets = to_generator(geo, [p[1] for p in points])
        _check_inside_crop(points, handles, targets, geo)
        mask_layer = None
        if mask is not None:
            mask_layer = mask.astype(np.float32) / 255.0
            if not mask_layer.any():
                raise EditError("mask", "the selection (movable region) is empty; select the part that "
                                "may move, or clear the selection to let everything move")
        cfg = self._drag_config(settings, len(points))
        gen_mask = None if mask_layer is None else _mask_to_generator(mask_layer, geo)
        try:
            if self.drag_session is None:
                self.drag_session = DragSession(self.generator, self.start_latent, handles, targets,
                                                mask=gen_mask, config=cfg)
            else:
                self.drag_session.config = cfg
                self.drag_session.set_points(handles, targets, mask=gen_mask)
        except DragInputError as exc:
            raise EditError("points", f"{exc} (coordinates in the {geo.resolution}-px working image)") from None
        self._mask = mask_layer
        self._preview_base = None                   # made for the previous drag's mask
        last = None
        for r in self.drag_session.run(max_steps=cfg.max_steps, cancel=cancel,
                                       preview_every=settings.preview_every):
            last = r
            preview = None
            if r.image is not None and not r.done:
                preview = self._preview(r.image, settings.preview_max_size)
            on_step(DragProgress(r.step, cfg.max_steps, to_layer(geo, r.handles.numpy()).tolist(),
                                 float(np.mean(r.distances.numpy())) / geo.scale,
                                 {k: float(v) for k, v in r.losses.items()}, preview))
        self._paste = settings.paste
        self._max_shift = float(np.max(np.linalg.norm(targets - handles, axis=1)))
        image = self._render_layer(last.image if last.image is not None else self.drag_session.render())
        self._remember_result(image)
        return DragOutcome(image, to_layer(geo, last.handles.numpy()).tolist(), last.step, last.reason,
                           float(np.mean(last.distances.numpy())) / geo.scale,
                           len(self.drag_session.history) - 1)

    def undo(self, steps: int) -> tuple[np.ndarray, int, list]:
        """Go back `steps` finished drags → (layer image, drags left in the history, handles)."""
        if self.drag_session is None:
            raise EditError("state", "nothing to undo: no drag has run in this session")
        try:
            for _ in range(steps):
                snap = self.drag_session.undo()
        except DragInputError:
            raise EditError("state", f"cannot undo {steps} drag(s): the session is back at the image "
                            "it was opened with") from None
        image = self._render_layer(self.drag_session.render())
        self._remember_result(image)
        return image, len(self.drag_session.history) - 1, to_layer(self.geometry, snap.handles.numpy()).tolist()

    def reset_points(self) -> None:
        if self.drag_session is not None:
            self.drag_session.reset_points()

    # -- helpers -------------------------------------------------------------------------------

    def _drag_config(self, s: DragSettings, n_points: int) -> DragConfig:
        """Layer-pixel settings → DragConfig in generator pixels."""
        scale = self.geometry.scale
        kw: dict = dict(lambda_mask=float(s.lambda_mask), latent_space=s.space, tracking_norm=s.tracking,
                        max_steps=int(s.max_steps), stall_steps=int(s.stall_steps), method=s.method)
        lr = s.lr if s.lr is not None else self.model.loaded.drag_lr
        if lr is not None:
            kw["lr"] = float(lr)
        for name in ("r1", "r2"):
            v = getattr(s, name)
            if v is not None:
                kw[name] = self._radius(name, float(v), n_points)
        if s.stop_distance is not None:
            kw["stop_distance"] = max(1e-3, float(s.stop_distance) * scale)
        return DragConfig(**kw)

    def _radius(self, name: str, layer_px: float, n_points: int) -> int:
        """A radius in layer px → generator px, refused when it is past what the working image
        offers or the samples it needs (points × (2r+1)² × channels) would outgrow memory."""
        geo = self.geometry
        r = max(1, int(round(layer_px * geo.scale)))
        fit = int(math.isqrt(_RADIUS_SAMPLE_BYTES // (max(1, n_points) * _SAMPLE_BYTES_PER_CHANNEL)))
        limit = max(1, min(geo.resolution, (fit - 1) // 2))
        if r > limit:
            most = max(1, int(limit / geo.scale))
            raise EditError("too_large", f"{name} = {layer_px:g} px is {r} px of the {geo.resolution}-px working "
                            f"image; with {n_points} point(s) it may be at most {limit} px there, i.e. "
                            f"{most} px of this layer; use a smaller {name} (or leave it unset for the "
                            f"default)")
        return r

    def _remember_result(self, image: np.ndarray) -> None:
        """Let a later open on exactly these pixels (the host's result layer, same region and
        inversion settings) continue from this state: no inversion to wait for, and no
        inversion error piling up edit after edit. In memory only: the entry shares the tuned
        generator with this session."""
        inv = self.inversion
        if inv is None or self.drag_session is None or self._cache is None:
            return
        key = inversion_key(self.model.model_id, content_hash(validate_layer(image), self.geometry),
                            self.geometry, inv.settings, self.model.loaded.D)
        edited = dataclasses.replace(inv, w=self.drag_session.latent, space="w+",
                                     meta={**inv.meta, "cache_key": key, "continues_edit": True})
        self._cache.put(key, edited, self.model.loaded.G, disk=False)

    def _render_layer(self, gen_image: torch.Tensor) -> np.ndarray:
        """The generated crop composited into the full-size layer (the last drag's paste mode)."""
        crop = tensor_to_uint8(gen_image)
        paste = face_align.paste_aligned if isinstance(self.geometry, face_align.AlignedGeometry) else paste_back
        if self._paste == "detail" and self.drag_session is not None:
            with torch.no_grad():
                corr = generator_correspondence(self.generator, self.start_latent, self.drag_session.latent,
                                                max_shift_px=max(4.0, 1.5 * self._max_shift))
                recon = self.generator.synthesize(self.start_latent, noise_mode="const").image
            out = paste(self.layer, crop, self.geometry, mask=self._mask, mode="detail",
                        correspondence=corr, reconstruction=recon)
        else:
            out = paste(self.layer, crop, self.geometry, mask=self._mask)
        return np.ascontiguousarray(out)

    def _preview(self, gen_image: torch.Tensor, max_size: int) -> np.ndarray:
        """What the result will show, cheaply: the region being edited (the crop's part
        inside the layer) at most max_size px on a side, the generated crop blended in
        through the drag's mask (no detail transfer, no feathering). The host shows it as it
        comes, so a huge layer costs it nothing per preview."""
        vx0, vy0, vx1, vy1 = self.geometry.valid
        scale = min(1.0, max_size / max(vx1 - vx0, vy1 - vy0))
        size = (max(1, round((vx1 - vx0) * scale)), max(1, round((vy1 - vy0) * scale)))
        if self._preview_base is None or self._preview_base[0] != size:
            self._preview_base = (size, *self._preview_background(size))
        _, base, alpha = self._preview_base
        if isinstance(self.geometry, face_align.AlignedGeometry):
            gen, inside = face_align.region_preview(tensor_to_uint8(gen_image), self.geometry, size)
            alpha = inside if alpha is None else alpha * inside
        else:
            x0, y0, x1, _ = self.geometry.box
            side = max(1, round((x1 - x0) * scale))
            left, top = round((vx0 - x0) * scale), round((vy0 - y0) * scale)
            crop = PILImage.fromarray(tensor_to_uint8(gen_image)).resize((side, side), PILImage.Resampling.BILINEAR)
            gen = np.asarray(crop.crop((left, top, left + size[0], top + size[1])), dtype=np.float32)
        out = gen if alpha is None else base + alpha * (gen - base)
        return np.ascontiguousarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))

    def _preview_background(self, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
        """The region of the layer at preview size (float RGB) and the mask there ([h, w, 1],
        None = everything may move), made once per drag."""
        vx0, vy0, vx1, vy1 = self.geometry.valid
        region = self.layer[vy0:vy1, vx0:vx1]
        src = region[..., :3] if region.shape[2] >= 3 else region[..., 0]
        base = np.asarray(PILImage.fromarray(src).convert("RGB").resize(size, PILImage.Resampling.BILINEAR),
                          dtype=np.float32)
        if self._mask is None:
            return base, None
        m = PILImage.fromarray(np.ascontiguousarray(self._mask[vy0:vy1, vx0:vx1], dtype=np.float32))
        return base, np.asarray(m.resize(size, PILImage.Resampling.BILINEAR), dtype=np.float32)[..., None]


def generator_nbytes(generator: torch.nn.Module) -> int:
    """What a tuned copy costs: its synthesis weights and buffers (the mapping is shared)."""
    syn = generator.synthesis
    return sum(t.numel() * t.element_size() for t in list(syn.parameters()) + list(syn.buffers()))


def _held_bytes(obj, seen: set, depth: int = 0) -> int:
    """Bytes of the arrays and tensors reachable from obj through containers and the drag
    engine's own objects (its optimiser state, history snapshots), each storage once; never
    through a module (generators are counted apart)."""
    if obj is None or depth > 6 or isinstance(obj, torch.nn.Module):
        return 0
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        key = ("t", storage.data_ptr(), obj.device.type)
        if key in seen:
            return 0
        seen.add(key)
        return storage.nbytes()
    if isinstance(obj, np.ndarray):
        base = obj
        while isinstance(base.base, np.ndarray):
            base = base.base
        if ("a", id(base)) in seen:
            return 0
        seen.add(("a", id(base)))
        return base.nbytes
    if isinstance(obj, dict):
        obj = list(obj.values())
    elif isinstance(obj, (DragSession, DragSnapshot, torch.optim.Optimizer)):
        obj = list(vars(obj).values())
    if isinstance(obj, (list, tuple)):
        return sum(_held_bytes(x, seen, depth + 1) for x in obj)
    return 0


def _prepare(model: EditModel, layer: np.ndarray, roi, align: str, device):
    """The inversion target: the aligned face (align.py) or the ROI's axis-aligned square."""
    G = model.loaded.G
    try:
        kind = face_align.resolve(align, model.loaded.info)
    except ValueError as exc:
        raise EditError("align", str(exc)) from None
    if kind == "none":
        return prepare_target(layer, G.resolution, roi=roi, device=device)
    try:
        geo = face_align.locate(validate_layer(layer), G.resolution, roi)
    except (FacesUnavailable, face_align.AlignError) as exc:
        raise EditError("align", str(exc)) from None
    return face_align.prepare_aligned_target(layer, geo, device=device)


def to_generator(geo: CropGeometry, points) -> np.ndarray:
    """Layer points (continuous coordinates) → the engine's generator pixels (centres on integers)."""
    return geo.layer_to_gen(np.asarray(points, dtype=np.float64) - 0.5)


def to_layer(geo: CropGeometry, points) -> np.ndarray:
    """The inverse of `to_generator`."""
    return geo.gen_to_layer(points) + 0.5


def _check_inside_crop(points, handles, targets, geo: CropGeometry) -> None:
    """Every point inside the crop, and no two handles on one working pixel — checked in the
    user's layer coordinates so the message names the points as the user drew them."""
    res = geo.resolution
    for i, (p, h, t) in enumerate(zip(points, handles, targets)):
        for what, layer_xy, g in (("handle", p[0], h), ("target", p[1], t)):
            if not (-0.5 <= g[0] <= res - 0.5 and -0.5 <= g[1] <= res - 0.5):
                if isinstance(geo, face_align.AlignedGeometry):
                    raise EditError("points", f"{what} {i + 1} at ({layer_xy[0]:.1f}, {layer_xy[1]:.1f}) lies "
                                    f"outside the aligned square of the face being edited; select the face "
                                    f"the points are on (the selection picks the face), or edit with "
                                    f"alignment off")
                x0, y0, x1, y1 = geo.valid
                raise EditError("points", f"{what} {i + 1} at ({layer_xy[0]:.1f}, {layer_xy[1]:.1f}) lies "
                                f"outside the region being edited ({x0},{y0})–({x1},{y1}); select a region "
                                f"that contains all points, or none to edit the whole layer")
    cells = np.round(np.asarray(handles)).astype(int)
    for i in range(len(cells)):
        for j in range(i):
            if (cells[i] == cells[j]).all():
                (xi, yi), (xj, yj) = points[i][0], points[j][0]
                raise EditError("points", f"handles {j + 1} ({xj:.0f}, {yj:.0f}) and {i + 1} ({xi:.0f}, "
                                f"{yi:.0f}) fall on the same pixel of the {res}-px working image; they are "
                                f"a duplicate: remove one, or move them at least {1 / geo.scale:.0f} px apart")


def _mask_to_generator(mask_layer: np.ndarray, geo: CropGeometry) -> torch.Tensor:
    """Layer-size movable mask [H, W] in [0, 1] → [R, R] over the crop (0 outside the layer)."""
    if isinstance(geo, face_align.AlignedGeometry):
        return face_align.mask_to_aligned(mask_layer, geo)
    x0, y0, x1, y1 = geo.box
    side = x1 - x0
    canvas = np.zeros((side, side), dtype=np.float32)
    vx0, vy0, vx1, vy1 = geo.valid
    canvas[vy0 - y0:vy1 - y0, vx0 - x0:vx1 - x0] = mask_layer[vy0:vy1, vx0:vx1]
    img = PILImage.fromarray(canvas, mode="F").resize((geo.resolution, geo.resolution), PILImage.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.float32).clip(0.0, 1.0).copy())
