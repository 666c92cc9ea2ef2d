"""From a host layer (numpy uint8) to the inversion target, and the geometry to go back.

Conventions
-----------
* A layer is a numpy array [H, W, C] of dtype uint8, C = 3 (RGB) or 4 (RGBA, straight alpha).
  Grayscale [H, W] or [H, W, 1] becomes RGB by copying the gray value into R, G and B
  (no gamma or weighting change: a gray value v is the sRGB colour (v, v, v)); gray + alpha
  [H, W, 2] becomes RGBA the same way. Any other dtype (16-bit, float) is refused with a
  message telling the caller to convert to 8-bit first: silently rescaling would guess wrong
  about linear vs. sRGB and about the value range.
* Validation happens from ``shape`` and ``dtype`` alone, before the pixels are touched, so an
  oversized layer is refused without being read or copied.
* A region of interest (x0, y0, x1, y1) is in layer pixels, half-open ([x0, x1) × [y0, y1)),
  normally the bounding box of the host's selection. It is grown to a square whose side is
  the region's longer side times (1 + 2·margin) — ``margin`` of that side on every edge,
  default 10 % — centred on the region, then shifted to lie inside the image. When the square
  is larger than the image along an axis (a non-square image, or a region near as large as
  the image), it is centred on the region but placed so that it covers the whole image along
  that axis, and the part outside the image is padded: with the nearest edge pixels
  (``pad_mode="edge"``, default) or by mirroring (``"reflect"``). Padded pixels get weight 0,
  so they do not count in the inversion loss, and paste-back never writes them. Without a
  region the whole layer is used (square side = the longer side, no margin).
* The square crop is resampled to the generator resolution with Pillow's Lanczos filter
  (which low-passes properly when reducing). Alpha becomes the loss weight: weight = alpha/255
  after the same resampling (so fully transparent pixels do not count); the padded part has
  alpha 0. The colour of fully transparent pixels is kept as stored.
* Target tensors are [1, 3, R, R] float32 in [-1, 1] (v/127.5 − 1), weights [1, 1, R, R] in
  [0, 1].
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

DEFAULT_MAX_SIDE = 16384
DEFAULT_MAX_PIXELS = 100_000_000
# The square crop is materialised (padded) at layer resolution before it is resampled, at about
# 20 bytes per square pixel all told: a thin layer (16384×2) would otherwise cost as much as a
# 16384² one. 8192² keeps the peak near 1.5 GB, what the largest layer the protocol accepts costs.
DEFAULT_MAX_SQUARE_PIXELS = 8192 * 8192
PAD_MODES = ("edge", "reflect")


class LayerError(ValueError):
    """A layer or region the inversion cannot use; the message is meant for the user."""


class CropTooLarge(LayerError):
    """The square crop of the layer (or its region) is larger than the daemon works on."""


# ---------------------------------------------------------------------------------------------
# Validation


def validate_layer(pixels, max_side: int = DEFAULT_MAX_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Check a layer and return it as uint8 [H, W, 3|4] (grayscale converted, see module doc).

    Only ``shape``/``dtype`` are inspected before the limits are checked, so a huge array (or a
    zero-stride view standing for one) is refused without allocating anything.
    """
    shape = tuple(getattr(pixels, "shape", ()))
    dtype = np.dtype(getattr(pixels, "dtype", np.uint8))
    if len(shape) not in (2, 3):
        raise LayerError(f"a layer must be a [height, width] or [height, width, channels] array, got shape {shape}")
    h, w = int(shape[0]), int(shape[1])
    c = 1 if len(shape) == 2 else int(shape[2])
    if dtype != np.uint8:
        bits = dtype.itemsize * 8
        kind = "floating-point" if dtype.kind == "f" else f"{bits}-bit"
        raise LayerError(
            f"the layer is {kind} ({dtype}); only 8-bit layers are supported — convert the "
            f"image to 8-bit per channel (GIMP: Image ▸ Precision ▸ 8 bit; Krita: Image ▸ "
            f"Convert Image Color Space ▸ 8-bit integer) and try again")
    if c not in (1, 2, 3, 4):
        raise LayerError(f"a layer must have 1 to 4 channels (gray, gray+alpha, RGB, RGBA), got {c}")
    if h < 2 or w < 2:
        raise LayerError(f"the layer is too small ({w}×{h} px); it must be at least 2×2 px")
    if max(h, w) > max_side:
        raise LayerError(f"the layer is too large ({w}×{h} px); the longest side may be at most {max_side} px")
    if h * w > max_pixels:
        raise LayerError(f"the layer is too large ({w}×{h} = {h * w / 1e6:.0f} Mpx); at most "
                         f"{max_pixels / 1e6:.0f} Mpx are supported")
    arr = np.asarray(pixels)
    if c == 1:
        g = arr.reshape(h, w)
        arr = np.stack([g, g, g], axis=-1)
    elif c == 2:
        g, a = arr[..., 0], arr[..., 1]
        arr = np.stack([g, g, g, a], axis=-1)
    return arr


