"""FFHQ face alignment in, de-aligned paste-back out.

FFHQ models only represent faces framed the way their training set was (NVlabs ffhq-dataset,
`recreate_aligned_images`): eyes level at fixed places, the face at a fixed scale. From the
68 dlib landmarks: eye centres = means of 36–41 and 42–47, mouth = mean of 48 and 54; the
oriented square has half-side max(2·|eye_to_eye|, 1.8·|eye_to_mouth|) along
x = eye_to_eye − rot90(eye_to_mouth), centred at eye_avg + 0.1·eye_to_mouth. The photo is
shrunk when the square is over twice the output, cropped with a 10 % border, reflect-padded
with blur and a fade to the median where the square leaves the photo, QUAD-transformed and
resized (antialiased) to the model's resolution.

Deliberate differences. (1) The recipe transforms to 4096 px (bilinear) only to antialias the
downscale to R; transforming to k·R px, k = ⌈side / R⌉, does the same at a fraction of the
cost (0.01 s instead of 1.3 s; 51–56 dB from the recipe's pixels with its filter). (2) Bicubic
rather than bilinear keeps an upscaled face sharp, so paste-back gives the photo back (≥ 35 dB
instead of 33.5 on the astronaut). (3) After the shrink the recipe divides the quad by the
integer shrink factor while the photo is resized to a rounded size; here the quad follows the
photo's actual resize ratio, so the aligned frame is exactly the affine map `AlignedGeometry`
describes and paste-back inverts it without drift (the two differ by under 0.2 aligned px).
(4) The landmarks are predicted again on the aligned crop (`refine`): dlib's predictor is not
rotation invariant, and the recipe's alignment of a tilted or rescaled copy of a photo would
otherwise differ by a pixel or two (with faces.py's averaging over jittered boxes: 40–47 dB
instead of 29–32 dB between the aligned crops of the astronaut and of a rotated, enlarged copy).

Coordinates: layer continuous coordinates (pixel (i, j) covers [i, i+1)×[j, j+1)) for the quad;
`layer_to_gen`/`gen_to_layer` speak pixel indices on both sides, as `CropGeometry` does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from . import faces as faces_mod
from .image_prep import CropGeometry, LayerError, PreparedTarget, content_hash, validate_layer
from .pasteback import Correspondence, _gaussian_blur_t, blend_weights, layer_for_paste

ALIGN_MODES = ("auto", "ffhq", "none")
TRANSFORM_SIZE = 4096
# The square's own edge fades over this fraction of its side: it runs through hair and
# background, where an imperfect reconstruction would otherwise show as a seam.
_SQUARE_FEATHER = 0.05
# Landmarks are refined on an aligned crop this large (the face spans about 200 px of it).
_REFINE_RES = 512


class AlignError(LayerError):
    """No face to align where one is needed; the message says what the user can do."""


# ---------------------------------------------------------------------------------------------
# The quad


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """The recipe's oriented square [4, 2] from 68 landmarks (pixel indices in and out):
    top-left, bottom-left, bottom-right, top-right of the aligned image."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"FFHQ alignment needs 68 landmarks, got shape {lm.shape}")
    eye_left, eye_right = lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


