"""Procedural portraits with analytic landmarks: the training domain of the default model.

No pretrained StyleGAN weights exist here, so the project trains its own small generator on
stylised faces drawn by this module. Because every feature is drawn from explicit parameters,
its landmarks are known exactly, which makes drag accuracy measurable the way the paper's
face-landmark benchmark measures it.

Everything is batched tensor math (no loops over pixels or images) and runs on any device.
Small parts (eyes, brows, nose, mouth, ears, neck) are drawn in per-image windows cut out of
the canvas, which is most of what makes the renderer fast.

Coordinate frames, all with x to the right and y down:
  * image: normalised to [-1, 1] over the whole picture. The pixel with index (i, j) covers
    [j, j+1) x [i, i+1) in pixel units and its centre is (j + 0.5, i + 0.5); landmarks are
    returned in those pixel units, so x_px = (x_norm + 1) / 2 * resolution.
  * head: the image frame translated to the head centre, rotated by the roll and divided by
    the scale; the head outline spans roughly u in [-0.75, 0.75], v in [-1, 0.95].
  * face: where a pixel lands on the face surface once the yaw is undone. The face is modelled
    as a vertical cylinder of radius R, so a yaw shifts the features sideways and compresses
    them towards the silhouette, while the silhouette itself stays put. The nose stands off
    the cylinder, so it shifts further (by its depth times sin(yaw)).
Landmarks are placed in the frame their feature is drawn in and pushed through the same
(forward) transforms, so they land on the drawn features by construction.

Randomness comes from a counter-based integer hash of (seed, stream, index), so image i
depends on its seed only: not on the batch it is rendered in, nor on the device.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields
from functools import cached_property, partial

import torch
import torch.nn.functional as F
from torch import Tensor

LANDMARK_NAMES = (
    "jaw_left_high", "jaw_left_low", "chin", "jaw_right_low", "jaw_right_high",
    "brow_left_outer", "brow_left_mid", "brow_left_inner",
    "brow_right_inner", "brow_right_mid", "brow_right_outer",
    "eye_left_outer", "eye_left_top", "eye_left_inner", "eye_left_bottom", "pupil_left",
    "eye_right_inner", "eye_right_top", "eye_right_outer", "eye_right_bottom", "pupil_right",
    "nose_tip", "nostril_left", "nostril_right",
    "mouth_left", "lip_upper_top", "lip_upper_inner", "lip_lower_inner", "lip_lower_bottom",
    "mouth_right",
)
"""Left and right as seen in the picture (the subject's right eye is `eye_left`)."""

# The jaw landmarks are the points of the lower head outline whose outward normal points
# at these angles (head frame, degrees, 0 = +u, 90 = straight down): defined by the
# outline's own shape, so they can be found from the visible jaw alone.
_JAW_NORMALS = (155.0, 125.0, 90.0, 55.0, 25.0)
_JAW_SAMPLES = 257
# Pixels rendered per chunk: on a CPU small enough that per-pixel maps stay in cache; on
# a GPU large, so that each op launches once for many images.
_CHUNK_PIXELS = {"cpu": 16 * 128 * 128, "accelerator": 256 * 128 * 128}


# --------------------------------------------------------------------------------------
# Counter-based random numbers
# --------------------------------------------------------------------------------------

_MASK32 = 0xFFFFFFFF


def _hash32(x: Tensor) -> Tensor:
    """A 32-bit integer mix on int64 tensors holding values in [0, 2**32).

    The multiplier is below 2**27, so products stay far below 2**63: the result is exact
    and identical on every device, which plain float RNG streams are not.
    """
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    return (x >> 16) ^ x


class _Rng:
    """Uniform numbers per seed. Small draws come, in call order, from one block of numbers
    hashed up front (one pass instead of a pass per parameter); large draws get their own
    stream. Either way, draw k of image i depends only on seed i."""

    BLOCK = 192

    def __init__(self, seeds: Tensor):
        self.key = _hash32(seeds & _MASK32)
        self.stream = 0
        self.block = self._stream(self.BLOCK)
        self.used = 0

    def _stream(self, n: int) -> Tensor:
        """[B, n] uniform numbers in [0, 1) from a fresh stream."""
        self.stream += 1
        base = _hash32((self.key + self.stream * 0x9E3779B1) & _MASK32)          # [B]
        # Hashing the index once for the whole batch keeps it to one hash per number.
        idx = _hash32(torch.arange(n, device=self.key.device))
        bits = _hash32(idx ^ base[:, None])                                       # [B, n]
        return (bits >> 8).to(torch.float32) * (1.0 / (1 << 24))

    def uniform(self, *shape: int, low: float = 0.0, high: float = 1.0) -> Tensor:
        """[B, *shape] uniform numbers in [low, high)."""
        n = math.prod(shape)
        if n <= 16:
            if self.used + n > self.BLOCK:
                raise RuntimeError("_Rng.BLOCK is too small for the parameters drawn")
            u = self.block[:, self.used:self.used + n]
            self.used += n
        else:
            u = self._stream(n)
        return (low + (high - low) * u).view(-1, *shape)

    def pick(self, palette: Tensor, jitter: float) -> Tensor:
        """[B, 3] colours: a random blend of two neighbouring palette entries, jittered."""
        t = self.uniform() * (len(palette) - 1)
        i = t.long().clamp(max=len(palette) - 2)
        frac = (t - i)[:, None]
        pal = palette.to(t.device)
        colour = torch.lerp(pal[i], pal[i + 1], frac)
        return (colour * (1 + self.uniform(3, low=-jitter, high=jitter))).clamp(0, 1)

    def mixture(self, p_rare: float, common: tuple, rare: tuple) -> Tensor:
        """[B] values from `common` most of the time and from `rare` with probability p_rare."""
        pick = self.uniform() < p_rare
        return torch.where(pick, self.uniform(low=rare[0], high=rare[1]),
                           self.uniform(low=common[0], high=common[1]))

    def integer(self, low: int, high: int) -> Tensor:
        """[B] whole numbers in [low, high), as floats."""
        return torch.floor(self.uniform(low=low, high=high))

    def lattice(self, channels: int, height: int, width: int, smooth_cells: int = 0) -> Tensor:
        """[B, C, H, W] noise in [-1, 1]; smooth_cells > 0 makes it low-frequency by
        upsampling a coarser lattice, so one texture read serves several frequencies."""
        if not smooth_cells:
            return self.uniform(channels, height, width, low=-1.0, high=1.0)
        coarse = self.uniform(channels, smooth_cells, smooth_cells, low=-1.0, high=1.0)
        return F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)


LATENT_DIMS = 90
"""How many latent dimensions `latent_params` reads; a generator distilled on it needs a
z of at least this size (extra dimensions are ignored)."""
LATENT_LATTICE_CELLS = 3
"""Side of the coarse blotch lattice drawn from latents (3 × 3 numbers instead of the seed
renderer's 7 × 7: every number costs a latent dimension)."""