# ---------------------------------------------------------------------------------------------
# Geometry


@dataclass(frozen=True)
class CropGeometry:
    """Where the generator's R×R image sits in the layer.

    ``box`` is the square (x0, y0, x1, y1) in layer px, possibly reaching outside the layer;
    ``valid`` is its intersection with the layer. Generator pixel (u, v) (integer centres)
    covers layer area [x0 + u·s, x0 + (u+1)·s) with s = side / R.
    """
    layer_height: int
    layer_width: int
    box: tuple[int, int, int, int]
    valid: tuple[int, int, int, int]
    resolution: int
    pad_mode: str = "edge"

    @property
    def side(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def scale(self) -> float:
        """Generator pixels per layer pixel."""
        return self.resolution / self.side

    @property
    def padded(self) -> bool:
        return self.box != self.valid

    def layer_to_gen(self, points) -> np.ndarray:
        """Layer coordinates (x, y) [..., 2] → generator pixel coordinates (continuous, centres at integers)."""
        p = np.asarray(points, dtype=np.float64)
        origin = np.array(self.box[:2], dtype=np.float64)
        return (p + 0.5 - origin) * self.scale - 0.5

    def gen_to_layer(self, points) -> np.ndarray:
        """Generator pixel coordinates [..., 2] → layer coordinates (x, y)."""
        p = np.asarray(points, dtype=np.float64)
        origin = np.array(self.box[:2], dtype=np.float64)
        return (p + 0.5) / self.scale + origin - 0.5

    def to_dict(self) -> dict:
        return {"layer_height": self.layer_height, "layer_width": self.layer_width, "box": list(self.box),
                "valid": list(self.valid), "resolution": self.resolution, "pad_mode": self.pad_mode}

    @classmethod
    def from_dict(cls, d: dict) -> "CropGeometry":
        return cls(int(d["layer_height"]), int(d["layer_width"]), tuple(int(v) for v in d["box"]),
                   tuple(int(v) for v in d["valid"]), int(d["resolution"]), d.get("pad_mode", "edge"))


def square_box(height: int, width: int, roi=None, margin: float = 0.1) -> tuple[int, int, int, int]:
    """The square crop box (x0, y0, x1, y1) for a layer and an optional region (module doc)."""
    if margin < 0:
        raise LayerError(f"margin must be ≥ 0, got {margin}")
    if roi is None:
        rx0, ry0, rx1, ry1 = 0, 0, width, height
        margin = 0.0
    else:
        try:
            rx0, ry0, rx1, ry1 = (int(round(float(v))) for v in roi)
        except (TypeError, ValueError):
            raise LayerError(f"region must be four numbers (x0, y0, x1, y1), got {roi!r}") from None
        if rx1 <= rx0 or ry1 <= ry0:
            raise LayerError(f"region ({rx0}, {ry0}, {rx1}, {ry1}) is empty: need x1 > x0 and y1 > y0")
        if rx1 <= 0 or ry1 <= 0 or rx0 >= width or ry0 >= height:
            raise LayerError(f"region ({rx0}, {ry0}, {rx1}, {ry1}) lies outside the {width}×{height} layer")
        rx0, ry0 = max(rx0, 0), max(ry0, 0)
        rx1, ry1 = min(rx1, width), min(ry1, height)
    longest = max(rx1 - rx0, ry1 - ry0)
    side = int(np.ceil(longest * (1 + 2 * margin)))
    side = max(2, min(side, max(height, width)))

    def place(lo: int, hi: int, extent: int) -> int:
        start = int(round((lo + hi) / 2 - side / 2))
        a, b = min(0, extent - side), max(0, extent - side)
        return int(min(max(start, a), b))

    x0 = place(rx0, rx1, width)
    y0 = place(ry0, ry1, height)
    return x0, y0, x0 + side, y0 + side


def make_geometry(height: int, width: int, resolution: int, roi=None, margin: float = 0.1,
                  pad_mode: str = "edge") -> CropGeometry:
    if pad_mode not in PAD_MODES:
        raise LayerError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
    box = square_box(height, width, roi, margin)
    valid = (max(box[0], 0), max(box[1], 0), min(box[2], width), min(box[3], height))
    return CropGeometry(height, width, box, valid, int(resolution), pad_mode)


# ---------------------------------------------------------------------------------------------
# Resampling helpers (shared with paste-back)


def resize_channels(arr: np.ndarray, size: tuple[int, int], resample=Image.Resampling.LANCZOS) -> np.ndarray:
    """Resize float32 [H, W, C] (any value range) with Pillow per channel ('F' mode) → [h, w, C].

    size is (width, height) as Pillow wants it.
    """
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[..., None]
    out = np.empty((size[1], size[0], arr.shape[2]), dtype=np.float32)
    for c in range(arr.shape[2]):
        im = Image.fromarray(np.ascontiguousarray(arr[..., c]))
        out[..., c] = np.asarray(im.resize(size, resample=resample), dtype=np.float32)
    return out


def crop_square(layer: np.ndarray, geometry: CropGeometry) -> tuple[np.ndarray, np.ndarray]:
    """The square box of the layer (padded per geometry.pad_mode) and its validity mask (uint8 0/255)."""
    x0, y0, x1, y1 = geometry.box
    vx0, vy0, vx1, vy1 = geometry.valid
    crop = layer[vy0:vy1, vx0:vx1]
    pads = ((vy0 - y0, y1 - vy1), (vx0 - x0, x1 - vx1), (0, 0))
    valid = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    valid[pads[0][0]:pads[0][0] + (vy1 - vy0), pads[1][0]:pads[1][0] + (vx1 - vx0)] = 255
    if any(p for pair in pads for p in pair):
        mode = "edge" if geometry.pad_mode == "edge" else "symmetric"
        crop = np.pad(crop, pads, mode=mode)
    return np.ascontiguousarray(crop), valid


# ---------------------------------------------------------------------------------------------
# The target


@dataclass
class PreparedTarget:
    target: torch.Tensor          # [1, 3, R, R] float32 in [-1, 1]
    weight: torch.Tensor          # [1, 1, R, R] float32 in [0, 1]
    geometry: CropGeometry
    content_hash: str             # of the cropped source pixels + geometry (the cache key part)
    has_alpha: bool
    converted_from_gray: bool


def content_hash(layer: np.ndarray, geometry: CropGeometry) -> str:
    """BLAKE2b of the pixels inside the crop box and of the geometry (edits elsewhere don't count)."""
    vx0, vy0, vx1, vy1 = geometry.valid
    h = hashlib.blake2b(digest_size=20)
    h.update(repr((layer.shape[2], geometry.to_dict())).encode())
    region = layer[vy0:vy1, vx0:vx1]
    for row in range(region.shape[0]):            # row by row: never a full contiguous copy
        h.update(np.ascontiguousarray(region[row]).data)
    return h.hexdigest()


def prepare_target(pixels, resolution: int, roi=None, margin: float = 0.1, pad_mode: str = "edge",
                   max_side: int = DEFAULT_MAX_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS,
                   max_square_pixels: int = DEFAULT_MAX_SQUARE_PIXELS,
                   device: torch.device | str | None = None) -> PreparedTarget:
    """Validate a layer, crop its (grown, squared) region and resample it to the generator size."""
    shape = tuple(getattr(pixels, "shape", ()))
    was_gray = len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 2))
    layer = validate_layer(pixels, max_side, max_pixels)
    h, w, c = layer.shape
    geometry = make_geometry(h, w, resolution, roi, margin, pad_mode)
    _check_square(geometry, max_square_pixels)
    crop, valid = crop_square(layer, geometry)
    size = (resolution, resolution)
    rgb = np.asarray(Image.fromarray(np.ascontiguousarray(crop[..., :3])).resize(size, Image.Resampling.LANCZOS), dtype=np.float32)
    alpha = valid.astype(np.float32) / 255.0
    if c == 4:
        alpha = alpha * (crop[..., 3].astype(np.float32) / 255.0)
    if geometry.padded or c == 4:
        weight = resize_channels(alpha, size)[..., 0].clip(0.0, 1.0)
    else:
        weight = np.ones(size, dtype=np.float32)
    if weight.sum() <= 0:
        raise LayerError("the region is fully transparent: there is nothing to invert")
    target = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0) / 127.5 - 1.0
    weight_t = torch.from_numpy(np.ascontiguousarray(weight))[None, None]
    if device is not None:
        target, weight_t = target.to(device), weight_t.to(device)
    return PreparedTarget(target.contiguous(), weight_t.contiguous(), geometry,
                          content_hash(layer, geometry), c == 4, was_gray)


def _check_square(geometry: CropGeometry, max_square_pixels: int) -> None:
    side = geometry.side
    if side * side > max_square_pixels:
        limit = int(max_square_pixels ** 0.5)
        w, h = geometry.layer_width, geometry.layer_height
        raise CropTooLarge(f"the region to edit grows to a {side}×{side} px square on this {w}×{h} layer, "
                         f"more than the {limit}×{limit} px the daemon works on; select a smaller "
                         f"region (at most about {int(limit / 1.2)} px on its longer side), or crop "
                         f"or scale the layer down")


def tensor_to_uint8(img: torch.Tensor) -> np.ndarray:
    """[1, 3, H, W] or [3, H, W] in [-1, 1] → uint8 [H, W, 3]."""
    if img.ndim == 4:
        img = img[0]
    arr = ((img.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return arr.permute(1, 2, 0).cpu().numpy()