@dataclass(frozen=True)
class AlignedGeometry:
    """Where the generator's aligned R×R image sits in the layer: an oriented square.

    Duck-types `CropGeometry` for the session (resolution, scale, side, box, valid, the point
    maps, to_dict): ``quad`` is the square's corners in layer continuous coordinates (aligned
    top-left, bottom-left, bottom-right, top-right); ``box`` its bounding box in whole pixels
    (possibly reaching outside the layer), ``valid`` that box inside the layer.
    """
    layer_height: int
    layer_width: int
    quad: tuple[tuple[float, float], ...]
    resolution: int
    kind: str = "ffhq"

    @property
    def _q(self) -> np.ndarray:
        return np.asarray(self.quad, dtype=np.float64)

    @property
    def axes(self) -> np.ndarray:
        """[[ex], [ey]]: layer displacement per aligned pixel along x and along y."""
        q = self._q
        return np.stack([q[3] - q[0], q[1] - q[0]]) / self.resolution

    @property
    def side(self) -> float:
        """The square's side in layer px."""
        return float(np.hypot(*(self._q[3] - self._q[0])))

    @property
    def scale(self) -> float:
        """Generator pixels per layer pixel."""
        return self.resolution / self.side

    @property
    def box(self) -> tuple[int, int, int, int]:
        q = self._q
        return (int(math.floor(q[:, 0].min())), int(math.floor(q[:, 1].min())),
                int(math.ceil(q[:, 0].max())), int(math.ceil(q[:, 1].max())))

    @property
    def valid(self) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = self.box
        return max(x0, 0), max(y0, 0), min(x1, self.layer_width), min(y1, self.layer_height)

    @property
    def padded(self) -> bool:
        return self.box != self.valid

    def to_aligned(self, points) -> np.ndarray:
        """Layer continuous coordinates [..., 2] → aligned continuous coordinates (0…R)."""
        p = np.asarray(points, dtype=np.float64) - self._q[0]
        return p @ np.linalg.inv(self.axes)

    def from_aligned(self, points) -> np.ndarray:
        return np.asarray(points, dtype=np.float64) @ self.axes + self._q[0]

    def layer_to_gen(self, points) -> np.ndarray:
        return self.to_aligned(np.asarray(points, dtype=np.float64) + 0.5) - 0.5

    def gen_to_layer(self, points) -> np.ndarray:
        return self.from_aligned(np.asarray(points, dtype=np.float64) + 0.5) - 0.5

    def contains(self, points) -> np.ndarray:
        """Which layer points (continuous coordinates) lie inside the square."""
        a = self.to_aligned(points)
        return np.all((a >= 0) & (a <= self.resolution), axis=-1)

    def to_dict(self) -> dict:
        return {"layer_height": self.layer_height, "layer_width": self.layer_width, "align": self.kind,
                "quad": [[float(x), float(y)] for x, y in self.quad], "resolution": self.resolution}


def geometry_for(face: faces_mod.Face, layer_height: int, layer_width: int, resolution: int) -> AlignedGeometry:
    quad = ffhq_quad(face.landmarks) + 0.5
    return AlignedGeometry(int(layer_height), int(layer_width), tuple(tuple(float(v) for v in p) for p in quad),
                           int(resolution))


# ---------------------------------------------------------------------------------------------
# Finding the face


def locate(layer: np.ndarray, resolution: int, roi=None) -> AlignedGeometry:
    """Detect the faces and pick the one to edit: the one whose square holds the centre of the
    region of interest (the selection), else the one overlapping it most; the largest face when
    there is no region."""
    h, w = layer.shape[:2]
    found = faces_mod.detect_faces(layer[..., :3] if layer.ndim == 3 else np.stack([layer] * 3, -1))
    if not found:
        raise AlignError("no face found in this image, so it cannot be aligned for this face model; "
                         "edit with alignment off (`--align none`, or the plug-in's alignment switch), or "
                         "use a model made for this kind of picture")
    geos = [geometry_for(refine(layer, f), h, w, resolution) for f in found]
    if roi is None:
        return geos[0]
    x0, y0, x1, y1 = (float(v) for v in roi)
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    holding = [g for g in geos if g.contains(centre)]
    if holding:
        return holding[0]
    overlaps = [_box_overlap(g.box, (x0, y0, x1, y1)) for g in geos]
    if max(overlaps) <= 0:
        raise AlignError(f"no face lies in the selected region ({x0:.0f}, {y0:.0f})–({x1:.0f}, {y1:.0f}) "
                         f"({len(found)} face(s) elsewhere in the image); select the face to edit, or "
                         f"edit with alignment off")
    return geos[int(np.argmax(overlaps))]


def refine(layer: np.ndarray, face: faces_mod.Face) -> faces_mod.Face:
    """The face's landmarks predicted again on its own aligned crop, mapped back. dlib's
    predictor is not rotation invariant and follows the detector's box; on the aligned crop the
    face is upright at one scale, so a tilted, enlarged or moved copy of a photo gets the same
    landmarks (and the same alignment) within resampling error. The first prediction is kept
    when the aligned crop shows no face."""
    h, w = layer.shape[:2]
    geo = geometry_for(face, h, w, _REFINE_RES)
    crop = align_image(layer[..., :3], geo)
    again = faces_mod.detect_faces(crop)
    if not again:
        return face
    centre = np.array([_REFINE_RES / 2, _REFINE_RES / 2])
    best = min(again, key=lambda f: np.hypot(*(f.landmarks.mean(axis=0) - centre)))
    return faces_mod.Face(face.box, face.score, geo.gen_to_layer(best.landmarks))


