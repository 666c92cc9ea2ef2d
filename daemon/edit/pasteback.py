"""Put an edited generator-resolution crop back into the full-resolution layer.

Two modes:

* ``"resample"`` — the edited R×R image is resampled (Lanczos) to the crop box and blended in.
* ``"detail"`` — detail-preserving: a dense correspondence between the pivot reconstruction
  and the edited image, from the generator's own features (`dense_correspondence`), says
  where every edited pixel came from. That displacement field is upsampled to the layer's
  resolution and used to warp the ORIGINAL full-resolution pixels (`grid_sample`), so texture
  and sharpness survive the edit instead of being replaced by a 512-px rendering. Colour /
  shading changes of the edit are carried over as a low-frequency correction (edited minus
  warped reconstruction, at generator resolution, blurred, upsampled). Where the warp has no
  good source — disocclusions, recognised by a high matching distance or by many edited pixels
  matching the same source pixel — the generated pixels are used instead.

In both modes the blend weight is the movable mask (everything inside the crop when no mask
is given), feathered *inwards* by ``feather`` layer pixels: outside the mask the weight is
exactly 0 and the original pixels are copied bit for bit; at image borders there is no
feather (the image edge is not an edge of the edit). The alpha channel of an RGBA layer is
never changed. Work is confined to the crop box; the detail warp runs in strips of rows, so
memory stays bounded for very large layers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .image_prep import CropGeometry, LayerError, resize_channels, validate_layer

MODES = ("resample", "detail")


# ---------------------------------------------------------------------------------------------
# Masks


def _box_blur(a: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1)² square, borders replicated (separable, via cumulative sums)."""
    if r <= 0:
        return a.astype(np.float32, copy=True)
    out = a.astype(np.float32)
    k = 2 * r + 1
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r + 1, r)
        c = np.cumsum(np.pad(out, pad, mode="edge"), axis=axis, dtype=np.float64)
        hi = [slice(None), slice(None)]
        lo = [slice(None), slice(None)]
        hi[axis] = slice(k, None)
        lo[axis] = slice(0, -k)
        out = ((c[tuple(hi)] - c[tuple(lo)]) / k).astype(np.float32)
    return out


def feather_inward(mask: np.ndarray, radius: float) -> np.ndarray:
    """Blend weights from a [0, 1] mask: 0 wherever mask is 0, ramping to mask value over ~radius px.

    weight = mask · clip(2·boxblur(mask) − 1, 0, 1): at the mask's edge the blur is ½ (weight
    0), at depth ≥ radius it is 1.
    """
    mask = np.asarray(mask, dtype=np.float32)
    r = int(math.ceil(radius))
    if r <= 0:
        return mask.copy()
    ramp = np.clip(2.0 * _box_blur(mask, r) - 1.0, 0.0, 1.0)
    return mask * ramp


