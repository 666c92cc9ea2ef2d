"""The DragGAN drag loop: motion supervision + point tracking, one step at a time.

A `DragSession` holds a generator, a latent, handle and target points and an optional
movable mask, and advances the edit one optimisation step per `step()` call (or through
the `run()` iterator, which adds cancellation and preview images).

What one step does (Pan et al., "Drag Your GAN", SIGGRAPH 2023, §3.2–3.3):

* The generator runs only up to the feature block k (default 6: 128×128 for a 512 model);
  nothing after it, no toRGB. F = those features; by definition they are bilinearly resized
  to the image resolution (align_corners=False). We never build the resized map: a value of
  the resized map at an integer image pixel is one bilinear sample of F at feature resolution
  (`grid_sample`, align_corners=False, border padding — identical arithmetic), and a value at
  a fractional image position is the bilinear blend of its four integer neighbours, exactly as
  sampling the resized map would do (`sample_features`).
* Point tracking: each handle moves to the integer pixel q in the square |x−x_p| ≤ r2,
  |y−y_p| ≤ r2 (clipped to the image) whose feature is closest to f_i = F0(p_i⁰), the handle's
  feature when this point set started; L1 distance (paper) or L2 (the authors' code).
* Motion supervision, per handle with d_i = (t_i − p_i)/‖t_i − p_i‖, over the integer offsets
  of the closed disc of radius r1 around p_i: mean over pixels and channels of
  |F(q).detach() − F(q + d_i)| (the authors' `F.l1_loss` is a mean per point), summed over the
  handles that are not yet within the stop distance. Gradient flows through the shifted term
  only. Disc pixels that fall outside the image are left out.
* Mask term (with a movable mask M, 1 = may move): λ·mean(|F − F0|·(1 − M)), the mean over
  channels and image pixels as the authors' `F.l1_loss`. It is evaluated at feature
  resolution with |F − F0| resized instead of F − F0 resized: Σ_p resize(|D|)(p)·w(p) equals
  Σ_q |D(q)|·resizeᵀ(w)(q) exactly, so the image-size weight map is pulled back once through
  the adjoint of the bilinear resize. This is an upper bound of the resize-first term, equal to
  it wherever F − F0 keeps its sign across neighbouring feature pixels.
* Only the first `n_optimized_layers` (6) rows of W+ move; later rows keep their starting
  value. Latent space "w+" optimises each of those rows, "w" one offset shared by them (the
  same Adam trajectory as optimising a single w when the rows start equal). Adam, lr 2e-3.

What the authors' published code (viz/renderer.py) does, and where it differs. Its motion
term is |F(q′) − F(q′ − d).detach()| over the disc pixels q′: with q = q′ − d that is the
paper's |F(q).detach() − F(q + d)|, F(q) detached and the gradient through F(q + d), as here,
only over the disc moved by −d (measured: with the same disc pixels its first-step gradient
equals ours to 1e-6). It samples the interpolated feature with zero padding (we clamp to the
border); its disc is the open one, ‖q − p‖ < r1 (we use the closed disc, so r1 = 1 at small
resolutions still covers 5 pixels); it stops at max(2·res/512, 2) px for any number of points
and drops handles within 1 px from the loss (we use the paper's 1 px / 2 px rule for both);
its renderer's λ defaults to 10, but both of its GUIs pass 20, the paper's value (ours); it
tracks with L2 (option here) from references taken at the rounded handle.

Methods (`DragConfig.method`):

* "draggan": the paper's loop exactly as above (with `stall_steps=0`): a handle within the stop
  distance drops out of the loss.
* "dragd" (default): the same, except that a handle that has arrived keeps a hold term, the
  mean |F(q) − F_arrival(q)| over the motion disc around where it arrived (F_arrival detached,
  taken at the step it first came within the stop distance), so its content stays put while the
  other handles are pulled instead of drifting with them; it rejoins the motion term (and
  re-takes the hold when it arrives again) if tracking finds it outside the stop distance.
  On models below 128 px, tracking is refined to 1/8 px (`track_points(subpixel=True)`) and
  the default stop distance goes down to 1/128 of the picture (0.5 px at 64): on the 64-px
  default model the integer tracker and its 1-px stop left a 1-point drag 1.22 px from its
  target by the landmark benchmark's detector, this 0.73 px (lab/bench_landmarks.py, 20 pairs).
* "freedrag": FreeDrag's tracking-free loop (see freedrag.py).

Stall rule (`stall_steps` > 0, any method): a drag ends as "stalled" only when, over the last
`stall_steps` steps (× 2e-3/lr when lr < 2e-3), the handles oscillated in place — some handle
returned to a position it had already held in the window at least twice — with no net progress
(the summed handle→target distance did not drop by half the stop distance) and a flat motion
loss (its mean over the window's second half is not 5 % below the first half's). A handle that
sits still or creeps forward is never stalled: the paper's loop could still finish such a drag.

Ordering: one generator pass per step. The pass on the current latent first tracks the
handles (the latent changed since the last pass), then checks the stop rule, then — unless
stopping — back-propagates the loss of that same pass and takes one Adam step. So the result
of a step describes the latent *before* that step's update; a final result (done) always
describes the current latent. All measurements of a step reach the host in one transfer.

Split latents (optional generator capability): a generator with `supports_split_latent = True`
receives `w = (head, tail)` in the optimisation pass — head [1, n, w_dim] the optimised rows
(requiring grad), tail [1, num_ws − n, w_dim] the frozen ones — and must treat it as their
concatenation. Autograd then knows that layers fed only by frozen rows need no gradient for
their styles and skips that work. With one W+ tensor every row formally requires grad and the
work is done and discarded. (It saved about a third of the step while modulated convolutions
modulated their weights under autograd; since they scale activations instead, bench_drag.py
shows no difference at 512 px on CPU.)

Feature windows (optional generator capability, `supports_feature_windows = True`): a step
reads the features only near the handles (the tracking square, then the motion disc around
where tracking lands; FreeDrag's line search and templates around its points), so when no mask
term needs the whole map the generator is asked for just those windows,
`feature_windows(w, block, centres, half)`: it runs the early blocks whole and the last ones on
one shrinking crop per handle, with the same values as the whole map up to float summation
order. This removes most of the work of the largest blocks the step runs (see
benchmarks/bench_drag.py); `DragConfig(windows=False)` turns it off.

Coordinates are image pixels (x, y) with pixel (i, j) centred on (x=j, y=i), i.e. array
indices; anything in −0.5…res−0.5 lies on the image.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model.windows import FeatureWindows

__all__ = ["DragConfig", "DragInputError", "DragSession", "DragSnapshot", "StepResult",
           "motion_loss", "sample_features", "track_points"]

LATENT_SPACES = ("w", "w+")
TRACKING_NORMS = ("l1", "l2")
STOP_REASONS = ("converged", "max_steps", "cancelled", "stalled")
METHODS = ("dragd", "draggan", "freedrag")
MAX_HISTORY = 64
SETTLE_STEPS = 10          # FreeDrag: steps allowed after every point reached its target
SUBPIXEL_STEP = 0.125      # the sub-pixel tracker's grid (image px) ...
SUBPIXEL_REACH = 6         # ... ±6 steps (±0.75 px) around the best integer pixel
SUBPIXEL_BELOW = 128       # "dragd" tracks to 1/8 px on models below this resolution ...
SUBPIXEL_STOP = 1 / 128    # ... and its default stop distance's floor is this share of the picture


def default_feature_block(num_blocks: int) -> int:
    """The paper's 6th block (128 px at 512), but never the last, full-resolution one: on models
    below 256 px that block's features are too local to pull anything (measured on our 64-px
    model: a 6-px drag stalls at block 5 and converges at block 4)."""
    return max(1, min(6, num_blocks - 1))


class DragInputError(ValueError):
    """Input a user can fix (points, mask, settings); raised before any work starts."""


@dataclass(frozen=True)
class DragConfig:
    """Settings of a drag. `None` means: derived from the generator / the points."""
    lr: float = 2e-3                        # Adam learning rate (paper: 2e-3 FFHQ/AFHQ/cars, else 1e-3)
    lambda_mask: float = 20.0               # weight of the fixed-region term
    feature_block: int | None = None        # None → min(6, last block − 1); 1 = the 4×4 block
    n_optimized_layers: int | None = None   # None → min(6, num_ws) first rows of W+
    latent_space: str = "w+"                # "w+" or "w"
    tracking_norm: str = "l1"               # "l1" (paper) or "l2" (authors' code)
    max_steps: int = 300                    # optimisation steps per point set
    r1: int | None = None                   # None → max(1, round(3/512·res))
    r2: int | None = None                   # None → max(1, round(12/512·res))
    stop_distance: float | None = None      # None → (1 px if ≤5 handles else 2 px)·res/512, at
                                            # least 1 px, or min(1 px, res/128) for "dragd"
    subpixel: bool | None = None            # refine tracking to 1/8 px; None → "dragd" below 128 px
    method: str = "dragd"                   # "dragd", "draggan" (the paper's loop), "freedrag"
    stall_steps: int = 60                   # window of the stall rule (module docstring), × 2e-3/lr
                                            # when lr < 2e-3; 0: never stop as "stalled"
    windows: bool = True                    # compute features only around the handles when no
                                            # mask term needs the whole map (generator permitting)


@dataclass(frozen=True)
class StepResult:
    """What one step (or the end of a run) reports.

    `step` is the number of optimisation updates of this point set *before* the state
    reported here; `handles`/`distances`/`losses` describe that state. `image` ([1, C, res, res],
    ≈[-1, 1], the generator's device) only comes with preview steps and final results of `run`.
    """
    step: int
    handles: torch.Tensor            # [P, 2] float32, CPU, (x, y) image px
    distances: torch.Tensor          # [P] float32, CPU, ‖target − handle‖
    losses: dict                     # {"motion": float, "mask": float, "total": float}
    done: bool
    reason: str | None = None        # one of STOP_REASONS when done
    image: torch.Tensor | None = None


@dataclass(frozen=True)
class DragSnapshot:
    """A finished drag (or the start): the full W+ latent and the points at that moment."""
    latent: torch.Tensor             # [1, num_ws, w_dim]
    handles: torch.Tensor            # [P, 2] CPU
    targets: torch.Tensor            # [P, 2] CPU
    steps: int                       # optimisation updates made in that drag


# ---------------------------------------------------------------------------------------------
# Pure building blocks (unit-tested on hand-built feature maps).


def _sample_pixels(feat, xy: torch.Tensor, res: int) -> torch.Tensor:
    """Integer image pixels xy [..., 2] inside the image → features [..., C].

    feat: the whole map [1, C, h, w], or FeatureWindows (then xy's leading dimension indexes
    the windows: row i reads window i). Image pixel x of a res-wide resize of an h-wide map
    (align_corners=False) reads map position (x + 0.5)·h/res − 0.5, clamped to the map as the
    resize clamps; that position is sampled bilinearly.
    """
    windowed = isinstance(feat, FeatureWindows)
    data = feat.data if windowed else feat
    full = feat.full_size if windowed else data.shape[-1]
    assert data.shape[-1] == data.shape[-2] and (windowed or data.shape[0] == 1), tuple(data.shape)
    pos = ((xy.to(data.dtype) + 0.5) * (full / res) - 0.5).clamp(0, full - 1)
    if windowed:
        pos = pos - feat.origins.to(pos).reshape(-1, *[1] * (pos.ndim - 2), 2)
    grid = pos * (2 / max(data.shape[-1] - 1, 1)) - 1
    out = F.grid_sample(data, grid.reshape(data.shape[0], 1, -1, 2), mode="bilinear",
                        padding_mode="border", align_corners=True)            # [B, C, 1, K]
    return out[:, :, 0].transpose(1, 2).reshape(*xy.shape[:-1], data.shape[1])


def sample_features(feat: torch.Tensor, xy: torch.Tensor, res: int) -> torch.Tensor:
    """Bilinear sample, at image positions xy [..., 2] (x, y), of feat [1, C, h, w] resized to res.

    Equals `grid_sample` on `F.interpolate(feat, (res, res), mode="bilinear")` at pixel
    coordinates xy with border clamping, without building the resized map: the four integer
    neighbours are read at feature resolution and blended in image space. Positions outside
    the image are clamped to its border. Returns [..., C]; differentiable w.r.t. feat.
    """
    xy = xy.to(feat.dtype).clamp(0, res - 1)
    base = xy.floor()
    frac = xy - base
    x0, y0 = base[..., 0], base[..., 1]
    x1, y1 = (x0 + 1).clamp(max=res - 1), (y0 + 1).clamp(max=res - 1)
    corners = torch.stack([torch.stack([x0, y0], -1), torch.stack([x1, y0], -1),
                           torch.stack([x0, y1], -1), torch.stack([x1, y1], -1)], dim=-2)
    vals = _sample_pixels(feat, corners, res)                     # [..., 4, C]
    fx, fy = frac[..., 0:1], frac[..., 1:2]
    return ((1 - fx) * (1 - fy) * vals[..., 0, :] + fx * (1 - fy) * vals[..., 1, :]
            + (1 - fx) * fy * vals[..., 2, :] + fx * fy * vals[..., 3, :])


@functools.lru_cache(maxsize=32)
def _offsets(r: int, disc: bool, device: torch.device) -> torch.Tensor:
    """Integer (x, y) offsets of the (2r+1)² square or of the closed disc of radius r; built on
    the CPU and cached per device, so steps never index on the device (no host sync)."""
    ax = torch.arange(-r, r + 1, dtype=torch.float32)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    off = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)
    if disc:
        off = off[off.square().sum(-1) <= r * r + 1e-6]
    return off.to(device)


def _nearest(cand: torch.Tensor, dist: torch.Tensor, centre_dist: torch.Tensor) -> torch.Tensor:
    """cand [P, K, 2], dist [P, K] → the candidate of least distance per handle; exact ties go
    to the one of least centre_dist [K] (flat regions do not drift)."""
    best = dist.min(dim=1, keepdim=True).values
    centre = centre_dist[None].expand_as(dist)
    key = torch.where(dist <= best, centre, torch.full_like(centre, math.inf))
    return cand[torch.arange(cand.shape[0], device=cand.device), key.argmin(dim=1)]


def track_points(feat: torch.Tensor, handles: torch.Tensor, refs: torch.Tensor, r2: int, res: int,
                 norm: str = "l1", subpixel: bool = False) -> torch.Tensor:
    """Nearest-neighbour point tracking, all handles and window positions at once.

    feat [1, C, h, w]; handles [P, 2]; refs [P, C] (the handles' starting features). Searches
    the integer pixels of the (2·r2+1)² square around each rounded handle, clipped to the
    image, and returns [P, 2] positions minimising the L1 (or L2) feature distance. Exact ties
    go to the candidate nearest the window centre. `subpixel`: then searches a grid of 1/8 px
    within ±0.75 px of that pixel, features read as the resized map would give them (bilinear
    between pixels): the paper's integer tracker cannot tell where within a pixel the handle
    is, which on a 64-px model is 1/64 of the picture.
    """
    if norm not in TRACKING_NORMS:
        raise DragInputError(f"tracking_norm must be one of {TRACKING_NORMS}, got {norm!r}")

    def distance(cand, read):
        diff = read(feat, cand, res) - refs[:, None, :].to(feat.dtype)
        return diff.abs().sum(-1) if norm == "l1" else diff.square().sum(-1)   # [P, K]

    off = _offsets(r2, False, handles.device)                           # [K, 2]
    cand = (handles.round()[:, None, :] + off[None]).clamp(0, res - 1)   # [P, K, 2]
    found = _nearest(cand, distance(cand, _sample_pixels), off.square().sum(-1))
    if not subpixel:
        return found
    fine = _offsets(SUBPIXEL_REACH, False, handles.device) * SUBPIXEL_STEP
    cand = (found[:, None, :] + fine[None]).clamp(0, res - 1)
    return _nearest(cand, distance(cand, sample_features), fine.square().sum(-1))


def motion_loss(feat: torch.Tensor, handles: torch.Tensor, targets: torch.Tensor, r1: int, res: int,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_i w_i · mean_{q ∈ disc(p_i, r1), c} |F(q).detach() − F(q + d_i)|, a scalar.

    feat [1, C, h, w] at feature resolution (read as if resized to res); handles, targets
    [P, 2]; weights [P] (e.g. 0 for handles already at their target) or None. The gradient
    reaches feat only through the shifted samples F(q + d_i).
    """
    delta = (targets - handles).to(feat.dtype)
    length = delta.norm(dim=-1, keepdim=True)
    direction = torch.where(length > 0, delta / length.clamp(min=1e-12), torch.zeros_like(delta))
    q = handles.to(feat.dtype)[:, None, :] + _offsets(r1, True, handles.device)[None]   # [P, Q, 2]
    inside = ((q >= 0) & (q <= res - 1)).all(dim=-1).to(feat.dtype)                   # [P, Q]
    still = sample_features(feat.detach(), q, res)
    shifted = sample_features(feat, q + direction[:, None, :], res)
    per_point = ((still - shifted).abs().mean(dim=-1) * inside).sum(-1) / inside.sum(-1).clamp(min=1)
    if weights is not None:
        per_point = per_point * weights.to(per_point.dtype)
    return per_point.sum()


def _mask_weights(movable: torch.Tensor, feat_hw: tuple[int, int]) -> torch.Tensor:
    """(1 − M) at image size → its pull-back through the bilinear resize, / res² ([1, 1, h, w])."""
    res = movable.shape[-1]
    fixed = (1 - movable).reshape(1, 1, res, res).to(torch.float32)
    with torch.enable_grad():
        probe = torch.zeros(1, 1, *feat_hw, device=movable.device, requires_grad=True)
        up = F.interpolate(probe, size=(res, res), mode="bilinear", align_corners=False)
        (pulled,) = torch.autograd.grad(up, probe, grad_outputs=fixed)
    return pulled / float(res * res)


# ---------------------------------------------------------------------------------------------
# Input validation (everything a user can get wrong, before any work).


def _as_points(name: str, pts, res: int) -> torch.Tensor:
    try:
        t = torch.as_tensor(pts, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DragInputError(f"{name} must be a list of (x, y) pairs: {exc}") from None
    if t.numel() == 0:
        raise DragInputError(f"no {name} given: place at least one handle→target pair")
    if t.ndim == 1 and t.numel() == 2:
        t = t[None]
    if t.ndim != 2 or t.shape[1] != 2:
        raise DragInputError(f"{name} must be a list of (x, y) pairs, got shape {tuple(t.shape)}")
    singular = name[:-1]
    for i, (x, y) in enumerate(t.tolist()):
        if not (math.isfinite(x) and math.isfinite(y)):
            raise DragInputError(f"{singular} {i} has a non-finite coordinate ({x}, {y})")
        if not (-0.5 <= x <= res - 0.5 and -0.5 <= y <= res - 0.5):
            raise DragInputError(f"{singular} {i} at ({x:.1f}, {y:.1f}) is outside the {res}×{res} "
                                 f"image (x and y must be within -0.5…{res - 0.5})")
    return t.clamp(0, res - 1).to(torch.float32)


def _check_points(handles, targets, res: int) -> tuple[torch.Tensor, torch.Tensor]:
    h = _as_points("handles", handles, res)
    t = _as_points("targets", targets, res)
    if h.shape[0] != t.shape[0]:
        raise DragInputError(f"{h.shape[0]} handles but {t.shape[0]} targets: every handle needs "
                             f"exactly one target")
    seen: dict[tuple[int, int], int] = {}
    for i, (x, y) in enumerate(h.round().to(torch.int64).tolist()):
        if (x, y) in seen:
            raise DragInputError(f"handles {seen[(x, y)]} and {i} are on the same pixel ({x}, {y}); "
                                 f"remove one of them")
        seen[(x, y)] = i
    return h, t


def _check_mask(mask, res: int) -> torch.Tensor | None:
    """→ float32 [res, res] in [0, 1] (1 = may move), or None for no mask."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        try:
            mask = torch.as_tensor(mask)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise DragInputError(f"mask must be a {res}×{res} array: {exc}") from None
    shape = tuple(mask.shape)
    while mask.ndim > 2 and mask.shape[0] == 1:
        mask = mask[0]
    if tuple(mask.shape) != (res, res):
        raise DragInputError(f"mask is {shape} but must be {res}×{res}, the image size")
    if mask.dtype == torch.bool:
        m = mask.to(torch.float32)
    elif mask.dtype == torch.uint8:
        # 0…255 coverage (an editor's selection); a mask holding only 0 and 1 is binary.
        m = mask.to(torch.float32)
        m = m if int(mask.max()) <= 1 else m / 255.0
    elif mask.dtype.is_floating_point:
        m = mask.to(torch.float32)
        if not torch.isfinite(m).all():
            raise DragInputError("mask contains NaN or infinite values")
        if m.min() < 0 or m.max() > 1:
            raise DragInputError(f"float mask values must lie in [0, 1], got "
                                 f"{float(m.min()):.3g}…{float(m.max()):.3g}")
    else:
        raise DragInputError(f"mask dtype {mask.dtype} is not supported: use bool, float in [0, 1] "
                             f"or uint8 coverage 0…255")
    if not (m > 0).any():
        raise DragInputError("mask is empty: no pixel may move; select the region that may move")
    return m


def _check_config(cfg: DragConfig) -> None:
    def bad(msg):
        raise DragInputError(msg)
    if not (isinstance(cfg.lr, (int, float)) and math.isfinite(cfg.lr) and cfg.lr > 0):
        bad(f"lr must be a positive number, got {cfg.lr!r}")
    if not (isinstance(cfg.lambda_mask, (int, float)) and math.isfinite(cfg.lambda_mask)
            and cfg.lambda_mask >= 0):
        bad(f"lambda_mask must be ≥ 0, got {cfg.lambda_mask!r}")
    if cfg.method not in METHODS:
        bad(f"method must be one of {METHODS}, got {cfg.method!r}")
    if cfg.latent_space not in LATENT_SPACES:
        bad(f"latent_space must be one of {LATENT_SPACES}, got {cfg.latent_space!r}")
    if cfg.tracking_norm not in TRACKING_NORMS:
        bad(f"tracking_norm must be one of {TRACKING_NORMS}, got {cfg.tracking_norm!r}")
    if not (isinstance(cfg.max_steps, int) and cfg.max_steps >= 1):
        bad(f"max_steps must be an integer ≥ 1, got {cfg.max_steps!r}")
    for name in ("r1", "r2"):
        v = getattr(cfg, name)
        if v is not None and not (isinstance(v, int) and v >= 1):
            bad(f"{name} must be an integer ≥ 1 (or None for the default), got {v!r}")
    if not (isinstance(cfg.stall_steps, int) and cfg.stall_steps >= 0):
        bad(f"stall_steps must be an integer ≥ 0 (0: never stop as stalled), got {cfg.stall_steps!r}")
    sd = cfg.stop_distance
    if sd is not None and not (isinstance(sd, (int, float)) and math.isfinite(sd) and sd > 0):
        bad(f"stop_distance must be > 0 (or None for the default), got {sd!r}")


# ---------------------------------------------------------------------------------------------


#: `set_points` without a mask keeps the current one.
_KEEP_MASK = object()


class DragSession:
    """One image being dragged: generator + latent + points (+ mask), stepped on demand.

    generator: anything with `resolution`, `num_ws`, `w_dim`, `num_blocks`,
        `block_resolution(k)` (block k is 2^(k+1) square) and `synthesize(w, noise_mode, stop_after_block, render) -> SynthesisOutput`; optionally
        split latents and `feature_windows` (see the module docstring).
    latent: w [1, w_dim] / [w_dim] or W+ [1, num_ws, w_dim], on the generator's device or not.
    handles, targets: P (x, y) pairs (list, array or [P, 2] tensor) in image pixels.
    mask: None or [res, res] with 1 = may move: bool, float in [0, 1] (soft), or uint8
        (0…255 coverage as an editor's selection; a uint8 mask holding only 0/1 is binary).
    Settings: `config` and/or keyword overrides of `DragConfig` (e.g. `lr=1e-3`).

    Read-only attributes after construction: `generator`, `config`, `res`, `device`,
    `feature_block`, `n_optimized_layers`, `r1`, `r2`, `stop_distance` (of the point set).
    Methods: `step`, `run`, `render`, `set_points`, `reset_points`, `set_mask`, `undo`;
    properties `latent`, `handles`, `targets`, `history`.

    Every input error is a `DragInputError` raised before any work. Not thread-safe; only
    `run(cancel=...)` may be signalled from another thread.
    """

    def __init__(self, generator, latent: torch.Tensor, handles, targets, mask=None,
                 config: DragConfig | None = None, **overrides):
        cfg = config or DragConfig()
        if overrides:
            unknown = set(overrides) - {f.name for f in dataclasses.fields(DragConfig)}
            if unknown:
                raise DragInputError(f"unknown drag settings: {sorted(unknown)}")
            cfg = dataclasses.replace(cfg, **overrides)
        _check_config(cfg)
        self.generator = generator
        self.res = res = int(generator.resolution)
        self.num_ws, self.w_dim = int(generator.num_ws), int(generator.w_dim)
        n_blocks = int(generator.num_blocks)
        if cfg.feature_block is None:
            block = default_feature_block(n_blocks)
        elif isinstance(cfg.feature_block, int) and 1 <= cfg.feature_block <= n_blocks:
            block = cfg.feature_block
        else:
            raise DragInputError(f"feature_block must be in 1…{n_blocks} for a {res}-px generator, "
                                 f"got {cfg.feature_block!r}")
        if cfg.n_optimized_layers is None:
            n_opt = min(6, self.num_ws)
        elif isinstance(cfg.n_optimized_layers, int) and 1 <= cfg.n_optimized_layers <= self.num_ws:
            n_opt = cfg.n_optimized_layers
        else:
            raise DragInputError(f"n_optimized_layers must be in 1…{self.num_ws}, "
                                 f"got {cfg.n_optimized_layers!r}")
        self.config, self.feature_block, self.n_optimized_layers = cfg, block, n_opt
        self.r1 = cfg.r1 if cfg.r1 is not None else max(1, round(3 / 512 * res))
        self.r2 = cfg.r2 if cfg.r2 is not None else max(1, round(12 / 512 * res))
        self._subpixel = (cfg.method == "dragd" and res < SUBPIXEL_BELOW) if cfg.subpixel is None \
            else bool(cfg.subpixel)

        ws = self._check_latent(latent)
        h, t = _check_points(handles, targets, res)
        m = _check_mask(mask, res)
        self._check_handles_movable(h, m)

        # -- validated; now the work.
        self.device = ws.device
        self._mask = None if m is None else m.to(self.device)
        self._history: list[DragSnapshot] = []
        self._begin(ws, h, t)
        self._push_snapshot()

    # -- public API ---------------------------------------------------------------------------

    @property
    def latent(self) -> torch.Tensor:
        """The current W+ latent [1, num_ws, w_dim] (detached copy)."""
        return self._ws().detach().clone()

    @property
    def handles(self) -> torch.Tensor:
        """Last tracked handle positions [P, 2] (x, y), CPU."""
        return self._handles.detach().cpu().clone()

    @property
    def targets(self) -> torch.Tensor:
        return self._targets.detach().cpu().clone()

    @property
    def history(self) -> list[DragSnapshot]:
        """Index 0: the start; index i: the state after the i-th finished drag still kept."""
        return list(self._history)

    def step(self) -> StepResult:
        """One generator pass to the feature block: track, check stop, then (unless done) one
        Adam update. Never renders the image."""
        head, tail = self._split_ws()
        ws = (head, tail) if getattr(self.generator, "supports_split_latent", False) \
            else torch.cat([head, tail], dim=1)
        if self._windowed():
            with torch.enable_grad():
                feat = self.generator.feature_windows(ws, self.feature_block, *self._window_boxes())
        else:
            feat = self._features(ws, grad=True)
        stats, total = self._measure(feat)
        self._last_ws = torch.cat([head, tail], dim=1).detach()
        handles, dist, losses = stats
        stop = self._stop_reason(dist) or self._stall_reason(handles, dist, losses["motion"])
        if stop is None:
            if total.requires_grad:
                (grad,) = torch.autograd.grad(total, [self._delta])
                self._delta.grad = grad
                self._optim.step()
                self._delta.grad = None
            if self.config.method == "freedrag":
                self._fd.after_step(self._fd_losses)
            self._steps_taken += 1
            self._moved = True
            return StepResult(self._steps_taken - 1, handles, dist, losses, False)
        self._push_snapshot()
        return StepResult(self._steps_taken, handles, dist, losses, True, stop)

    def run(self, max_steps: int | None = None, cancel=None, preview_every: int = 0
            ) -> Iterator[StepResult]:
        """Step until done, yielding every StepResult; the last one has done=True and the image.

        max_steps: at most this many optimisation steps in this call (besides the per-point-set
        limit `config.max_steps`); reaching it ends the run with reason "max_steps".
        cancel: a callable returning True, or a threading.Event; checked between steps.
        preview_every: k > 0 attaches the rendered image to results whose step is a multiple of k.
        """
        if max_steps is not None and not (isinstance(max_steps, int) and max_steps >= 1):
            raise DragInputError(f"max_steps must be an integer ≥ 1, got {max_steps!r}")
        if not (isinstance(preview_every, int) and preview_every >= 0):
            raise DragInputError(f"preview_every must be an integer ≥ 0, got {preview_every!r}")
        is_cancelled = _cancel_checker(cancel)
        done_here = 0
        while True:
            if is_cancelled():
                yield self._finish("cancelled")
                return
            if max_steps is not None and done_here >= max_steps:
                yield self._finish("max_steps")
                return
            result = self.step()
            if result.done:
                yield dataclasses.replace(result, image=self.render())
                return
            done_here += 1
            if preview_every and result.step % preview_every == 0:
                result = dataclasses.replace(result, image=self._render(self._last_ws))
            yield result

    @torch.no_grad()
    def render(self) -> torch.Tensor:
        """The image of the current latent, [1, C, res, res] in ≈[-1, 1]."""
        return self._render(self._ws())

    def set_points(self, handles, targets, mask=_KEEP_MASK) -> None:
        """Start a new point set from the current latent (after a drag, or to move points),
        optionally with a new movable mask (None removes it).

        References f_i and F0 are taken from the current latent; the step count and Adam state
        start afresh. Unfinished progress is kept and recorded in the history. A new mask is
        checked against these handles, not the previous point set's."""
        h, t = _check_points(handles, targets, self.res)
        m = self._mask if mask is _KEEP_MASK else _check_mask(mask, self.res)
        self._check_handles_movable(h, m)
        if mask is not _KEEP_MASK:
            self._mask = None if m is None else m.to(self.device)
        self._push_snapshot()
        self._begin(self._ws().detach(), h, t)

    def reset_points(self) -> None:
        """Re-take the reference features f_i and F0 from the current latent at the current
        handle positions (what the authors' tool does when points are reset)."""
        self.set_points(self.handles, self.targets)

    def set_mask(self, mask) -> None:
        """Replace the movable mask (None removes it); F0 stays that of the point set's start."""
        m = _check_mask(mask, self.res)
        self._check_handles_movable(self._handles.cpu(), m)
        self._mask = None if m is None else m.to(self.device)
        self._mask_w = None if self._mask is None else _mask_weights(self._mask, self._f0.shape[-2:])

    def undo(self, to: int | None = None) -> DragSnapshot:
        """Go back to history[to]; by default to the last finished drag, or — when nothing has
        changed since it — to the one before. Later entries are dropped. Returns the entry."""
        n = len(self._history)
        if to is None:
            to = n - 1 if self._unsaved() else n - 2
            if to < 0:
                raise DragInputError("nothing to undo: this is the starting image")
        elif not (isinstance(to, int) and -n <= to < n):
            raise DragInputError(f"undo index {to!r} out of range: the history has {n} entries")
        to %= n
        snap = self._history[to]
        del self._history[to + 1:]
        self._begin(snap.latent.clone(), snap.handles.clone(), snap.targets.clone())
        return snap

    # -- internals ----------------------------------------------------------------------------

    def _check_latent(self, latent) -> torch.Tensor:
        if not isinstance(latent, torch.Tensor):
            raise DragInputError(f"latent must be a torch tensor, got {type(latent).__name__}")
        w = latent.detach()
        if w.ndim == 1:
            w = w[None]
        if w.ndim == 2 and w.shape == (1, self.w_dim):
            w = w[:, None, :].repeat(1, self.num_ws, 1)
        if w.ndim != 3 or tuple(w.shape) != (1, self.num_ws, self.w_dim):
            raise DragInputError(f"latent must be w [1, {self.w_dim}] or W+ [1, {self.num_ws}, "
                                 f"{self.w_dim}], got {tuple(latent.shape)}")
        if not torch.isfinite(w).all():
            raise DragInputError("latent contains NaN or infinite values")
        device = _device_of(self.generator, w)
        return w.to(device=device, dtype=torch.float32).clone()

    def _check_handles_movable(self, h: torch.Tensor, m: torch.Tensor | None) -> None:
        if m is None:
            return
        idx = h.round().to(torch.int64)
        for i, (x, y) in enumerate(idx.tolist()):
            if float(m[y, x]) <= 0:
                raise DragInputError(f"handle {i} at ({x}, {y}) lies outside the movable region of "
                                     f"the mask: extend the selection or move the handle")

    def _begin(self, ws: torch.Tensor, handles: torch.Tensor, targets: torch.Tensor) -> None:
        """A new point set on latent ws: references, fresh optimiser, step count 0."""
        cfg = self.config
        self._base = ws.detach().to(self.device)
        rows = 1 if cfg.latent_space == "w" else self.n_optimized_layers
        self._delta = torch.zeros(1, rows, self.w_dim, device=self.device, requires_grad=True)
        self._optim = torch.optim.Adam([self._delta], lr=cfg.lr)
        self._handles = handles.to(self.device, torch.float32)
        self._handles_host = handles.detach().to("cpu", torch.float32)
        self._targets = targets.to(self.device, torch.float32)
        p = self._handles.shape[0]
        if cfg.stop_distance is not None:
            self.stop_distance = float(cfg.stop_distance)
        else:
            # The paper's 1 / 2 px at 512 scale with the resolution; the integer tracker
            # cannot stop closer than a pixel, the sub-pixel one can: on models below 128 px
            # (where a pixel is more than 1/128 of the picture) it stops at 1/128 of it. From
            # 128 px up "dragd" is the integer tracker with the 1-px floor: at 256 px a 0.5-px
            # stop halved the speed-up over the authors' loop and sub-pixel tracking with the
            # 1-px stop cost a fifth more steps for no closer content (benchmarks/bench_peer.py).
            floor = min(1.0, SUBPIXEL_STOP * self.res) if self._subpixel else 1.0
            self.stop_distance = max((1.0 if p <= 5 else 2.0) * self.res / 512, floor)
        self._f0 = self._features(self._base, grad=False)
        self._refs = sample_features(self._f0, self._handles, self.res)       # [P, C]
        self._mask_w = None if self._mask is None else _mask_weights(self._mask, self._f0.shape[-2:])
        self._steps_taken = 0
        self._trail: list[tuple[list, float, float]] = []    # per step: handles, Σ distance, motion
        self._held = torch.zeros(p, dtype=torch.bool, device=self.device)
        self._hold_pos = self._handles.clone()
        self._hold_ref = None
        self._moved = False
        if cfg.method == "freedrag":
            from .freedrag import FreeDragState   # freedrag.py builds on this module's sampling
            self._fd = FreeDragState(self._f0, self._handles, self.res)
            self._fd_converged = False
        self._last_ws = self._base

    def _split_ws(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(optimised rows [1, n, w_dim] with grad, frozen rows [1, num_ws − n, w_dim])."""
        n = self.n_optimized_layers
        return self._base[:, :n] + self._delta, self._base[:, n:]

    def _ws(self) -> torch.Tensor:
        return torch.cat(self._split_ws(), dim=1)

    def _features(self, ws, grad: bool) -> torch.Tensor:
        with torch.set_grad_enabled(grad):
            out = self.generator.synthesize(ws, noise_mode="const", stop_after_block=self.feature_block,
                                    render=False)
        return out.features[self.feature_block - 1]

    def _windowed(self) -> bool:
        """Whether this step can read the features in windows: nothing but the handles'
        neighbourhoods is read unless the mask term is on."""
        return (self.config.windows and getattr(self.generator, "supports_feature_windows", False)
                and (self._mask_w is None or self.config.lambda_mask == 0))

    def _window_boxes(self) -> tuple[list[tuple[int, int]], int]:
        """(centres, half) at the feature block's resolution covering what a step reads around
        each handle: the tracking square (±r2 around the rounded handle), then the motion disc
        (±r1) around wherever tracking lands, shifted by ≤1 px, plus bilinear neighbours; for
        FreeDrag, what its line search and template read around each point (freedrag.py)."""
        scale = self.generator.block_resolution(self.feature_block) / self.res
        if self.config.method == "freedrag":
            span = self._fd.reach
        else:
            # a held handle's arrival disc lies within 2 stop distances of where it was tracked
            reach = max(self.r2, 2 * self.stop_distance if self.config.method == "dragd" else 0)
            span = reach + self.r1 + 2
        half = math.ceil(span * scale) + 1
        centres = [(math.floor((round(x) + 0.5) * scale), math.floor((round(y) + 0.5) * scale))
                   for x, y in self._handles_host.tolist()]
        return centres, half

    def _measure(self, feat, advance: bool = True):
        """Track (if the latent moved), distances, losses; one host transfer. advance=False
        (ending a run early): FreeDrag only measures, it starts no sub-move."""
        p = self._handles.shape[0]
        if self.config.method == "freedrag":
            motion, extra = self._freedrag_loss(feat, advance)
            dist = (self._targets - self._handles).norm(dim=-1)
        else:
            if self._moved:
                with torch.no_grad():
                    self._handles = track_points(feat.detach(), self._handles, self._refs, self.r2,
                                                 self.res, self.config.tracking_norm, self._subpixel)
                self._moved = False
            dist = (self._targets - self._handles).norm(dim=-1)
            arrived = dist <= self.stop_distance
            motion = motion_loss(feat, self._handles, self._targets, self.r1, self.res, (~arrived).to(feat.dtype))
            if self.config.method == "dragd":
                motion = motion + self._hold_loss(feat, arrived)
            extra = torch.zeros(0, device=feat.device)
        if self._mask_w is not None and self.config.lambda_mask > 0:
            mask = ((feat - self._f0).abs() * self._mask_w).sum() / feat.shape[1]
        else:
            mask = torch.zeros((), device=feat.device)
        total = motion + self.config.lambda_mask * mask
        packed = torch.cat([self._handles.reshape(-1), dist, torch.stack([motion, mask, total]).detach(),
                            extra]).float().cpu()
        handles = packed[:2 * p].reshape(p, 2)
        self._handles_host = handles
        distances = packed[2 * p:3 * p]
        m, k, tot = packed[3 * p:3 * p + 3].tolist()
        if self.config.method == "freedrag":
            self._freedrag_host(packed[3 * p + 3:].tolist(), distances)
        return (handles, distances, {"motion": m, "mask": k, "total": tot}), total

    def _freedrag_loss(self, feat, advance: bool):
        """FreeDrag (freedrag.py): a sub-move starts with the line search on this pass; the loss
        is the template loss at the current points. → (loss, [per-handle losses, arrived])."""
        fd = self._fd
        if advance and fd.sub_step == 0:
            fd.boundary(feat.detach(), self._targets, self.stop_distance)
        self._handles = fd.points.clone()
        per = fd.loss(feat, record=advance)
        return per.sum(), torch.cat([per.detach(), fd.arrived.to(per.dtype)])

    def _freedrag_host(self, extra: list[float], dist: torch.Tensor) -> None:
        p = len(extra) // 2
        self._fd_losses = extra[:p]
        near = bool((dist <= self.stop_distance).all())
        self._fd.settle = self._fd.settle + 1 if near else 0
        self._fd_converged = all(extra[p:]) or self._fd.settle > SETTLE_STEPS

    def _hold_loss(self, feat, arrived: torch.Tensor) -> torch.Tensor:
        """Σ over arrived handles of mean |F(q) − F_arrival(q)| over the disc where each arrived;
        handles arriving now take their F_arrival from this pass, handles that left drop it."""
        off = _offsets(self.r1, True, self.device)
        with torch.no_grad():
            new = arrived & ~self._held
            self._hold_pos = torch.where(new[:, None], self._handles, self._hold_pos)
            here = sample_features(feat.detach(), self._handles[:, None, :] + off[None], self.res)
            self._hold_ref = here if self._hold_ref is None else torch.where(new[:, None, None], here,
                                                                             self._hold_ref)
            self._held = arrived
        q = self._hold_pos[:, None, :] + off[None]
        inside = ((q >= 0) & (q <= self.res - 1)).all(dim=-1).to(feat.dtype)
        diff = (sample_features(feat, q, self.res) - self._hold_ref).abs().mean(dim=-1)
        per_point = (diff * inside).sum(-1) / inside.sum(-1).clamp(min=1)
        return (per_point * arrived.to(per_point.dtype)).sum()

    def _stop_reason(self, dist: torch.Tensor) -> str | None:
        if self._fd_converged if self.config.method == "freedrag" else bool((dist <= self.stop_distance).all()):
            return "converged"
        if self._steps_taken >= self.config.max_steps:
            return "max_steps"
        return None

    def _stall_reason(self, handles: torch.Tensor, dist: torch.Tensor, motion: float) -> str | None:
        """Handles in texture-less regions can stop following the drag (the paper's §4.3) and
        hop back and forth between a few pixels; such a drag ends as "stalled" (module docstring)."""
        window = round(self.config.stall_steps * max(1.0, 2e-3 / self.config.lr))
        if not window:
            return None
        self._trail.append((handles.round().tolist(), float(dist.sum()), motion))
        if len(self._trail) <= window:
            return None
        del self._trail[:-window - 1]
        moves, totals, losses = zip(*self._trail)
        if totals[0] - min(totals) >= 0.5 * self.stop_distance:
            return None                                   # it is closing in
        half = len(losses) // 2
        if sum(losses[half:]) / (len(losses) - half) < 0.95 * sum(losses[:half]) / half:
            return None                                   # the loss still falls
        returns = 0
        for i, pos in enumerate(moves[1:], start=1):
            for k, p in enumerate(pos):
                if p != moves[i - 1][k] and any(p == earlier[k] for earlier in moves[:i - 1]):
                    returns += 1
        return "stalled" if returns >= 2 else None

    @torch.no_grad()
    def _render(self, ws: torch.Tensor) -> torch.Tensor:
        return self.generator.synthesize(ws, noise_mode="const").image.detach()

    @torch.no_grad()
    def _finish(self, reason: str) -> StepResult:
        """End a run early: one full pass renders the image and re-tracks the handles from it."""
        ws = self._ws()
        out = self.generator.synthesize(ws, noise_mode="const")
        (handles, dist, losses), _ = self._measure(out.features[self.feature_block - 1], advance=False)
        self._last_ws = ws
        if self._stop_reason(dist) == "converged":
            reason = "converged"
        self._push_snapshot()
        return StepResult(self._steps_taken, handles, dist, losses, True, reason, out.image.detach())

    def _unsaved(self) -> bool:
        return not self._history or not torch.equal(self._history[-1].latent, self._ws().detach())

    def _push_snapshot(self) -> None:
        if not self._unsaved():
            return
        self._history.append(DragSnapshot(self._ws().detach().clone(), self.handles, self.targets,
                                          self._steps_taken))
        if len(self._history) > MAX_HISTORY:
            del self._history[1]          # keep the start, drop the oldest drag


def _device_of(generator, fallback: torch.Tensor) -> torch.device:
    try:
        return next(generator.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        pass
    dev = getattr(generator, "device", None)
    if isinstance(dev, (str, torch.device)):
        return torch.device(dev)
    return fallback.device


def _cancel_checker(cancel) -> Callable[[], bool]:
    if cancel is None:
        return lambda: False
    if hasattr(cancel, "is_set"):
        return lambda: bool(cancel.is_set())
    if callable(cancel):
        return lambda: bool(cancel())
    raise DragInputError("cancel must be a callable returning bool or a threading.Event")