def _box_overlap(a, b) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


# ---------------------------------------------------------------------------------------------
# Aligning (the recipe)


def align_image(rgb: np.ndarray, geo: AlignedGeometry) -> np.ndarray:
    """The aligned R×R uint8 RGB crop of an RGB uint8 layer (module doc: the recipe's steps)."""
    img = Image.fromarray(np.ascontiguousarray(rgb[..., :3]))
    quad = geo._q - 0.5                                 # the recipe's pixel-index convention
    qsize = geo.side
    R = geo.resolution
    shrink = int(math.floor(qsize / R * 0.5))
    if shrink > 1:
        rsize = (int(round(img.size[0] / shrink)), int(round(img.size[1] / shrink)))
        ratio = np.array(rsize, dtype=np.float64) / img.size
        img = img.resize(rsize, Image.Resampling.LANCZOS)
        quad = (quad + 0.5) * ratio - 0.5
        qsize = qsize * float(ratio.mean())
    border = max(int(round(qsize * 0.1)), 3)
    crop = (int(math.floor(quad[:, 0].min())), int(math.floor(quad[:, 1].min())),
            int(math.ceil(quad[:, 0].max())), int(math.ceil(quad[:, 1].max())))
    crop = (max(crop[0] - border, 0), max(crop[1] - border, 0),
            min(crop[2] + border, img.size[0]), min(crop[3] + border, img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad = quad - crop[:2]
    img, quad = _pad(img, quad, qsize, border)
    n = supersampled_size(qsize, R)
    img = img.transform((n, n), Image.Transform.QUAD, (quad + 0.5).flatten(), Image.Resampling.BICUBIC)
    if n > R:
        img = img.resize((R, R), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def supersampled_size(qsize: float, resolution: int) -> int:
    """The size the quad is transformed at before the antialiased resize to R: never a
    downscale (which would alias), at most the recipe's 4096."""
    k = max(1, math.ceil(qsize / resolution - 1e-9))
    return max(resolution, min(TRANSFORM_SIZE, k * resolution))


def _pad(img: Image.Image, quad: np.ndarray, qsize: float, border: int) -> tuple[Image.Image, np.ndarray]:
    """Where the square leaves the photo: mirror the photo outwards, blur it and fade it to the
    median colour with the distance from the photo (the recipe's padding)."""
    lo = np.floor(quad.min(axis=0)).astype(int)
    hi = np.ceil(quad.max(axis=0)).astype(int)
    pad = (max(-lo[0] + border, 0), max(-lo[1] + border, 0),
           max(hi[0] - img.size[0] + border, 0), max(hi[1] - img.size[1] + border, 0))
    if max(pad) <= border - 4:
        return img, quad
    pad = np.maximum(pad, int(round(qsize * 0.3)))
    arr = np.pad(np.asarray(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
    h, w, _ = arr.shape
    y, x, _ = np.ogrid[:h, :w, :1]
    mask = np.maximum(1.0 - np.minimum(np.float32(x) / pad[0], np.float32(w - 1 - x) / pad[2]),
                      1.0 - np.minimum(np.float32(y) / pad[1], np.float32(h - 1 - y) / pad[3]))
    # PIL's Gaussian (box-filter passes) at the recipe's sigma: scipy, the recipe's, is no dependency.
    blurred = np.asarray(Image.fromarray(arr).filter(ImageFilter.GaussianBlur(qsize * 0.02)), dtype=np.float32)
    out = arr.astype(np.float32)
    out += (blurred - out) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    out += (np.median(out, axis=(0, 1)) - out) * np.clip(mask, 0.0, 1.0)
    return Image.fromarray(np.uint8(np.clip(np.rint(out), 0, 255)), "RGB"), quad + pad[:2]


def _warp_plane(plane: np.ndarray, geo: AlignedGeometry) -> np.ndarray:
    """A float [H, W] layer plane sampled on the aligned grid (0 outside the layer), antialiased
    the same way as the image (supersampled, then averaged down)."""
    R = geo.resolution
    n = supersampled_size(geo.side, R)
    t = (np.arange(n) + 0.5) * (R / n)
    grid = geo.from_aligned(np.stack(np.meshgrid(t, t), axis=-1))            # [n, n, 2] layer coords
    H, W = plane.shape
    norm = torch.from_numpy(np.stack([grid[..., 0] / W * 2 - 1, grid[..., 1] / H * 2 - 1], -1)).float()
    src = torch.from_numpy(np.ascontiguousarray(plane, dtype=np.float32))[None, None]
    out = F.grid_sample(src, norm[None], mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]
    if n != R:
        out = F.interpolate(out[None, None], size=(R, R), mode="area")[0, 0]
    return out.clamp(0, 1).numpy()


def mask_to_aligned(mask_layer: np.ndarray, geo: AlignedGeometry) -> torch.Tensor:
    """Layer-size movable mask [H, W] in [0, 1] → [R, R] in the aligned frame (0 off the layer)."""
    return torch.from_numpy(np.ascontiguousarray(_warp_plane(mask_layer, geo)))


def prepare_aligned_target(pixels, geo: AlignedGeometry, device=None) -> PreparedTarget:
    """The inversion target for an aligned face: the recipe's crop, weighted by what of it lies
    on the photo (the padding is made up) and by alpha."""
    shape = tuple(getattr(pixels, "shape", ()))
    was_gray = len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 2))
    layer = validate_layer(pixels)
    H, W, C = layer.shape
    aligned = align_image(layer[..., :3], geo)
    inside = np.ones((H, W), dtype=np.float32) if C == 3 else layer[..., 3].astype(np.float32) / 255.0
    weight = _warp_plane(inside, geo)
    if weight.sum() <= 0:
        raise LayerError("the face is fully transparent: there is nothing to invert")
    target = torch.from_numpy(aligned.astype(np.float32)).permute(2, 0, 1).unsqueeze(0) / 127.5 - 1.0
    weight_t = torch.from_numpy(np.ascontiguousarray(weight))[None, None]
    if device is not None:
        target, weight_t = target.to(device), weight_t.to(device)
    return PreparedTarget(target.contiguous(), weight_t.contiguous(), geo, content_hash(layer, geo),
                          C == 4, was_gray)


# ---------------------------------------------------------------------------------------------
# De-aligning (paste-back)


def _to_float_rgb(img, R: int) -> np.ndarray:
    if isinstance(img, torch.Tensor):
        t = img.detach().float().cpu()
        t = t[0] if t.ndim == 4 else t
        arr = ((t.clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).numpy()
    else:
        arr = np.asarray(img)[..., :3].astype(np.float32)
    if arr.shape[:2] != (R, R):
        raise ValueError(f"the aligned image must be {R}×{R}, got {arr.shape[:2]}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _sampleable(arr: np.ndarray, geo: AlignedGeometry) -> torch.Tensor:
    """[R, R, C] → [1, C, n, n], low-passed to the layer's scale when the square is smaller
    than R on the layer (bicubic sampling alone would alias)."""
    t = torch.from_numpy(arr).permute(2, 0, 1)[None]
    n = int(math.ceil(geo.side))
    if n < geo.resolution:
        t = F.interpolate(t, size=(n, n), mode="area")
    return t


def _grid_strip(geo: AlignedGeometry, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Aligned continuous coordinates [r, c, 2] of the layer pixel centres rows × cols."""
    xx, yy = np.meshgrid(cols + 0.5, rows + 0.5)
    return geo.to_aligned(np.stack([xx, yy], axis=-1))


def _sample(t: torch.Tensor, a: np.ndarray, R: int, mode: str = "bicubic") -> np.ndarray:
    """Sample [1, C, n, n] (covering the aligned square) at aligned coordinates a [r, c, 2]."""
    g = torch.from_numpy(a / R * 2 - 1).float()[None]
    return F.grid_sample(t, g, mode=mode, padding_mode="border", align_corners=False)[0].permute(1, 2, 0).numpy()


def square_weight(a: np.ndarray, geo: AlignedGeometry, feather: float) -> np.ndarray:
    """1 deep inside the square, fading to 0 at its edges over `feather` layer px; 0 outside."""
    R = geo.resolution
    depth = np.minimum(np.minimum(a[..., 0], R - a[..., 0]), np.minimum(a[..., 1], R - a[..., 1])) / geo.scale
    return np.clip(depth / max(feather, 1e-6), 0.0, 1.0).astype(np.float32)


def paste_aligned(layer, edited, geo: AlignedGeometry, *, mask=None, feather: float | None = None,
                  mode: str = "resample", correspondence: Correspondence | None = None, reconstruction=None,
                  strip_rows: int = 256) -> np.ndarray:
    """The edited aligned R×R image back into the full-resolution layer through the inverse
    quad transform, blended with a feathered mask of the square ∩ `mask` (the movable
    selection, layer size). Outside it the layer is bit-identical, alpha untouched. mode
    "detail" warps the layer's own pixels along `correspondence` (edited → reconstruction, in
    the aligned frame) instead, generated pixels only where nothing can be warped."""
    original = layer
    layer, gray = layer_for_paste(layer, geo.layer_width, geo.layer_height, "the alignment")
    H, W, _ = layer.shape
    R = geo.resolution
    if feather is None:
        feather = max(1.0, _SQUARE_FEATHER * geo.side)
    vx0, vy0, vx1, vy1 = geo.valid
    out = np.array(original, copy=True)
    if vx1 <= vx0 or vy1 <= vy0:
        return out
    sel = None
    if mask is not None:
        box = CropGeometry(H, W, (vx0, vy0, vx1, vy1), (vx0, vy0, vx1, vy1), R)
        sel = blend_weights(box, mask=mask)
    gen = _sampleable(_to_float_rgb(edited, R), geo)
    detail = None
    if mode == "detail":
        if correspondence is None or reconstruction is None:
            raise ValueError("mode='detail' needs correspondence= and reconstruction=")
        detail = _DetailFields(_to_float_rgb(edited, R), _to_float_rgb(reconstruction, R), correspondence)
    cols = np.arange(vx0, vx1)
    for s0 in range(vy0, vy1, strip_rows):
        rows = np.arange(s0, min(vy1, s0 + strip_rows))
        a = _grid_strip(geo, rows, cols)
        w = square_weight(a, geo, feather)
        if sel is not None:
            w *= sel[s0 - vy0:s0 - vy0 + len(rows)]
        if not np.any(w > 0):
            continue
        new = _sample(gen, a, R)
        if detail is not None:
            warped, use_gen = detail.warp(layer, geo, a)
            new = warped + use_gen[..., None] * (new - warped)
        _composite(out, layer, rows, vx0, vx1, new, w, gray)
    return out


def _composite(out: np.ndarray, layer: np.ndarray, rows: np.ndarray, x0: int, x1: int, new: np.ndarray,
               w: np.ndarray, gray: bool) -> None:
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    orig = layer[r0:r1, x0:x1, :3].astype(np.float32)
    blended = orig + w[..., None] * (new - orig)
    if gray:
        luma = np.clip(np.rint(blended @ np.array([0.299, 0.587, 0.114], dtype=np.float32)), 0, 255).astype(np.uint8)
        region = out[r0:r1, x0:x1]
        if region.ndim == 2:
            region[...] = np.where(w > 0, luma, region)
        else:
            region[..., 0] = np.where(w > 0, luma, region[..., 0])
        return
    region = out[r0:r1, x0:x1, :3]
    region[...] = np.where(w[..., None] > 0, np.clip(np.rint(blended), 0, 255).astype(np.uint8), region)


class _DetailFields:
    """The detail paste's fields in the aligned frame (as pasteback's): the displacement, a
    low-frequency colour correction and where to use generated pixels instead."""

    def __init__(self, edited: np.ndarray, rec: np.ndarray, corr: Correspondence,
                 color_blur: float = 1.0, bad_dilate: float = 1.5):
        R = edited.shape[0]
        h, w = corr.size
        self.R = R
        disp = corr.displacement().permute(2, 0, 1).unsqueeze(0).float().cpu() * (R / w)   # aligned px
        self.disp = F.interpolate(disp, size=(R, R), mode="bilinear", align_corners=False)
        ys, xs = torch.meshgrid(torch.arange(R, dtype=torch.float32), torch.arange(R, dtype=torch.float32),
                                indexing="ij")
        g = torch.stack([(xs + self.disp[0, 0] + 0.5) / R * 2 - 1, (ys + self.disp[0, 1] + 0.5) / R * 2 - 1], -1)
        rec_t = torch.from_numpy(rec).permute(2, 0, 1)[None]
        warped_rec = F.grid_sample(rec_t, g[None], mode="bilinear", padding_mode="border", align_corners=False)
        self.color = _gaussian_blur_t(torch.from_numpy(edited).permute(2, 0, 1)[None] - warped_rec, color_blur)
        bad = F.interpolate((~corr.good).float().cpu()[None, None], size=(R, R), mode="bilinear", align_corners=False)
        k = int(math.ceil(bad_dilate))
        bad = _gaussian_blur_t(F.max_pool2d(bad, 2 * k + 1, stride=1, padding=k), bad_dilate / 2)
        self.bad = bad.clamp(0, 1)

    def warp(self, layer: np.ndarray, geo: AlignedGeometry, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        R = self.R
        d = _sample(self.disp, a, R, mode="bilinear")
        src = geo.from_aligned(a + d)                                    # layer continuous coords
        H, W = layer.shape[:2]
        c0 = int(max(0, math.floor(src[..., 0].min()) - 2))
        c1 = int(min(W, math.ceil(src[..., 0].max()) + 3))
        r0 = int(max(0, math.floor(src[..., 1].min()) - 2))
        r1 = int(min(H, math.ceil(src[..., 1].max()) + 3))
        if c1 <= c0 or r1 <= r0:
            return _sample(torch.zeros(1, 3, 2, 2), a, R), np.ones(a.shape[:2], np.float32)
        part = torch.from_numpy(np.ascontiguousarray(layer[r0:r1, c0:c1, :3])).permute(2, 0, 1)[None].float()
        g = torch.from_numpy(np.stack([(src[..., 0] - c0) / (c1 - c0) * 2 - 1,
                                       (src[..., 1] - r0) / (r1 - r0) * 2 - 1], -1)).float()[None]
        warped = F.grid_sample(part, g, mode="bicubic", padding_mode="border", align_corners=False)[0]
        warped = warped.permute(1, 2, 0).numpy() + _sample(self.color, a, R, mode="bilinear")
        return warped, _sample(self.bad, a, R, mode="bilinear")[..., 0]


# ---------------------------------------------------------------------------------------------
# For the session


def resolve(choice: str | None, model_info: dict) -> str:
    """The alignment to use: "auto" (or None) = what the model's metadata says ("none" when it
    says nothing), else the user's choice."""
    choice = choice or "auto"
    if choice not in ALIGN_MODES:
        raise ValueError(f"align must be one of {', '.join(ALIGN_MODES)}, got {choice!r}")
    if choice == "auto":
        choice = str(model_info.get("align") or "none")
    return choice if choice in ALIGN_MODES else "none"


def region_preview(edited: np.ndarray, geo: AlignedGeometry, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A cheap preview of the paste over geo.valid at `size` (w, h): the de-aligned generated
    pixels [h, w, 3] float and where they go [h, w, 1] (inside the square, no feather)."""
    vx0, vy0, vx1, vy1 = geo.valid
    sx, sy = (vx1 - vx0) / size[0], (vy1 - vy0) / size[1]
    xx, yy = np.meshgrid(vx0 + (np.arange(size[0]) + 0.5) * sx, vy0 + (np.arange(size[1]) + 0.5) * sy)
    a = geo.to_aligned(np.stack([xx, yy], axis=-1))
    t = torch.from_numpy(np.ascontiguousarray(edited[..., :3], dtype=np.float32)).permute(2, 0, 1)[None]
    inside = np.all((a >= 0) & (a <= geo.resolution), axis=-1).astype(np.float32)[..., None]
    return _sample(t, a, geo.resolution, mode="bilinear"), inside