def _as_unit_mask(mask, shape: tuple[int, int], what: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[..., 0]
    if m.shape != shape:
        raise LayerError(f"{what} must be {shape[1]}×{shape[0]} (width×height), got shape {m.shape}")
    if m.dtype == np.bool_:
        return m.astype(np.float32)
    if m.dtype == np.uint8:
        return m.astype(np.float32) / 255.0
    return np.clip(m.astype(np.float32), 0.0, 1.0)


def mask_from_generator(mask_gen, geometry: CropGeometry) -> np.ndarray:
    """A mask drawn at generator resolution [R, R] → the crop box's valid part at layer resolution."""
    m = _as_unit_mask(mask_gen, (geometry.resolution, geometry.resolution), "generator mask")
    up = resize_channels(m, (geometry.side, geometry.side))[..., 0].clip(0, 1)
    x0, y0 = geometry.box[:2]
    vx0, vy0, vx1, vy1 = geometry.valid
    return up[vy0 - y0:vy1 - y0, vx0 - x0:vx1 - x0]


def blend_weights(geometry: CropGeometry, mask=None, mask_gen=None, feather: float | None = None) -> np.ndarray:
    """Feathered blend weights over the crop box's valid region [vh, vw] (0 = keep original)."""
    vx0, vy0, vx1, vy1 = geometry.valid
    vh, vw = vy1 - vy0, vx1 - vx0
    H, W = geometry.layer_height, geometry.layer_width
    if feather is None:
        feather = max(1.0, 0.015 * geometry.side)
    m = np.ones((vh, vw), dtype=np.float32)
    if mask is not None:
        m = m * _as_unit_mask(mask, (H, W), "mask")[vy0:vy1, vx0:vx1]
    if mask_gen is not None:
        m = m * mask_from_generator(mask_gen, geometry)
    r = int(math.ceil(feather))
    if r <= 0:
        return m
    # Context ring of width r around the valid region: inside the image but outside the box → 0
    # (the edit must fade out there); outside the image → 1 (no feather along the image edge).
    big = np.zeros((vh + 2 * r, vw + 2 * r), dtype=np.float32)
    big[r:r + vh, r:r + vw] = m
    ys = np.arange(vy0 - r, vy1 + r)
    xs = np.arange(vx0 - r, vx1 + r)
    outside = (ys[:, None] < 0) | (ys[:, None] >= H) | (xs[None, :] < 0) | (xs[None, :] >= W)
    big[outside] = 1.0
    return feather_inward(big, r)[r:r + vh, r:r + vw] * (m > 0)


# ---------------------------------------------------------------------------------------------
# Dense correspondence


@dataclass
class Correspondence:
    """For each pixel of the edited feature map: where it came from in the reconstruction's.

    ``source`` [h, w, 2] holds (x, y) in reconstruction feature pixels (sub-pixel refined);
    ``distance`` [h, w] the matching cost (mean squared feature difference per channel);
    ``good`` [h, w] whether the pixel has a trustworthy source.
    """
    source: torch.Tensor
    distance: torch.Tensor
    good: torch.Tensor

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.distance.shape)

    def displacement(self) -> torch.Tensor:
        """source − target position, [h, w, 2] in feature pixels."""
        h, w = self.size
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        return self.source - torch.stack([xs, ys], dim=-1).to(self.source.device)