class _LatentSource:
    """The `_Rng` interface on Gaussian latents: draw k is Φ(z[:, k]), so each parameter is a
    smooth, monotone function of one coordinate of z and a generator can learn the map.

    Where the seed renderer jumps, this source does not: a rare/common mixture is one inverse
    CDF of a single number, whole counts stay fractional, and the per-pixel grain, which no
    function of a few hundred numbers can reproduce, is zero."""

    def __init__(self, z: Tensor):
        if z.ndim != 2 or z.shape[1] < LATENT_DIMS:
            raise ValueError(f"latents must be [B, D] with D ≥ {LATENT_DIMS}, got {tuple(z.shape)}")
        self.u = 0.5 * (1 + torch.erf(z.float() / math.sqrt(2)))
        self.used = 0

    def uniform(self, *shape: int, low: float = 0.0, high: float = 1.0) -> Tensor:
        n = math.prod(shape)
        if self.used + n > LATENT_DIMS:
            raise RuntimeError("LATENT_DIMS is smaller than the parameters drawn")
        u = self.u[:, self.used:self.used + n]
        self.used += n
        return (low + (high - low) * u).reshape(-1, *shape)

    pick = _Rng.pick

    def mixture(self, p_rare: float, common: tuple, rare: tuple) -> Tensor:
        u = self.uniform()
        in_rare = (u / p_rare).clamp(max=1)
        in_common = ((u - p_rare) / (1 - p_rare)).clamp(min=0)
        return torch.where(u < p_rare, rare[0] + (rare[1] - rare[0]) * in_rare,
                           common[0] + (common[1] - common[0]) * in_common)

    def integer(self, low: int, high: int) -> Tensor:
        return self.uniform(low=low, high=high)

    def lattice(self, channels: int, height: int, width: int, smooth_cells: int = 0) -> Tensor:
        if not smooth_cells:
            return self.u.new_zeros(self.u.shape[0], channels, height, width)
        n = LATENT_LATTICE_CELLS
        coarse = self.uniform(channels, n, n, low=-1.0, high=1.0)
        return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)


