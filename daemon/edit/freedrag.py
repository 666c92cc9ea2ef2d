"""FreeDrag's point-tracking-free drag rules (Ling et al., "FreeDrag: Feature Dragging for
Reliable Point-based Image Editing", CVPR 2024), for `DragConfig(method="freedrag")`.

Instead of tracking where the handle content went, each handle carries a feature template T
(its features on a 3×3 grid of points 3 px apart, taken at the start) and a current point c
that moves towards the target in sub-moves:

* Line search (at the start of each sub-move): on the features of the current latent, the
  candidates are 10 evenly spaced points on the segment from c towards the target, at most d
  long, never past the target. If the template loss L_end at c after the last sub-move was
  ≤ l/2, c advances to the candidate whose template distance is closest to l (a move the
  optimisation can make in a few steps); if L_end ≤ the loss L_init at the sub-move's start, c
  stays (the content is still catching up); otherwise c steps back by d and takes the candidate
  with the smallest distance on a segment of 2d from there (the content got lost: find it again).
* Optimisation: ≤ 5 Adam steps per sub-move on Σ_i mean |F(c_i + grid) − T_i| (T detached),
  fewer when every handle's loss is already below l/4.
* Template update (end of a sub-move): T ← λ·F(c + grid) + (1 − λ)·T with
  λ = 1 / (1 + exp(α(L_end − β))), α = ln 9 / (0.6·l), β = 0.2·l: a well-matched template
  follows the content, a poorly matched one keeps its memory; an arrived handle's is replaced.
* A handle has arrived when c is within the stop distance of its target and L_end ≤ l/4; the
  drag converges when all have, or 10 steps after every c reached its target.

Hyperparameters: d = 3 pixels of a 128-px feature grid (d·res/128 image px), as the authors'
(their lion and elephant models use d = 4). Their l = 0.3 is an absolute feature distance tuned
on trained FFHQ-class models; features of other models differ in scale (measured: a 1-grid-px
shift costs ≈ 0.012 on our random-weight 128/256-px benchmark models and ≈ 0.005 on our 64-px
model, so the template loss stayed below l/4 from the start, the points ran ahead of the content
and "arrived" with it 4–7 px behind). So l is measured per handle at the start instead: the
template distance of a shift of L_SHIFT grid px, averaged over 8 directions (F is bilinear
between feature pixels, so the distance grows about linearly with the shift and the line search
advances ≈ L_SHIFT grid px per sub-move where the content keeps up). α and β scale with l as
in the paper. Written from the paper and the description of their published code; positions
here are image pixels as in drag.py.
"""
from __future__ import annotations

import math

import torch

from ..model.windows import FeatureWindows
from .drag import sample_features

L_SHIFT = 2.0               # l: the template distance of a shift of this many grid px
D_MAX = 3.0                   # in pixels of a 128-px grid
SUB_STEPS = 5
GRID_SPACING = 3.0            # image px between the template's 3×3 points
INTERVALS = 10


def template_grid(device) -> torch.Tensor:
    """[9, 2] offsets (x, y) of the template points around a handle."""
    ax = torch.tensor([-GRID_SPACING, 0.0, GRID_SPACING], device=device)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)


def template_distance(feat, points: torch.Tensor, templates: torch.Tensor, res: int) -> torch.Tensor:
    """mean |F(p + grid) − T| per point: points [..., 2], templates [..., 9, C] → [...]."""
    grid = template_grid(points.device)
    f = sample_features(feat, points[..., None, :] + grid, res)
    return (f - templates).abs().mean(dim=(-1, -2))


def line_search(feat, current: torch.Tensor, target: torch.Tensor, template: torch.Tensor,
                loss_end: float, loss_init: float, res: int, l: float, d: float = D_MAX) -> torch.Tensor:
    """The next point [2] for one handle (module docstring); never past the target."""
    d = d * res / 128
    remain = float((target - current).norm())
    if loss_end <= 0.5 * l:
        start, reach, want = current, d, l
    elif loss_end <= loss_init:
        return current
    else:
        back = min(d / (remain + 1e-8), 1.0, _room_behind(current, target, res))
        start = current - back * (target - current)
        remain = float((target - start).norm())
        reach, want = 2 * d, 0.0
    end = start + min(reach / (remain + 1e-8), 1.0) * (target - start)
    s = torch.arange(1, INTERVALS + 1, device=current.device, dtype=current.dtype)[:, None] / INTERVALS
    candidates = (1 - s) * start + s * end                                   # [10, 2]
    dist = template_distance(feat, candidates[None], template.expand(1, INTERVALS, *template.shape), res)[0]
    return candidates[(dist - want).abs().argmin()]