@torch.no_grad()
def dense_correspondence(feat_edit: torch.Tensor, feat_rec: torch.Tensor, radius: int,
                         normalize: bool = True, bad_factor: float = 4.0, bad_floor: float = 0.05,
                         max_distance: float | None = None, many_to_one: int = 4,
                         subpixel: bool = True, smooth: float = 1.0, aggregate: int = 1) -> Correspondence:
    """Nearest-neighbour match of every edited feature in the reconstruction's features.

    feat_* are [1, C, h, w] (or [C, h, w]); the search for pixel q covers the square
    |dx|, |dy| ≤ radius around q. Every window offset is evaluated for all pixels at once
    (batched matrix products, one pass per row offset, a running minimum kept), so memory is
    O(C·h·w + h·w·radius).

    A match is *bad* (no good source: generated pixels will be used) when its distance exceeds
    ``max_distance`` (default: max(bad_factor · median distance, bad_floor · mean squared
    feature magnitude)) or when more than ``many_to_one`` edited pixels picked the same source
    pixel.

    ``subpixel`` refines each match with a parabola through the costs of the neighbouring
    sources; ``smooth`` (σ in feature px, 0 = off) then averages the displacement over good
    neighbours, which removes the per-pixel jitter of nearest-neighbour matches.
    ``aggregate`` (a radius in feature px, 0 = off) averages each offset's cost over the
    (2a+1)² neighbourhood before taking the minimum (block matching), which makes matches in
    weakly textured regions far less ambiguous.
    """
    if feat_edit.ndim == 3:
        feat_edit = feat_edit.unsqueeze(0)
    if feat_rec.ndim == 3:
        feat_rec = feat_rec.unsqueeze(0)
    if feat_edit.shape != feat_rec.shape:
        raise ValueError(f"feature maps differ in shape: {tuple(feat_edit.shape)} vs {tuple(feat_rec.shape)}")
    e = feat_edit[0].float()
    r = feat_rec[0].float()
    if normalize:
        e = e / (e.norm(dim=0, keepdim=True) + 1e-8)
        r = r / (r.norm(dim=0, keepdim=True) + 1e-8)
    c, h, w = e.shape
    radius = int(max(0, radius))
    # Search: for each row offset dy, the dot products e(q)·r(q + (dx, dy)) for all dx at once,
    # as batched matrix products over tiles of columns (the band |dx| ≤ radius is gathered out),
    # then ‖e − r‖² = ‖e‖² + ‖r‖² − 2 e·r. Rows are produced one ahead so that the costs of the
    # four neighbouring offsets of each pixel's best match are known (for the sub-pixel fit)
    # without storing the whole cost volume. Memory: O(C·h·w + h·w·(2·radius + 1)).
    k = 2 * radius + 1
    E = e.permute(1, 2, 0).contiguous()                                           # [h, w, C]
    Rp = F.pad(r, [radius] * 4).permute(1, 2, 0).contiguous()                     # [h+2R, w+2R, C]
    e2 = E.square().sum(-1)                                                        # [h, w]
    r2p = Rp.square().sum(-1)                                                      # [h+2R, w+2R]
    validp = F.pad(torch.ones(1, 1, h, w, device=e.device), [radius] * 4)[0, 0] > 0
    energy = float(r.square().mean())
    dxs = torch.arange(-radius, radius + 1, device=e.device)
    tile = max(32, k)
    nan_band = torch.full((h, w, k), float("nan"), device=e.device)

    def band(dy: int) -> torch.Tensor:
        """Costs [h, w, k] of the offsets (dx, dy), dx = −R…R (inf where the source is outside)."""
        if abs(dy) > radius:
            return nan_band
        rows = Rp[radius + dy:radius + dy + h]                                     # [h, w+2R, C]
        dots = torch.empty((h, w, k), device=e.device)
        for x0 in range(0, w, tile):
            x1 = min(w, x0 + tile)
            prod = torch.bmm(E[:, x0:x1], rows[:, x0:x1 + 2 * radius].transpose(1, 2))   # [h, T, T+2R]
            idx = torch.arange(x1 - x0, device=e.device)[:, None] + torch.arange(k, device=e.device)[None]
            dots[:, x0:x1] = prod.gather(2, idx.expand(h, -1, -1))
        r2 = r2p[radius + dy:radius + dy + h].unfold(1, k, 1)                     # [h, w, k]
        ok = validp[radius + dy:radius + dy + h].unfold(1, k, 1)
        d = ((e2[..., None] + r2 - 2 * dots) / c).clamp_min(0)
        d = torch.where(ok, d, torch.full_like(d, float("inf")))
        if aggregate > 0:
            d = _aggregate(d.permute(2, 0, 1), aggregate).permute(1, 2, 0).contiguous()
        return d

    def pick(b: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        inside = (i >= 0) & (i < k)
        v = b.gather(2, i.clamp(0, k - 1).unsqueeze(-1)).squeeze(-1)
        return torch.where(inside, v, torch.full_like(v, float("nan")))

    best = torch.full((h, w), float("inf"), device=e.device)
    best_dx = torch.zeros((h, w), dtype=torch.long, device=e.device)
    best_dy = torch.zeros((h, w), dtype=torch.long, device=e.device)
    nb = torch.full((4, h, w), float("nan"), device=e.device)     # costs at dx−1, dx+1, dy−1, dy+1
    prev, cur = nan_band, band(-radius)
    for dy in range(-radius, radius + 1):
        nxt = band(dy + 1)
        # Tie-break towards short displacements (negligible against real differences).
        _, arg = (cur + 1e-7 * energy * (dxs.square() + dy * dy).to(cur.dtype)).min(dim=-1)
        m = pick(cur, arg)
        better = m < best
        best = torch.where(better, m, best)
        best_dx = torch.where(better, arg - radius, best_dx)
        best_dy = torch.where(better, torch.full_like(best_dy, dy), best_dy)
        cand = torch.stack([pick(cur, arg - 1), pick(cur, arg + 1), pick(prev, arg), pick(nxt, arg)])
        nb = torch.where(better.unsqueeze(0), cand, nb)
        prev, cur = cur, nxt
    ys, xs = torch.meshgrid(torch.arange(h, device=e.device), torch.arange(w, device=e.device), indexing="ij")
    sx = xs + best_dx
    sy = ys + best_dy
    src = torch.stack([sx, sy], dim=-1).float()
    if subpixel:
        src = src + _subpixel(best, nb)
    # Badness.
    if max_distance is None:
        max_distance = max(bad_factor * float(best.median()), bad_floor * energy)
    good = best <= max_distance
    counts = torch.bincount((sy * w + sx).flatten(), minlength=h * w).reshape(h, w)
    good &= counts[sy, sx] <= many_to_one
    if smooth > 0:
        src = _smooth_source(src, good, smooth)
    return Correspondence(source=src, distance=best, good=good)


def _smooth_source(src: torch.Tensor, good: torch.Tensor, sigma: float) -> torch.Tensor:
    """Normalised Gaussian smoothing of the displacement over good matches (removes match jitter)."""
    h, w, _ = src.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=src.dtype, device=src.device),
                            torch.arange(w, dtype=src.dtype, device=src.device), indexing="ij")
    disp = (src - torch.stack([xs, ys], dim=-1)).permute(2, 0, 1).unsqueeze(0)     # [1, 2, h, w]
    g = good.to(src.dtype)[None, None]
    num = _gaussian_blur_t(disp * g, sigma)
    den = _gaussian_blur_t(g, sigma)
    smoothed = torch.where(den > 1e-6, num / den.clamp_min(1e-6), disp)
    # Constant fields stay exactly constant; only jitter between neighbours is averaged out.
    disp = torch.where(g > 0, smoothed, disp)[0].permute(1, 2, 0)
    return disp + torch.stack([xs, ys], dim=-1)