def _hsv(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """[B] hue/saturation/value in [0, 1] -> [B, 3] RGB."""
    k = torch.remainder(torch.tensor([5.0, 3.0, 1.0], device=h.device) + h[:, None] * 6, 6)
    return v[:, None] * (1 - s[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1))


_SKIN = torch.tensor([[0.97, 0.82, 0.72], [0.88, 0.67, 0.53], [0.74, 0.52, 0.37],
                      [0.55, 0.37, 0.25], [0.36, 0.23, 0.16]])
_HAIR = torch.tensor([[0.05, 0.04, 0.04], [0.20, 0.12, 0.07], [0.38, 0.23, 0.12],
                      [0.55, 0.25, 0.10], [0.78, 0.62, 0.36], [0.62, 0.60, 0.58]])
_IRIS = torch.tensor([[0.20, 0.11, 0.05], [0.40, 0.24, 0.10], [0.45, 0.40, 0.18],
                      [0.28, 0.45, 0.28], [0.28, 0.45, 0.68], [0.45, 0.52, 0.60]])


# --------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------

@dataclass
class PortraitParams:
    """Everything one portrait is drawn from; every field is batched along dim 0.

    Lengths are in head units (see the module docstring) unless stated otherwise.
    Fields named *_l / *_r are per side, as seen in the picture.
    """
    seed: Tensor            # [B] int64, kept for reference
    # pose (image frame)
    center: Tensor          # [B, 2] head centre, normalised image coords
    scale: Tensor           # [B] head unit -> normalised image units
    roll: Tensor            # [B] radians, clockwise on screen
    yaw: Tensor             # [B] radians, > 0 turns the features to the right
    # head outline
    head_width: Tensor      # [B] half-width at the cheeks
    head_top: Tensor        # [B] crown height above the centre
    jaw_length: Tensor      # [B] chin depth below the centre
    jaw_square: Tensor      # [B] pushes the jaw's diagonals out, 0 = elliptic
    chin_taper: Tensor      # [B] narrowing of the jaw towards the chin
    nose_depth: Tensor      # [B] how far the nose tip stands off the face cylinder
    # eyes (face frame, mirrored: x is the distance from the face midline)
    eye_x: Tensor           # [B]
    eye_y: Tensor           # [B]
    eye_half_width: Tensor  # [B]
    eye_tilt: Tensor        # [B] radians, > 0 lifts the outer corners
    eye_open_l: Tensor      # [B] 0 closed … 1 wide open
    eye_open_r: Tensor      # [B]
    iris_radius: Tensor     # [B] as a fraction of eye_half_width
    pupil_radius: Tensor    # [B] as a fraction of the iris radius
    gaze: Tensor            # [B, 2] iris offset as a fraction of eye_half_width (image x, y)
    # brows (face frame, mirrored)
    brow_x: Tensor          # [B]
    brow_y_l: Tensor        # [B]
    brow_y_r: Tensor        # [B]
    brow_half_length: Tensor
    brow_tilt: Tensor       # [B] radians, > 0 lifts the outer ends
    brow_arch: Tensor       # [B]
    brow_thickness: Tensor  # [B]
    # nose (nose frame)
    nose_y: Tensor
    nose_tip_radius: Tensor
    nostril_x: Tensor
    # mouth (face frame)
    mouth_y: Tensor
    mouth_half_width: Tensor
    smile: Tensor           # [B] lift of the corners
    mouth_open: Tensor      # [B] gap between the lips at the centre
    lip_upper: Tensor       # [B] thickness
    lip_lower: Tensor
    cupid_bow: Tensor
    # ears and hair (head frame)
    ear_y: Tensor
    hair_volume: Tensor     # [B] how far the hair stands off the skull
    hair_length: Tensor     # [B] bottom of the back hair
    hairline: Tensor        # [B, 3] hairline v = c0 + c1 q^2 + c2 q^4, q = (u - part) / width
    hair_part: Tensor       # [B] sideways shift of the crown and the hairline
    hair_strands: Tensor    # [B, 2] strand count around the crown and their twist
    # colours [B, 3] and lighting
    skin: Tensor
    lips: Tensor
    hair: Tensor
    iris: Tensor
    clothes: Tensor
    background: Tensor      # [B, 2, 3] two colours of the backdrop gradient
    background_dir: Tensor  # [B, 2] direction of that gradient
    stripes: Tensor         # [B, 2] stripe contrast and frequency on the clothes
    neckline: Tensor        # [B, 2] half-width and depth of the neckline
    light: Tensor           # [B, 3] unit vector towards the light
    noise: Tensor           # [B, 2, 64, 64] (blotches, grain) lattice over the image

    @property
    def batch_size(self) -> int:
        return self.seed.shape[0]

    def to(self, device) -> PortraitParams:
        return PortraitParams(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def select(self, index) -> PortraitParams:
        """A sub-batch (index: int list, slice or bool/long tensor)."""
        if isinstance(index, int):
            index = [index]
        return PortraitParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def _as_seeds(seeds, device) -> Tensor:
    if isinstance(seeds, Tensor):
        return seeds.to(device=device, dtype=torch.int64).reshape(-1)
    return torch.tensor(list(seeds), dtype=torch.int64, device=device)


def sample_params(seeds, device="cpu") -> PortraitParams:
    """Random portrait parameters, one image per seed (list of ints or int tensor)."""
    seeds = _as_seeds(seeds, device)
    return _draw_params(_Rng(seeds), seeds, device)


def latent_params(z: Tensor) -> PortraitParams:
    """Portrait parameters as smooth functions of Gaussian latents z [B, D] (D ≥ LATENT_DIMS):
    the targets a generator is distilled on. `seed` is -1: these portraits have none."""
    return _draw_params(_LatentSource(z), torch.full((z.shape[0],), -1, dtype=torch.int64,
                                                     device=z.device), z.device)


def render_latents(z: Tensor, resolution: int = 128) -> tuple[Tensor, Tensor]:
    """latent_params + render."""
    return render(latent_params(z), resolution)


def _draw_params(rng, seeds: Tensor, device) -> PortraitParams:
    """The parameter table, drawn from `rng` (an `_Rng` or a `_LatentSource`) in a fixed order."""
    u = rng.uniform
    eye_y = u(low=-0.05, high=0.05)
    eye_open = rng.mixture(0.15, (0.65, 1.0), (0.08, 0.6))
    brow_raise = u(low=0.18, high=0.25)
    brow_asym = u(low=-0.02, high=0.02)
    hue = u()
    light = torch.stack([u(low=-0.7, high=0.7), u(low=-0.6, high=0.1),
                         torch.full_like(hue, 0.8)], dim=1)
    bg_angle = u(low=0, high=2 * math.pi)
    return PortraitParams(
        seed=seeds,
        center=torch.stack([u(low=-0.08, high=0.08), u(low=0.0, high=0.08)], dim=1),
        scale=u(low=0.6, high=0.68),
        roll=u(low=-0.2, high=0.2),
        yaw=u(low=-0.3, high=0.3),
        head_width=u(low=0.68, high=0.78),
        head_top=u(low=0.95, high=1.05),
        jaw_length=u(low=0.86, high=0.98),
        jaw_square=u(low=0.0, high=1.1),
        chin_taper=u(low=0.0, high=0.25),
        nose_depth=u(low=0.08, high=0.14),
        eye_x=u(low=0.27, high=0.33),
        eye_y=eye_y,
        eye_half_width=u(low=0.11, high=0.145),
        eye_tilt=u(low=-0.08, high=0.15),
        eye_open_l=(eye_open + u(low=-0.06, high=0.06)).clamp(0.05, 1),
        eye_open_r=(eye_open + u(low=-0.06, high=0.06)).clamp(0.05, 1),
        iris_radius=u(low=0.42, high=0.5),
        pupil_radius=u(low=0.35, high=0.5),
        gaze=torch.stack([u(low=-0.3, high=0.3), u(low=-0.1, high=0.1)], dim=1),
        brow_x=u(low=0.27, high=0.31),
        brow_y_l=eye_y - brow_raise - brow_asym,
        brow_y_r=eye_y - brow_raise + brow_asym,
        brow_half_length=u(low=0.11, high=0.15),
        brow_tilt=u(low=-0.15, high=0.15),
        brow_arch=u(low=0.0, high=0.05),
        brow_thickness=u(low=0.018, high=0.032),
        nose_y=u(low=0.3, high=0.37),
        nose_tip_radius=u(low=0.045, high=0.065),
        nostril_x=u(low=0.05, high=0.07),
        mouth_y=u(low=0.54, high=0.6),
        mouth_half_width=u(low=0.15, high=0.22),
        smile=u(low=-0.015, high=0.05),
        mouth_open=rng.mixture(0.4, (0.0, 0.0), (0.02, 0.14)),
        lip_upper=u(low=0.03, high=0.045),
        lip_lower=u(low=0.04, high=0.06),
        cupid_bow=u(low=0.0, high=0.012),
        ear_y=eye_y + u(low=0.08, high=0.14),
        hair_volume=u(low=0.04, high=0.16),
        hair_length=rng.mixture(0.5, (0.1, 0.5), (0.6, 1.8)),
        hairline=torch.stack([u(low=-0.62, high=-0.4), u(low=0.05, high=0.2),
                              u(low=0.25, high=0.5)], dim=1),
        hair_part=u(low=-0.3, high=0.3),
        hair_strands=torch.stack([rng.integer(36, 64), u(low=-4.0, high=4.0)], dim=1),
        skin=rng.pick(_SKIN, 0.04),
        lips=torch.lerp(rng.pick(_SKIN, 0.0), torch.tensor([0.7, 0.24, 0.27], device=device),
                        u(low=0.45, high=0.75)[:, None]),
        hair=rng.pick(_HAIR, 0.1),
        iris=rng.pick(_IRIS, 0.1),
        clothes=_hsv(u(), u(low=0.15, high=0.8), u(low=0.2, high=0.85)),
        background=torch.stack([_hsv(hue, u(low=0.05, high=0.5), u(low=0.35, high=0.9)),
                                _hsv(hue + u(low=-0.15, high=0.15), u(low=0.05, high=0.5),
                                     u(low=0.25, high=0.8))], dim=1),
        background_dir=torch.stack([bg_angle.cos(), bg_angle.sin()], dim=1),
        stripes=torch.stack([rng.mixture(0.35, (0.0, 0.0), (0.15, 0.35)),
                             u(low=1.5, high=4.0)], dim=1),
        neckline=torch.stack([u(low=0.25, high=0.45), u(low=0.1, high=0.45)], dim=1),
        light=light / light.norm(dim=1, keepdim=True),
        noise=torch.cat([rng.lattice(1, 64, 64, smooth_cells=7), rng.lattice(1, 64, 64)], dim=1),
    )


# --------------------------------------------------------------------------------------
# Geometry shared by the renderer and the landmarks
# --------------------------------------------------------------------------------------

def _col(x: Tensor) -> Tensor:
    """[B] -> [B, 1, 1], to broadcast against [B, H, W] maps."""
    return x[:, None, None]


def _head_q(uu: Tensor, vv: Tensor, vv_low: Tensor, uv_low: Tensor, p: PortraitParams, ex) -> Tensor:
    """(rho / outline radius)^2 for points with u^2 = uu, v^2 = vv, relu(v)^2 = vv_low and
    uu * vv_low / rho^2 = uv_low; `ex` reshapes [B] parameters to broadcast.

    The upper half is an ellipse (the skull). Below the centre the half-height becomes the
    jaw length, and a cos^2 sin^2 term squares the jaw (pushes its diagonals out) or tapers
    the chin. Only products and sums: this runs on every pixel.
    """
    a, top, jaw = p.head_width, p.head_top, p.jaw_length
    mix = p.chin_taper / (a * a) - p.jaw_square / (a * jaw)
    q = uu * ex(1 / (a * a))
    return q.addcmul_(vv, ex(1 / (top * top))).addcmul_(vv_low, ex(1 / (jaw * jaw) - 1 / (top * top))) \
        .addcmul_(uv_low, ex(mix))


def _yaw_radius(p: PortraitParams) -> Tensor:
    """[B] radius of the cylinder the yaw turns the face on (wider than the head so the
    outer features compress but never reach the silhouette)."""
    return 1.3 * p.head_width


def _nose_shift(p: PortraitParams) -> Tensor:
    """[B] extra sideways shift of the nose: it stands off the cylinder by nose_depth."""
    return p.nose_depth * p.yaw.sin()


def _face_to_head(fu: Tensor, p: PortraitParams) -> Tensor:
    """Forward yaw: face-surface x -> head-frame x, for [B] or [B, L] fu."""
    shape = (-1,) + (1,) * (fu.dim() - 1)
    yaw, r = p.yaw.view(shape), _yaw_radius(p).view(shape)
    return fu * yaw.cos() + (r * r - fu * fu).clamp(min=0).sqrt() * yaw.sin()


def _head_to_face(u: Tensor, p: PortraitParams) -> Tensor:
    """Inverse yaw, per pixel: head-frame x [B, h, w] -> face-surface x."""
    r, yaw = _col(_yaw_radius(p)), _col(p.yaw)
    return u * yaw.cos() - (r * r - u * u).clamp_(min=0).sqrt_() * yaw.sin()


def _head_to_image(u: Tensor, v: Tensor, p: PortraitParams) -> tuple[Tensor, Tensor]:
    """Head-frame points ([B] or [B, L]) -> normalised image coordinates."""
    shape = (-1,) + (1,) * (u.dim() - 1)
    c, s = p.roll.cos().view(shape), p.roll.sin().view(shape)
    scale = p.scale.view(shape)
    return (p.center[:, 0].view(shape) + scale * (u * c - v * s),
            p.center[:, 1].view(shape) + scale * (u * s + v * c))


def _rotate(x: Tensor, y: Tensor, angle: Tensor) -> tuple[Tensor, Tensor]:
    """Coordinates along/across an axis that points right and up by `angle` (y down)."""
    c, s = angle.cos(), angle.sin()
    return x * c - y * s, x * s + y * c


def _unrotate(t: Tensor, n: Tensor, angle: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of _rotate."""
    c, s = angle.cos(), angle.sin()
    return t * c + n * s, -t * s + n * c


def _eye_heights(w: Tensor, openness: Tensor) -> tuple[Tensor, Tensor]:
    """Upper and lower lid heights above/below the corner line for eye half-width w; never
    quite zero so the lid arcs keep a finite radius when the eye is closed."""
    return (0.55 * w * openness).clamp(min=0.012), (0.38 * w * openness).clamp(min=0.008)


def _mouth_profile(x: Tensor, smile, gap, upper, lower, bow, half_width):
    """Heights (mouth frame, y down) of the lip curves at x: upper outer, upper inner,
    lower inner, lower outer. All four meet at the corners x = +-half_width."""
    q2 = (x / half_width) ** 2
    inside = (1 - q2).clamp(min=0)
    body = inside.sqrt()
    centre = -smile * q2
    upper_inner = centre - 0.3 * gap * inside
    lower_inner = centre + 0.7 * gap * inside
    dip = bow * (1 - 16 * q2).clamp(min=0) ** 2         # the cupid's bow notch
    return upper_inner - upper * body + dip, upper_inner, lower_inner, lower_inner + lower * body


def _eye_brow_points(p: PortraitParams, side: float) -> list[Tensor]:
    """Brow (outer, mid, inner) then eye (outer, top, inner, bottom, pupil) points, face
    frame, each [B, 2]. side = -1 for the eye on the left of the picture."""
    brow_y = p.brow_y_l if side < 0 else p.brow_y_r
    openness = p.eye_open_l if side < 0 else p.eye_open_r
    w = p.eye_half_width
    up, low = _eye_heights(w, openness)
    zero = torch.zeros_like(w)
    brow = [(p.brow_half_length, zero), (zero, -p.brow_arch), (-p.brow_half_length, zero)]
    eye = [(w, zero), (zero, -up), (-w, zero), (zero, low),
           (side * p.gaze[:, 0] * w, p.gaze[:, 1] * w)]
    pts = []
    for (t, n), cx, cy, tilt in [(b, p.brow_x, brow_y, p.brow_tilt) for b in brow] + \
                                [(e, p.eye_x, p.eye_y, p.eye_tilt) for e in eye]:
        dx, dy = _unrotate(t, n, tilt)
        pts.append(torch.stack([side * (cx + dx), cy + dy], dim=-1))
    return pts


def _reorder_for_side(pts: list[Tensor], side: float) -> list[Tensor]:
    """Put brow and eye points in LANDMARK_NAMES order (picture left to right)."""
    brow, eye = pts[:3], pts[3:]
    if side < 0:
        return brow + eye
    return brow[::-1] + [eye[2], eye[1], eye[0], eye[3], eye[4]]


def _jaw_points(p: PortraitParams) -> tuple[Tensor, Tensor]:
    """Head-frame (u, v) [B, 5] of the outline points with the _JAW_NORMALS normals: the
    lower outline is sampled densely and the normal angle (which grows monotonically along
    the convex outline) is interpolated."""
    B, dev = p.batch_size, p.scale.device
    theta = torch.linspace(0, math.pi, _JAW_SAMPLES, device=dev)
    c, s = theta.cos(), theta.sin()
    c2, s2 = (c * c).expand(B, -1), (s * s).expand(B, -1)
    radius = _head_q(c2, s2, s2, c2 * s2, p, lambda x: x[:, None]).rsqrt()       # [B, N]
    u, v = radius * c, radius * s
    du, dv = torch.gradient(u, dim=1)[0], torch.gradient(v, dim=1)[0]
    # Outward normal (dv, -du); its angle measured from straight down, then offset, so it
    # runs from 0 to pi without wrapping around.
    normal = torch.atan2(-dv, -du) + math.pi / 2
    target = torch.tensor(_JAW_NORMALS, device=dev).mul(math.pi / 180).expand(B, -1).contiguous()
    hi = torch.searchsorted(normal.contiguous(), target).clamp(1, _JAW_SAMPLES - 1)
    lo = hi - 1
    n_lo, n_hi = normal.gather(1, lo), normal.gather(1, hi)
    w = ((target - n_lo) / (n_hi - n_lo)).clamp(0, 1)
    return (torch.lerp(u.gather(1, lo), u.gather(1, hi), w),
            torch.lerp(v.gather(1, lo), v.gather(1, hi), w))


def landmarks(p: PortraitParams, resolution: int = 128) -> Tensor:
    """[B, L, 2] landmark positions in pixels (pixel centres at integer + 0.5)."""
    jaw_u, jaw_v = _jaw_points(p)

    left = _reorder_for_side(_eye_brow_points(p, -1.0), -1.0)
    right = _reorder_for_side(_eye_brow_points(p, 1.0), 1.0)
    face = left[:3] + right[:3] + left[3:] + right[3:]            # brows, then eyes
    zero = torch.zeros_like(p.nose_y)
    shift = _nose_shift(p)
    face += [torch.stack([shift, p.nose_y], -1),
             torch.stack([shift - p.nostril_x, p.nose_y + 0.03], -1),
             torch.stack([shift + p.nostril_x, p.nose_y + 0.03], -1)]
    mw = p.mouth_half_width
    curves = _mouth_profile(zero, p.smile, p.mouth_open, p.lip_upper, p.lip_lower,
                            p.cupid_bow, mw)
    mouth = [(-mw, -p.smile)] + [(zero, y) for y in curves] + [(mw, -p.smile)]
    face += [torch.stack([x, p.mouth_y + y], -1) for x, y in mouth]
    face = torch.stack(face, dim=1)                                              # [B, 25, 2]

    u = torch.cat([jaw_u, _face_to_head(face[..., 0], p)], dim=1)
    v = torch.cat([jaw_v, face[..., 1]], dim=1)
    x, y = _head_to_image(u, v, p)
    return (torch.stack([x, y], dim=-1) + 1) * (resolution / 2)


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------

# Full-frame maps are large, and every fresh allocation of one costs page faults, so the
# code that runs on every pixel chains in-place ops (`x_`) on temporaries it owns.

def _coverage(d: Tensor, ppu: Tensor) -> Tensor:
    """Anti-aliased coverage of a shape from its signed distance d in head units (> 0
    outside); ppu = pixels per unit. A smoothstep across one pixel centred on the edge."""
    t = (d * -ppu).add_(0.5).clamp_(0, 1)
    return t.mul(-2).add_(3).mul_(t).mul_(t)                # t^2 (3 - 2t)


def _ellipse_sdf(x: Tensor, y: Tensor, rx, ry) -> Tensor:
    """Approximate signed distance to an axis-aligned ellipse (exact on the outline)."""
    xr, yr = x / rx, y / ry
    k0 = (xr * xr).addcmul_(yr, yr).sqrt_()
    k1 = xr.div_(rx).square_().add_(yr.div_(ry).square_()).sqrt_().add_(1e-6)
    return k0.sub(1).mul_(k0).div_(k1)


def _max_(a: Tensor, b: Tensor) -> Tensor:
    """In-place elementwise maximum into a (b broadcasts)."""
    return torch.maximum(a, b, out=a)


def _min_(a: Tensor, b: Tensor) -> Tensor:
    """In-place elementwise minimum into a (b broadcasts)."""
    return torch.minimum(a, b, out=a)


class _Window:
    """An axis-aligned block of pixels per image, the same size for the whole batch."""

    def __init__(self, x0: Tensor, y0: Tensor, width: int, height: int, res: int):
        self.x0, self.y0, self.width, self.height = x0, y0, width, height
        rows = y0[:, None] + torch.arange(height, device=y0.device)              # [B, h]
        cols = x0[:, None] + torch.arange(width, device=x0.device)               # [B, w]
        self.index = (rows[:, :, None] * res + cols[:, None, :]).flatten(1)     # [B, h*w]

    @staticmethod
    def full(batch: int, res: int, device) -> _Window:
        zero = torch.zeros(batch, dtype=torch.long, device=device)
        return _Window(zero, zero, res, res, res)

    @staticmethod
    def around(x: Tensor, y: Tensor, res: int) -> _Window:
        """The smallest window holding the points x, y ([B, K], normalised image coords)
        of every image, plus a two-pixel margin for anti-aliasing."""
        px, py = (x + 1) * (res / 2), (y + 1) * (res / 2)
        lo_x, lo_y = px.amin(1).floor().long() - 2, py.amin(1).floor().long() - 2
        width = min(res, int((px.amax(1).ceil().long() + 2 - lo_x).max()))
        height = min(res, int((py.amax(1).ceil().long() + 2 - lo_y).max()))
        return _Window(lo_x.clamp(0, res - width), lo_y.clamp(0, res - height), width, height, res)

    def select(self, part: slice) -> _Window:
        """The window of a sub-batch."""
        win = _Window.__new__(_Window)
        win.x0, win.y0, win.index = self.x0[part], self.y0[part], self.index[part]
        win.width, win.height = self.width, self.height
        return win

    def gather(self, maps: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, h, w]."""
        B, C = maps.shape[:2]
        idx = self.index[:, None].expand(-1, C, -1)
        return maps.flatten(2).gather(2, idx).view(B, C, self.height, self.width)

    def scatter(self, maps: Tensor, crop: Tensor):
        """Write [B, C, h, w] back into [B, C, H, W] in place."""
        C = maps.shape[1]
        maps.flatten(2).scatter_(2, self.index[:, None].expand(-1, C, -1), crop.flatten(2))


class _Frame:
    """Per-pixel coordinates of a window in the head and face frames ([B, h, w] maps)."""

    def __init__(self, p: PortraitParams, win: _Window, res: int):
        dev = p.scale.device
        step = 2.0 / res
        cols = win.x0[:, None] + torch.arange(win.width, device=dev) + 0.5       # [B, w]
        rows = win.y0[:, None] + torch.arange(win.height, device=dev) + 0.5      # [B, h]
        self.x = (cols * step - 1)[:, None, :]                                   # [B, 1, w]
        self.y = (rows * step - 1)[:, :, None]                                   # [B, h, 1]
        dx, dy = self.x - _col(p.center[:, 0]), self.y - _col(p.center[:, 1])
        inv = 1 / _col(p.scale)
        c, s = _col(p.roll.cos()) * inv, _col(p.roll.sin()) * inv
        self.u = dx * c + dy * s                     # the only full-size ops of the frame
        self.v = dy * c - dx * s
        self.bx, self.by = dx * inv, dy * inv        # head-sized units, not rotated (body)
        self.ppu = _col(p.scale) * (res / 2)         # pixels per head unit
        self.p = p

    @cached_property
    def fu(self) -> Tensor:
        """Face-surface x of every pixel."""
        return _head_to_face(self.u, self.p)


class _Canvas:
    """Albedo [B, 3, H, W] and luminance [B, 1, H, W], composited layer by layer.

    Layers have flat colours and textures modulate only luminance, so painting a layer is
    one 3-channel and one 1-channel blend; the picture is albedo * luminance at the end.
    `person` is the coverage of everything the light falls on, `head` the skin of the head
    (facial features are clipped to it), `noise` the (blotch, grain) texture and `hair`
    the hair luminance.

    A crop (a canvas over a window) gathers a map from its parent only when a painter
    first reads it, and pastes back only the maps painting changes.
    """
    _PAINTED = ("albedo", "lum", "person")

    def __init__(self, parent: _Canvas | None = None, win: _Window | None = None, **maps: Tensor):
        self._parent, self._win = parent, win
        self.__dict__.update(maps)

    def __getattr__(self, name: str) -> Tensor:
        # Only called for maps not yet gathered into this crop.
        if name.startswith("_") or self._parent is None:
            raise AttributeError(name)
        crop = self._win.gather(getattr(self._parent, name))
        setattr(self, name, crop)
        return crop

    def crop(self, win: _Window) -> _Canvas:
        return _Canvas(self, win)

    def paste(self):
        """Write a crop's painted maps back into its parent."""
        for name in self._PAINTED:
            if name in self.__dict__:
                self._win.scatter(getattr(self._parent, name), self.__dict__[name])

    def paint(self, alpha: Tensor, colour: Tensor, lum: Tensor | float = 1.0, person=True):
        """Blend a layer: alpha [B, h, w], colour [B, 3], lum [B, h, w] or a constant.
        person=False skips the light-coverage update for layers inside the head."""
        alpha = alpha[:, None]
        self.albedo.lerp_(colour[:, :, None, None], alpha)
        self.lum.lerp_(lum[:, None] if isinstance(lum, Tensor) else self.lum.new_tensor(lum), alpha)
        if person:
            torch.maximum(self.person, alpha, out=self.person)


def _constant(p: PortraitParams, rgb) -> Tensor:
    return p.scale.new_tensor(rgb).expand(p.batch_size, 3)


def _background(p: PortraitParams, f: _Frame, res: int, out: Tensor) -> _Canvas:
    """A two-colour gradient broken up by blotches, with grain and a vignette; its albedo
    is written into `out` [B, 3, H, W], which becomes the canvas."""
    noise = F.interpolate(p.noise, size=(res, res), mode="bilinear", align_corners=False)
    blotch, grain = noise[:, 0], noise[:, 1]
    # Separable terms ([B, 1, w] and [B, h, 1]) are small: build them before broadcasting.
    along_x = 0.5 + 0.4 * f.x * _col(p.background_dir[:, 0])
    along_y = 0.4 * f.y * _col(p.background_dir[:, 1])
    t = (blotch * 0.35).add_(along_x).add_(along_y).clamp_(0, 1)
    a, b = p.background[:, 0, :, None, None], p.background[:, 1, :, None, None]
    torch.lerp(a, b, t[:, None], out=out)
    vignette = (1 - 0.2 * f.x * f.x) - 0.2 * f.y * f.y
    lum = (grain * 0.12).add_(1).mul_(vignette)
    return _Canvas(albedo=out, lum=lum[:, None], person=torch.zeros_like(lum)[:, None], noise=noise)


def _hair_luminance(p: PortraitParams, f: _Frame, blotch: Tensor, grain: Tensor) -> Tensor:
    """Strands radiating from the crown, bent by the blotch noise, with a band of sheen."""
    # The crown sits above the skull, so strands fan down over the head.
    dx, dy = f.u - _col(p.hair_part * 0.3 * p.head_width), f.v + _col(p.head_top + 0.3)
    radius = (dx * dx).addcmul_(dy, dy).sqrt_()
    phase = torch.atan2(dx, dy).mul_(_col(p.hair_strands[:, 0]))
    phase.addcmul_(radius, _col(p.hair_strands[:, 1])).add_(blotch, alpha=5)
    fade = (radius * 3).clamp_(max=1)            # strands converge at the crown: fade them
    lum = phase.sin_().mul_(fade).mul_(0.16).add_(grain, alpha=0.1).add_(0.78)
    sheen = radius.sub_(0.75).abs_().mul_(-4).add_(1).clamp_(min=0)
    return lum.add_(sheen, alpha=0.25)


def _hair_cap(p: PortraitParams, f: _Frame) -> Tensor:
    """Signed distance to the ellipse the hair fills around the skull."""
    return _ellipse_sdf(f.u, f.v, _col(p.head_width + p.hair_volume),
                        _col(p.head_top + p.hair_volume))


def _paint_back_hair(p: PortraitParams, f: _Frame, cv: _Canvas):
    """The hair behind the head: the cap, cut at hair_length, and long hair falling."""
    half = _col(p.head_width + 0.7 * p.hair_volume)
    length = _col(p.hair_length)
    # Long hair: a band as wide as the cap, from the ears down to a rounded bottom edge.
    bottom = (f.u / half).square_().mul_(-0.25).add_(0.25).add_(f.v).sub_(length)
    fall = _max_(_max_(f.u.abs().sub_(half), f.v.neg()), bottom)
    back = _min_(_max_(_hair_cap(p, f), f.v - length), fall)
    cv.paint(_coverage(back, f.ppu), p.hair, cv.hair[:, 0] * 0.8)


def _paint_neck_and_clothes(p: PortraitParams, f: _Frame, cv: _Canvas):
    """Drawn in a window below the jaw: everything above it is hidden by the head."""
    skin_lum = _skin_luminance(cv.noise[:, 0], cv.noise[:, 1])
    # The neck widens into the chest below the collar so the neckline shows skin.
    neck_half = 0.3 + 0.9 * (f.v - 1.25).clamp(min=0)
    neck = torch.maximum(f.u.abs() - neck_half, 0.3 - f.v)
    chin_shadow = 1 - 0.35 * (1 - (f.v - _col(p.jaw_length)) * 4).clamp_(0, 1)
    cv.paint(_coverage(neck, f.ppu), p.skin * 0.93, skin_lum * chin_shadow)

    nw, depth = _col(p.neckline[:, 0]), _col(p.neckline[:, 1])
    collar = 1.05 + 0.3 * f.bx * f.bx + depth * (1 - (f.bx / nw) ** 2).clamp_(min=0)
    # Stripes as a triangle wave: as good as a sine here and much cheaper.
    stripes = 1 + _col(p.stripes[:, 0]) * (torch.frac(f.by * _col(p.stripes[:, 1]) + 8) - 0.5).abs()
    cv.paint(_coverage(collar - f.by, f.ppu), p.clothes, stripes * (0.9 + 0.5 * (skin_lum - 1)))


def _skin_luminance(blotch: Tensor, grain: Tensor) -> Tensor:
    return (blotch + grain).mul_(0.05).add_(1)


def _paint_head(p: PortraitParams, f: _Frame, cv: _Canvas, skin_lum: Tensor):
    uu, vv = f.u * f.u, f.v * f.v
    vv_low = f.v.clamp(min=0).square_()
    rho2 = (uu + vv).add_(1e-8)
    q = _head_q(uu, vv, vv_low, (uu * vv_low).div_(rho2), p, _col)
    head = rho2.sqrt_().mul_(q.rsqrt_().neg_().add_(1))  # rho - outline radius, same ray
    alpha = _coverage(head, f.ppu)
    cv.paint(alpha, p.skin, skin_lum)
    cv.head = alpha[:, None]


def _ear_centre(p: PortraitParams, side: float) -> Tensor:
    """[B] head-frame x of an ear. Ears sit past the cheeks, on the back half of the skull
    cylinder, so turning the face towards one reveals it and turning away hides it."""
    return p.head_width * torch.sin(side * (math.pi / 2 + 0.2) + p.yaw)


def _paint_ear(p: PortraitParams, f: _Frame, cv: _Canvas, side: float):
    """One ear, drawn behind the head."""
    x, y = side * (f.u - _col(_ear_centre(p, side))), f.v - _col(p.ear_y)
    inner = ((x + 0.02) / 0.055) ** 2 + (y / 0.11) ** 2
    lum = _skin_luminance(cv.noise[:, 0], cv.noise[:, 1]) * (0.97 - 0.3 * (1 - inner).clamp_(min=0))
    cv.paint(_coverage(_ellipse_sdf(x, y, 0.1, 0.18), f.ppu), p.skin, lum)


def _sided(side: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """Per-pixel choice between per-side [B] parameters; side is -1 or +1 per pixel."""
    mid, half = _col((left + right) * 0.5), _col((right - left) * 0.5)
    return mid + side * half


def _paint_eyes(p: PortraitParams, f: _Frame, cv: _Canvas):
    """Both eyes in one window, mirrored about the face midline: whites, iris, pupil,
    catchlight, lash line, lower lid and crease."""
    ppu, clip = f.ppu, cv.head[:, 0]
    side = f.fu.sign()                              # -1: the eye on the left of the picture
    w = _col(p.eye_half_width)
    t, n = _rotate(f.fu.abs() - _col(p.eye_x), f.v - _col(p.eye_y), _col(p.eye_tilt))
    up, low = _eye_heights(w, _sided(side, p.eye_open_l, p.eye_open_r))
    # The opening is the lens between two circular lid arcs through both corners.
    r_up, r_low = (w * w + up * up) / (2 * up), (w * w + low * low) / (2 * low)
    tt = t * t
    d_up = (tt + (n - r_up + up) ** 2).sqrt_() - r_up
    d_low = (tt + (n + r_low - low) ** 2).sqrt_() - r_low
    opening = _coverage(torch.maximum(d_up, d_low), ppu) * clip
    shade = 0.78 + 0.22 * (-0.5 * ppu * d_up).clamp_(0, 1)          # lid shadow on the white
    cv.paint(opening, _constant(p, (0.93, 0.91, 0.88)), shade, person=False)

    iris = w * _col(p.iris_radius)
    it, inn = t - side * _col(p.gaze[:, 0]) * w, n - _col(p.gaze[:, 1]) * w
    r = (it * it + inn * inn).sqrt_()
    limbus = 1.15 - 0.55 * ((r / iris - 0.55) * 2.5).clamp_(0, 1)
    cv.paint(_coverage(r - iris, ppu) * opening, p.iris, limbus, person=False)
    pupil = _coverage(r - iris * _col(p.pupil_radius), ppu) * opening
    cv.paint(pupil, _constant(p, (0.03,) * 3), person=False)
    glint = ((it + 0.4 * iris) ** 2 + (inn + 0.4 * iris) ** 2).sqrt_() - 0.2 * iris
    cv.paint(0.8 * _coverage(glint, ppu) * opening, _constant(p, (1.0,) * 3), person=False)

    # Lid lines are rings around the lid circles, cut to the arc between the corners.
    beyond = torch.maximum(t.abs() - w * 1.06, n)
    lash_w = (0.7 / ppu).clamp(min=0.012)
    lash = torch.maximum((d_up - lash_w).abs() - lash_w, beyond)
    cv.paint(_coverage(lash, ppu) * clip, p.hair * 0.3 + 0.02, person=False)
    lower = torch.maximum((d_low - 0.3 / ppu).abs() - 0.3 / ppu, torch.maximum(t.abs() - w, -n))
    cv.paint(0.35 * _coverage(lower, ppu) * clip, p.skin * 0.55, person=False)
    crease = torch.maximum((d_up - 0.06).abs() - 0.4 / ppu, beyond - 0.02)
    cv.paint(0.45 * _coverage(crease, ppu) * clip, p.skin * 0.6, person=False)


def _paint_brows(p: PortraitParams, f: _Frame, cv: _Canvas):
    """Both brows, mirrored: thick arcs with round caps, tapering towards the outer end."""
    brow_y = _sided(f.fu.sign(), p.brow_y_l, p.brow_y_r)
    t, n = _rotate(f.fu.abs() - _col(p.brow_x), f.v - brow_y, _col(p.brow_tilt))
    length, arch = _col(p.brow_half_length), _col(p.brow_arch)
    tc = t.clamp(-length, length) / length
    slope = 2 * arch * tc / length
    across = (n + arch * (1 - tc * tc)) / (1 + slope * slope).sqrt_()
    thickness = _col(p.brow_thickness) * (1.15 - 0.225 * (tc + 1))
    d = ((t.abs() - length).clamp_(min=0) ** 2 + across * across).sqrt_() - thickness
    cv.paint(0.92 * _coverage(d, f.ppu) * cv.head[:, 0], p.hair * 0.85, cv.hair[:, 0], person=False)


_NOSE_BRIDGE = 0.22       # how far above the tip the nose's side shadow starts


def _paint_nose(p: PortraitParams, f: _Frame, cv: _Canvas):
    """The bridge's side in shade, shadow under the tip, the tip's lower outline, nostril
    wings, nostrils, highlight."""
    ppu, clip = f.ppu, cv.head[:, 0]
    x, y = f.fu - _col(_nose_shift(p)), f.v - _col(p.nose_y)
    away = -_col(p.light[:, 0].sign()) * 0.045                 # the side away from the light
    along = ((y + _NOSE_BRIDGE) * 6).clamp_(0, 1) * (1 - y * 25).clamp_(0, 1)
    wall = (1 - (x - away).abs() * 30).clamp_(min=0) * along
    cv.paint(0.3 * wall * clip, p.skin * 0.6, person=False)
    under = _ellipse_sdf(x, y - 0.07, 0.09, 0.04)
    cv.paint(0.25 * (1 - under * 12).clamp_(0, 1) * clip, p.skin * 0.7, person=False)
    tip_r = _col(p.nose_tip_radius)
    tip = (x * x + y * y).sqrt() - tip_r
    cv.paint(0.5 * _coverage(torch.maximum(tip.abs() - 0.5 / ppu, -y), ppu) * clip, p.skin * 0.55, person=False)
    wx = x.abs() - _col(p.nostril_x)
    wing = ((wx - 0.005) ** 2 + (y - 0.005) ** 2).sqrt_() - 0.045
    wing_line = torch.maximum(wing.abs() - 0.45 / ppu, torch.maximum(-wx, -y - 0.03))
    cv.paint(0.45 * _coverage(wing_line, ppu) * clip, p.skin * 0.55, person=False)
    cv.paint(0.85 * _coverage(_ellipse_sdf(wx, y - 0.03, 0.026, 0.013), ppu) * clip, p.skin * 0.25, person=False)
    highlight = (1 - (x * x + (y + 0.02) ** 2).sqrt_() / tip_r).clamp_(0, 1)
    cv.paint(0.35 * highlight * clip, (p.skin * 1.12).clamp(max=1), person=False)


def _paint_mouth(p: PortraitParams, f: _Frame, cv: _Canvas):
    """Lips, and when open a dark inside with the upper teeth; a parting line when shut."""
    ppu, clip = f.ppu, cv.head[:, 0]
    x, y = f.fu, f.v - _col(p.mouth_y)
    hw, gap = _col(p.mouth_half_width), _col(p.mouth_open)
    upper_out, upper_in, lower_in, lower_out = _mouth_profile(
        x, _col(p.smile), gap, _col(p.lip_upper), _col(p.lip_lower), _col(p.cupid_bow), hw)
    sides = x.abs() - hw
    lips = torch.maximum(torch.maximum(upper_out - y, y - lower_out), sides)
    # Upper lip in shade, a highlight across the middle of the lower lip.
    lower_t = (y - lower_in) / _col(p.lip_lower)
    lip_lum = 0.82 + (lower_t * 8).clamp_(0, 1) * (0.18 + 0.25 * (1 - (lower_t - 0.45).abs() * 3).clamp_(min=0))
    cv.paint(_coverage(lips, ppu) * clip, p.lips, lip_lum, person=False)
    inside = _coverage(torch.maximum(torch.maximum(upper_in - y, y - lower_in), sides), ppu) * clip
    cv.paint(inside, p.lips * 0.18, person=False)
    teeth = torch.maximum(y - upper_in - 0.45 * gap, sides + 0.03)
    gaps = 0.75 + 0.25 * ((torch.frac(x / 0.045 + 10.5) - 0.5).abs() * 6).clamp_(max=1)
    cv.paint(_coverage(teeth, ppu) * inside, _constant(p, (0.9, 0.88, 0.82)), gaps, person=False)
    line = torch.maximum((y - (upper_in + lower_in) * 0.5).abs() - 0.5 / ppu, sides)
    cv.paint(0.8 * _coverage(line, ppu) * clip, p.lips * 0.3, person=False)


_HAIRLINE_LOWEST = 0.3     # head-frame v the hairline never passes: bounds the window


def _paint_front_hair(p: PortraitParams, f: _Frame, cv: _Canvas):
    """The hair over the skull, down to a hairline that follows the face surface."""
    width = _col(p.head_width)
    q = (f.fu - _col(p.hair_part) * 0.3 * width) / width
    c0, c1, c2 = (_col(p.hairline[:, i]) for i in range(3))
    q2 = q * q
    # The polynomial drop towards the temples saturates smoothly at the lowest line.
    drop = (c1 + c2 * q2) * q2
    room = _HAIRLINE_LOWEST - c0
    line = c0 + drop * room / (room + drop)
    slope = (2 * c1 + 4 * c2 * q2) * q * (room / (room + drop)) ** 2 / width
    above = (f.v - line) / (1 + slope * slope).sqrt_()
    alpha = _coverage(torch.maximum(_hair_cap(p, f), above), f.ppu)
    cv.paint(alpha, p.hair, cv.hair[:, 0], person=False)


def _shading(p: PortraitParams, f: _Frame) -> Tensor:
    """Lambert shading of an ellipsoid around the head, plus ambient light."""
    nx = f.u * _col(1 / (p.head_width + 0.25))
    ny = (f.v + 0.1).mul_(_col(1 / (p.head_top + 0.3)))
    nz = nx.square().add_(ny.square()).neg_().add_(1).clamp_(min=0).sqrt_()
    lx, ly, lz = (_col(p.light[:, i]) for i in range(3))
    dot = nx.mul_(lx).addcmul_(ny, ly).addcmul_(nz, lz)
    return dot.clamp_(min=0).mul_(0.55).add_(0.55)


def _windows(p: PortraitParams, res: int) -> dict[str, _Window]:
    """Windows for the parts drawn in a crop: boxes that bound what each part draws."""
    def face_box(x_lo, x_hi, v_lo, v_hi):
        return head_box(_face_to_head(x_lo, p), _face_to_head(x_hi, p), v_lo, v_hi)

    def head_box(u_lo, u_hi, v_lo, v_hi):
        u = torch.stack([u_lo, u_hi, u_lo, u_hi], 1)
        v = torch.stack([v_lo, v_lo, v_hi, v_hi], 1)
        return _Window.around(*_head_to_image(u, v, p), res)

    wins = {}
    # Below the jaw, where neck and clothes show; the whole width for the shoulders.
    corners = torch.tensor([-0.45, 0.45], device=p.scale.device).expand(p.batch_size, 2)
    _, neck_y = _head_to_image(corners, torch.full_like(corners, 0.45), p)
    top = neck_y.amin(1, keepdim=True)                                          # [B, 1]
    wins["body"] = _Window.around(corners.sign(), torch.cat([top, torch.ones_like(top)], 1), res)
    for side, name in ((-1.0, "ear_left"), (1.0, "ear_right")):
        centre = _ear_centre(p, side)
        wins[name] = head_box(centre - 0.12, centre + 0.12, p.ear_y - 0.2, p.ear_y + 0.2)
    outer = torch.maximum(p.eye_x + p.eye_half_width, p.brow_x + p.brow_half_length) + 0.06
    top = torch.minimum(p.brow_y_l, p.brow_y_r) - p.brow_arch - 2 * p.brow_thickness \
        - 0.15 * p.brow_half_length - 0.03
    wins["eyes"] = face_box(-outer, outer, top, p.eye_y + 0.4 * p.eye_half_width + 0.05)
    hair = p.head_width + p.hair_volume
    wins["front_hair"] = head_box(-hair, hair, -(p.head_top + p.hair_volume),
                                  torch.full_like(hair, _HAIRLINE_LOWEST + 0.03))
    half = torch.maximum(p.mouth_half_width, p.nostril_x + 0.09) + 0.03
    shift = _nose_shift(p)
    wins["mouth"] = face_box(-half + shift.clamp(max=0), half + shift.clamp(min=0),
                             p.nose_y - _NOSE_BRIDGE - 0.02,
                             p.mouth_y + 0.7 * p.mouth_open + p.lip_lower + 0.04)
    return wins


def _render_chunk(p: PortraitParams, res: int, wins: dict[str, _Window], out: Tensor):
    """Draw one chunk into out [B, 3, H, W]: full-frame layers, and the small parts in
    their windows, in back-to-front order."""
    f = _Frame(p, _Window.full(p.batch_size, res, p.scale.device), res)
    cv = _background(p, f, res, out)
    blotch, grain = cv.noise[:, 0], cv.noise[:, 1]
    cv.hair = _hair_luminance(p, f, blotch, grain)[:, None]
    _paint_back_hair(p, f, cv)

    def in_window(win: _Window, *painters):
        crop = cv.crop(win)
        frame = _Frame(p, win, res)
        for paint in painters:
            paint(p, frame, crop)
        crop.paste()

    in_window(wins["body"], _paint_neck_and_clothes)
    in_window(wins["ear_left"], partial(_paint_ear, side=-1.0))
    in_window(wins["ear_right"], partial(_paint_ear, side=1.0))
    _paint_head(p, f, cv, _skin_luminance(blotch, grain))
    in_window(wins["eyes"], _paint_eyes, _paint_brows)
    in_window(wins["mouth"], _paint_nose, _paint_mouth)
    in_window(wins["front_hair"], _paint_front_hair)

    # The light shades only the person: lum * (1 + person * (shading - 1)).
    lum = _shading(p, f).sub_(1).mul_(cv.person[:, 0]).add_(1).mul_(cv.lum[:, 0])
    out.mul_(lum[:, None]).clamp_(0, 1).mul_(2).sub_(1)


def render(p: PortraitParams, resolution: int = 128) -> tuple[Tensor, Tensor]:
    """Draw a batch: images [B, 3, H, W] in [-1, 1] and landmarks [B, L, 2] in pixels
    (see the module docstring for the pixel convention).

    The batch is drawn in chunks so the per-pixel maps stay in cache; the windows are
    sized once for the whole batch (a window only has to hold its part: its size never
    changes a pixel)."""
    budget = _CHUNK_PIXELS["cpu" if p.scale.device.type == "cpu" else "accelerator"]
    chunk = max(1, budget // (resolution * resolution))
    images = p.scale.new_empty(p.batch_size, 3, resolution, resolution)
    with torch.no_grad():
        wins = _windows(p, resolution)
        for i in range(0, p.batch_size, chunk):
            part = slice(i, i + chunk)
            _render_chunk(p.select(part), resolution, {k: w.select(part) for k, w in wins.items()},
                          images[part])
        return images, landmarks(p, resolution)


def render_seeds(seeds, resolution: int = 128, device="cpu") -> tuple[Tensor, Tensor]:
    """sample_params + render: one portrait per seed."""
    return render(sample_params(seeds, device), resolution)


# --------------------------------------------------------------------------------------
# Sample grid
# --------------------------------------------------------------------------------------

_GROUP_COLOURS = {"jaw": (255, 210, 0), "chi": (255, 210, 0), "bro": (0, 200, 255),
                  "eye": (0, 255, 80), "pup": (255, 40, 40), "nos": (255, 120, 255),
                  "mou": (255, 255, 255), "lip": (255, 255, 255)}


def save_grid(path: str, seeds=range(32), resolution: int = 128, columns: int = 8, zoom: int = 1):
    """A PNG of renders in rows, each row followed by the same portraits with their
    landmarks drawn (upscaled by `zoom` so the marks are visible)."""
    from PIL import Image, ImageDraw

    images, marks = render_seeds(list(seeds), resolution)
    pixels = ((images + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    size = resolution * zoom
    rows = math.ceil(len(pixels) / columns)
    grid = Image.new("RGB", (columns * size, 2 * rows * size))
    for k, (picture, points) in enumerate(zip(pixels, marks.tolist())):
        face = Image.fromarray(picture).resize((size, size), Image.LANCZOS)
        x0, y0 = (k % columns) * size, (k // columns) * 2 * size
        grid.paste(face, (x0, y0))
        draw = ImageDraw.Draw(face)
        for name, (x, y) in zip(LANDMARK_NAMES, points):
            x, y = x * zoom, y * zoom
            draw.ellipse([x - 1, y - 1, x + 1, y + 1], fill=_GROUP_COLOURS[name[:3]])
        grid.paste(face, (x0, y0 + size))
    grid.save(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Procedural portraits: save a sample grid.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    grid = sub.add_parser("grid", help="renders and their landmarks as one PNG")
    grid.add_argument("--out", default="docs/portraits_grid.png")
    grid.add_argument("--first-seed", type=int, default=0)
    grid.add_argument("--count", type=int, default=32)
    grid.add_argument("--resolution", type=int, default=128)
    args = ap.parse_args(argv)
    save_grid(args.out, range(args.first_seed, args.first_seed + args.count), args.resolution)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