def _window(feat, i: int):
    """Handle i's view of the features: the whole map, or its own window as a batch of one."""
    if isinstance(feat, FeatureWindows):
        return FeatureWindows(feat.data[i:i + 1], feat.origins[i:i + 1], feat.full_size)
    return feat


def _room_behind(current: torch.Tensor, target: torch.Tensor, res: int) -> float:
    """The largest u ≥ 0 with current − u·(target − current) still on the image."""
    room = math.inf
    for c, a in zip(current.tolist(), (target - current).tolist()):
        if a > 0:
            room = min(room, c / a)
        elif a < 0:
            room = min(room, (res - 1 - c) / -a)
    return room


def template_weight(loss_end: torch.Tensor, l) -> torch.Tensor:
    """λ = 1 / (1 + exp(α(L − β))), α = ln 9 / (0.6 l), β = 0.2 l: ½ at L = 0.2 l, 0.1 at 0.8 l.
    l: a float or one per handle, as loss_end."""
    alpha, beta = math.log(9.0) / (0.6 * l), 0.2 * l
    return torch.sigmoid(-alpha * (loss_end - beta))


def expected_distance(f0, handles: torch.Tensor, templates: torch.Tensor, res: int) -> torch.Tensor:
    """Each handle's l [P]: the template distance of a shift by L_SHIFT grid px at the start,
    averaged over 8 directions (never 0, so that α stays finite on a flat map)."""
    angles = torch.arange(8, device=handles.device, dtype=handles.dtype) * (math.pi / 4)
    shifts = torch.stack([angles.cos(), angles.sin()], dim=-1) * (L_SHIFT * res / 128)    # [8, 2]
    dist = template_distance(f0, handles[:, None, :] + shifts, templates[:, None], res)     # [P, 8]
    return dist.mean(dim=1).clamp(min=1e-6)


class FreeDragState:
    """Per point set: current points, templates, the sub-move bookkeeping."""

    def __init__(self, f0, handles: torch.Tensor, res: int):
        self.res = res
        self.points = handles.clone()
        grid = template_grid(handles.device)
        self.templates = sample_features(f0, handles[:, None, :] + grid, res).detach()   # [P, 9, C]
        self.l = expected_distance(f0, handles, self.templates, res)
        # Image px around a rounded point that one pass reads: line-search candidates lie within
        # d of the point, template points GRID_SPACING further, a bilinear sample 1 more.
        self.reach = D_MAX * res / 128 + GRID_SPACING + 1.5
        self.l_host = self.l.tolist()
        p = handles.shape[0]
        self.loss_init = torch.zeros(p, device=handles.device)
        self.loss_end = torch.zeros(p, device=handles.device)
        self.arrived = torch.zeros(p, dtype=torch.bool, device=handles.device)
        self.sub_step = 0
        self.started = False
        self.settle = 0              # steps since every point reached its target (drag.py counts)

    @torch.no_grad()
    def boundary(self, feat, targets: torch.Tensor, stop_distance: float) -> None:
        """End of a sub-move on this pass's features (arrivals, templates), then the line search."""
        if self.started:
            self.loss_end = template_distance(feat, self.points, self.templates, self.res)
            near = (targets - self.points).norm(dim=-1) <= stop_distance
            self.arrived = near & (self.loss_end <= 0.25 * self.l)
            lam = torch.where(self.arrived, torch.ones_like(self.loss_end), template_weight(self.loss_end, self.l))
            here = sample_features(feat, self.points[:, None, :] + template_grid(feat.device), self.res)
            self.templates = lam[:, None, None] * here + (1 - lam[:, None, None]) * self.templates
        self.started = True
        ends, inits = self.loss_end.tolist(), self.loss_init.tolist()
        for i in range(self.points.shape[0]):
            if not bool(self.arrived[i]):
                self.points[i] = line_search(_window(feat, i), self.points[i], targets[i], self.templates[i],
                                             ends[i], inits[i], self.res, self.l_host[i])

    def loss(self, feat, record: bool = True) -> torch.Tensor:
        """Per-handle template losses [P] on this pass (the gradient flows through F); the first
        of a sub-move is its L_init unless record is False."""
        per = template_distance(feat, self.points, self.templates, self.res)
        if record and self.sub_step == 0:
            self.loss_init = per.detach()
        return per

    def after_step(self, per: list[float]) -> None:
        self.sub_step += 1
        if self.sub_step >= SUB_STEPS or all(x < 0.25 * l for x, l in zip(per, self.l_host)):
            self.sub_step = 0