def _aggregate(d: torch.Tensor, a: int) -> torch.Tensor:
    """Mean of cost maps [..., h, w] over (2a+1)² windows, ignoring infinite (out-of-image) entries."""
    shape = d.shape
    d4 = d.reshape(-1, 1, *shape[-2:])
    finite = torch.isfinite(d4)
    num = F.avg_pool2d(torch.where(finite, d4, torch.zeros_like(d4)), 2 * a + 1, stride=1,
                       padding=a, count_include_pad=False)
    den = F.avg_pool2d(finite.to(d.dtype), 2 * a + 1, stride=1, padding=a, count_include_pad=False)
    out = num / den.clamp_min(1e-12)
    return torch.where(finite, out, d4).reshape(shape)


def _subpixel(d0: torch.Tensor, nb: torch.Tensor) -> torch.Tensor:
    """Parabola through the best cost and its neighbours' (nb = [dx−1, dx+1, dy−1, dy+1]) → [h, w, 2]."""
    out = []
    for dm, dp in ((nb[0], nb[1]), (nb[2], nb[3])):
        denom = dm - 2 * d0 + dp
        off = 0.5 * (dm - dp) / denom
        # A (near-)exact match is already at the right place: the cost is not parabolic there.
        exact = d0 <= 1e-3 * torch.minimum(dm, dp)
        ok = torch.isfinite(off) & (denom > 1e-12) & ~exact
        out.append(torch.where(ok, off.clamp(-0.5, 0.5), torch.zeros_like(off)))
    return torch.stack(out, dim=-1)


def correspondence_block(G) -> int:
    """The block whose features are max(R/4, min(R, 128)) px: block 6 (128 px) at 512, the last block for ≤ 128.
    Finer than the drag's block: a dense correspondence wants local features."""
    R = G.resolution
    target = max(R // 4, min(R, 128))
    return int(math.log2(target)) - 1


@torch.no_grad()
def generator_correspondence(G, w_rec: torch.Tensor, w_edit: torch.Tensor, block: int | None = None,
                             max_shift_px: float | None = None, **kwargs) -> Correspondence:
    """Dense correspondence from the generator's own features at the pivot and at the edited latent.

    max_shift_px: the longest displacement of the edit in generator pixels (e.g. the longest
    handle→target arrow); the search window covers it plus a margin. Default: R/8.
    """
    k = block or correspondence_block(G)
    fr = G.synthesize(w_rec, noise_mode="const", stop_after_block=k).features[-1]
    fe = G.synthesize(w_edit, noise_mode="const", stop_after_block=k).features[-1]
    scale = fr.shape[-1] / G.resolution
    shift = G.resolution / 8 if max_shift_px is None else max_shift_px
    radius = int(math.ceil(shift * scale)) + 2
    return dense_correspondence(fe, fr, radius, **kwargs)


# ---------------------------------------------------------------------------------------------
# Paste-back


def _edited_to_array(edited, resolution: int) -> np.ndarray:
    """Edited crop → float32 [R, R, 3] in 0…255."""
    if isinstance(edited, torch.Tensor):
        t = edited.detach().float().cpu()
        if t.ndim == 4:
            t = t[0]
        if t.shape[0] != 3:
            raise ValueError(f"edited image tensor must be [1, 3, R, R] or [3, R, R], got {tuple(edited.shape)}")
        arr = ((t.clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).numpy()
    else:
        arr = np.asarray(edited)
        if arr.dtype != np.uint8:
            raise ValueError("an edited numpy image must be uint8 [R, R, 3]")
        arr = arr[..., :3].astype(np.float32)
    if arr.shape[:2] != (resolution, resolution):
        raise ValueError(f"edited image must be {resolution}×{resolution}, got {arr.shape[:2]}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _upsampled_valid(arr: np.ndarray, geometry: CropGeometry) -> np.ndarray:
    """[R, R, C] float → Lanczos to the box side, cropped to the valid region."""
    up = resize_channels(arr, (geometry.side, geometry.side))
    x0, y0 = geometry.box[:2]
    vx0, vy0, vx1, vy1 = geometry.valid
    return up[vy0 - y0:vy1 - y0, vx0 - x0:vx1 - x0]


def _gaussian_blur_t(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return x
    k = int(math.ceil(3 * sigma))
    g = torch.exp(-torch.arange(-k, k + 1, dtype=torch.float32) ** 2 / (2 * sigma * sigma))
    g = (g / g.sum()).to(x)
    c = x.shape[1]
    x = F.conv2d(F.pad(x, [k, k, 0, 0], mode="replicate"), g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, [0, 0, k, k], mode="replicate"), g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _detail_layer(layer: np.ndarray, geometry: CropGeometry, edited_lr: np.ndarray, rec_lr: np.ndarray,
                  corr: Correspondence, transfer_color: bool, color_blur: float, bad_dilate: float,
                  strip_rows: int, interp: str) -> tuple[np.ndarray, np.ndarray]:
    """Warped original (+ colour correction) over the valid region, and the 'use generated' weight."""
    R = geometry.resolution
    side = geometry.side
    x0, y0 = geometry.box[:2]
    vx0, vy0, vx1, vy1 = geometry.valid
    H, W = geometry.layer_height, geometry.layer_width
    h, w = corr.size
    disp = corr.displacement().permute(2, 0, 1).unsqueeze(0).float().cpu()       # [1, 2, h, w] feature px
    bad = (~corr.good).float().cpu()[None, None]

    # Colour correction at generator resolution: edited − reconstruction warped by the same field.
    corr_lr = None
    if transfer_color:
        disp_g = F.interpolate(disp, size=(R, R), mode="bilinear", align_corners=False) * (R / w)
        ys, xs = torch.meshgrid(torch.arange(R, dtype=torch.float32), torch.arange(R, dtype=torch.float32),
                                indexing="ij")
        gx = (xs + disp_g[0, 0] + 0.5) / R * 2 - 1
        gy = (ys + disp_g[0, 1] + 0.5) / R * 2 - 1
        rec_t = torch.from_numpy(rec_lr).permute(2, 0, 1).unsqueeze(0)
        warped_rec = F.grid_sample(rec_t, torch.stack([gx, gy], -1)[None], mode="bilinear",
                                   padding_mode="border", align_corners=False)
        edit_t = torch.from_numpy(edited_lr).permute(2, 0, 1).unsqueeze(0)
        corr_lr = _gaussian_blur_t(edit_t - warped_rec, color_blur)           # [1, 3, R, R]

    # 'Use generated' weight at generator resolution, slightly dilated and softened.
    bad_g = F.interpolate(bad, size=(R, R), mode="bilinear", align_corners=False)
    if bad_dilate > 0:
        k = int(math.ceil(bad_dilate))
        bad_g = F.max_pool2d(bad_g, 2 * k + 1, stride=1, padding=k)
        bad_g = _gaussian_blur_t(bad_g, bad_dilate / 2)
    bad_g = bad_g.clamp(0, 1)

    vh, vw = vy1 - vy0, vx1 - vx0
    out = np.empty((vh, vw, 3), dtype=np.float32)
    use_gen = np.empty((vh, vw), dtype=np.float32)
    f2l = side / w                     # layer px per feature px
    max_d = float(disp.abs().max()) * f2l + 2
    cols = torch.arange(vx0, vx1, dtype=torch.float32)
    for s0 in range(0, vh, strip_rows):
        s1 = min(vh, s0 + strip_rows)
        rows = torch.arange(vy0 + s0, vy0 + s1, dtype=torch.float32)
        yy, xx = torch.meshgrid(rows, cols, indexing="ij")
        # Sample the low-resolution fields at these layer pixels (normalised box coordinates).
        ng = torch.stack([(xx - x0 + 0.5) / side * 2 - 1, (yy - y0 + 0.5) / side * 2 - 1], -1)[None]
        d = F.grid_sample(disp, ng, mode="bilinear", padding_mode="border", align_corners=False)[0] * f2l
        g = F.grid_sample(bad_g, ng, mode="bilinear", padding_mode="border", align_corners=False)[0, 0]
        sx, sy = xx + d[0], yy + d[1]
        # Source rows needed by this strip (the displacement is bounded by max_d).
        r0 = int(max(0, math.floor(vy0 + s0 - max_d)))
        r1 = int(min(H, math.ceil(vy0 + s1 + max_d) + 1))
        c0 = int(max(0, math.floor(vx0 - max_d)))
        c1 = int(min(W, math.ceil(vx1 + max_d) + 1))
        src = torch.from_numpy(np.ascontiguousarray(layer[r0:r1, c0:c1, :3])).permute(2, 0, 1)[None].float()
        gx = (sx - c0 + 0.5) / (c1 - c0) * 2 - 1
        gy = (sy - r0 + 0.5) / (r1 - r0) * 2 - 1
        warped = F.grid_sample(src, torch.stack([gx, gy], -1)[None], mode=interp,
                               padding_mode="border", align_corners=False)[0]
        if corr_lr is not None:
            warped = warped + F.grid_sample(corr_lr, ng, mode="bilinear", padding_mode="border",
                                            align_corners=False)[0]
        out[s0:s1] = warped.permute(1, 2, 0).numpy()
        use_gen[s0:s1] = g.numpy()
    return out, use_gen


def layer_for_paste(layer, width: int, height: int, made_by: str) -> tuple[np.ndarray, bool]:
    """(the layer as H×W×C uint8, whether it came in grayscale) for a paste-back; it must be
    the size `made_by` (a geometry, an alignment) was made for."""
    in_shape = tuple(getattr(layer, "shape", ()))
    gray = len(in_shape) == 2 or (len(in_shape) == 3 and in_shape[2] in (1, 2))
    layer = validate_layer(layer, max_side=1 << 30, max_pixels=1 << 62)
    H, W, _ = layer.shape
    if (H, W) != (height, width):
        raise LayerError(f"the layer is {W}×{H} but {made_by} was made for {width}×{height}")
    return layer, gray


def paste_back(layer, edited, geometry: CropGeometry, *, mask=None, mask_gen=None,
               feather: float | None = None, mode: str = "resample",
               correspondence: Correspondence | None = None, reconstruction=None,
               transfer_color: bool = True, color_blur: float = 1.0, bad_dilate: float = 1.5,
               interp: str = "bicubic", strip_rows: int = 512) -> np.ndarray:
    """Composite the edited R×R crop into the full-resolution layer.

    layer: the original uint8 [H, W, 3|4] (as given to `prepare_target`; grayscale is returned
    as RGB). edited: [1, 3, R, R] tensor in [-1, 1] or uint8 [R, R, 3]. mask: movable region
    in layer pixels [H, W] (bool, uint8 0…255 or float 0…1); mask_gen: the same at generator
    resolution [R, R]; both may be given (they multiply); neither = the whole crop.
    feather: inward feather radius in layer px (default 1.5 % of the crop side).
    mode "detail" needs ``correspondence`` (`generator_correspondence`) and ``reconstruction``
    (G'(w_pivot), same formats as edited) — see the module docstring. ``interp`` is the filter
    used to sample the original pixels ("bicubic" keeps fine texture sharper than "bilinear";
    "nearest" never interpolates).
    Returns a new array of the layer's shape and dtype (a grayscale layer gets the luma of the
    edit back); pixels outside the mask are bit-identical, alpha is never changed.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    original = layer
    layer, gray = layer_for_paste(layer, geometry.layer_width, geometry.layer_height, "the crop geometry")
    H, W, C = layer.shape
    R = geometry.resolution
    edited_lr = _edited_to_array(edited, R)
    vx0, vy0, vx1, vy1 = geometry.valid
    alpha = blend_weights(geometry, mask, mask_gen, feather)
    out = np.array(original, copy=True)
    if not np.any(alpha > 0):
        return out
    gen = _upsampled_valid(edited_lr, geometry)                    # [vh, vw, 3] float 0…255
    if mode == "detail":
        if correspondence is None or reconstruction is None:
            raise ValueError("mode='detail' needs correspondence= and reconstruction=")
        rec_lr = _edited_to_array(reconstruction, R)
        detail, use_gen = _detail_layer(layer, geometry, edited_lr, rec_lr, correspondence, transfer_color,
                                        color_blur, bad_dilate, strip_rows, interp)
        new = detail + use_gen[..., None] * (gen - detail)
    else:
        new = gen
    orig = layer[vy0:vy1, vx0:vx1, :3].astype(np.float32)
    a = alpha[..., None]
    blended = orig + a * (new - orig)
    if gray:
        # Back to one channel (ITU-R BT.601 luma; a gray pixel v stays v).
        blended = blended @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        blended = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        region = out[vy0:vy1, vx0:vx1]
        if region.ndim == 2:
            region[...] = np.where(alpha > 0, blended, region)
        else:
            region[..., 0] = np.where(alpha > 0, blended, region[..., 0])
        return out
    blended = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    region = out[vy0:vy1, vx0:vx1, :3]
    region[...] = np.where(a > 0, blended, region)
    return out
