"""Real image → (pivot latent, privately tuned generator): Pivotal Tuning Inversion.

The method is PTI (Roich et al., "Pivotal Tuning for Latent-based Editing of Real Images",
2022), made cheaper:

1. **Pivot search.** Optimise a latent, in W (default, one w broadcast to all layers — the
   most editable space) or W+, starting from the mean w. Adam with the StyleGAN2 projector's
   schedule: the learning rate ramps up over the first ``lr_rampup`` of the steps and down
   with a cosine over the last ``lr_rampdown``; Gaussian noise of std
   ``w_std · noise · max(0, 1 − t / noise_ramp)²`` is added to the latent early on
   (``w_std`` = RMS distance of mapped samples from their mean), which keeps the search from
   settling in the first basin. Loss = weighted pixel MSE + perceptual term.
2. **Pivotal tuning.** A private copy of the generator (its mapping network shared, never
   trained) has all synthesis weights tuned with Adam (PTI: lr 3e-4) on MSE + perceptual so
   that G'(w_pivot) reproduces the image. It stops early when the quality target is met.

The published PTI runs 450 + 350 steps. The presets here stop far earlier: the pivot only
needs to land in the right region (tuning closes the rest), and tuning stops as soon as the
PSNR / perceptual target is met; `benchmarks/bench_inversion.py` prints the figures.

The shared base generator is never modified: the pivot phase evaluates it through
`torch.func.functional_call` with detached weights (no ``.grad`` is written to it either), and
tuning works on a deep copy.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from . import perceptual as perc

log = logging.getLogger(__name__)

SPACES = ("w", "w+")


class InversionCancelled(Exception):
    """Raised between steps when the cancel check returns True."""


# ---------------------------------------------------------------------------------------------
# Settings and presets


@dataclass(frozen=True)
class InversionSettings:
    preset: str = "custom"
    space: str = "w"                    # "w" or "w+"
    # pivot search
    pivot_steps: int = 100
    pivot_lr: float = 0.05
    lr_rampup: float = 0.05             # fraction of the steps
    lr_rampdown: float = 0.25           # fraction of the steps (cosine)
    noise: float = 0.05                 # initial latent noise, × w_std
    noise_ramp: float = 0.75            # fraction of the steps over which the noise decays to 0
    # pivotal tuning
    tune_steps: int = 150
    tune_lr: float = 3e-4
    # loss
    mse_weight: float = 1.0
    perceptual_weight: float = 1.0
    perceptual: str = "auto"            # "auto" | "lpips" | "discriminator" | "ms-ssim+l1"
    # early stop of the tuning: all set criteria must hold (None = not a criterion)
    stop_psnr: float | None = 32.0
    stop_perceptual: float | None = None    # None → the backend's default threshold
    stop_check_every: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {self.space!r}")
        if self.pivot_steps < 0 or self.tune_steps < 0:
            raise ValueError("step counts must be ≥ 0")
        if self.perceptual not in ("auto",) + perc.BACKENDS:
            raise ValueError(f"perceptual must be 'auto' or one of {perc.BACKENDS}, got {self.perceptual!r}")

    def cache_token(self) -> str:
        """Canonical text of everything that changes the result (the preset name does not)."""
        d = dataclasses.asdict(self)
        d.pop("preset")
        return json.dumps(d, sort_keys=True)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "InversionSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


PRESETS: dict[str, InversionSettings] = {
    # Published PTI for comparison: 450 pivot steps (lr 5e-3) + 350 tuning steps (lr 3e-4),
    # LPIPS ≤ 0.06 early stop.
    "fast": InversionSettings(preset="fast", pivot_steps=60, pivot_lr=0.08, tune_steps=80,
                              tune_lr=1e-3, stop_psnr=30.0),
    "balanced": InversionSettings(preset="balanced", pivot_steps=120, pivot_lr=0.05, tune_steps=160,
                                  tune_lr=6e-4, stop_psnr=33.0),
    "quality": InversionSettings(preset="quality", pivot_steps=250, pivot_lr=0.03, tune_steps=350,
                                 tune_lr=3e-4, stop_psnr=38.0),
}


def preset(name: str = "balanced", **overrides) -> InversionSettings:
    """A named preset with optional field overrides (e.g. ``preset("fast", space="w+")``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class ProgressEvent:
    phase: str                          # "pivot" | "tune"
    step: int                           # 1-based
    total: int                          # the phase's step budget
    losses: dict[str, float]            # loss, mse, perceptual, psnr


ProgressFn = Callable[[ProgressEvent], None]
CancelFn = Callable[[], bool]


@dataclass
class PhaseResult:
    name: str
    steps: int                          # steps actually run
    max_steps: int
    seconds: float
    psnr: float                         # of the phase's final image (weighted, [0, 1] peak)
    ssim: float
    perceptual: float
    mse: float
    stopped_early: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Inversion:
    """What the drag engine needs: start from ``w`` with ``generator``."""
    w: torch.Tensor                     # [1, w_dim] (space "w") or [1, num_ws, w_dim] (space "w+")
    generator: nn.Module                # the tuned private generator (eval, requires_grad off)
    space: str
    pivot: PhaseResult
    tuning: PhaseResult | None
    perceptual_backend: str
    settings: InversionSettings
    seconds: float
    from_cache: bool = False
    meta: dict = field(default_factory=dict)     # free-form (geometry, model id, …) set by callers

    @torch.no_grad()
    def reconstruction(self) -> torch.Tensor:
        """G'(w_pivot): [1, 3, R, R] in ≈[-1, 1]."""
        return self.generator.synthesize(self.w, noise_mode="const").image

    def summary(self) -> dict:
        """JSON-friendly report (for logs and the protocol)."""
        return {"space": self.space, "perceptual_backend": self.perceptual_backend,
                "seconds": self.seconds, "from_cache": self.from_cache,
                "pivot": self.pivot.to_dict(),
                "tuning": self.tuning.to_dict() if self.tuning else None,
                "settings": self.settings.to_dict()}


# ---------------------------------------------------------------------------------------------
# Helpers


_W_STATS: "weakref.WeakKeyDictionary[nn.Module, tuple[torch.Tensor, float]]" = weakref.WeakKeyDictionary()


@torch.no_grad()
def w_statistics(G: nn.Module, n: int = 4096, seed: int = 123) -> tuple[torch.Tensor, float]:
    """(mean w [w_dim], w_std) where w_std = RMS distance of mapped samples from the mean."""
    hit = _W_STATS.get(G)
    if hit is not None:
        return hit[0].clone(), hit[1]
    w_avg = G.mean_w().detach()
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn([n, G.cfg.z_dim], generator=gen).to(w_avg.device)
    samples = G.mapping(z)[:, 0]
    w_std = float(((samples - w_avg).square().sum() / n).sqrt())
    _W_STATS[G] = (w_avg.clone(), w_std)
    return w_avg, w_std


def _frozen_synthesis(G: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Render W+ with G's weights detached: gradients reach the latent only, G is untouched."""
    synth = G.synthesis
    params = {k: v.detach() for k, v in synth.named_parameters()}
    params.update(dict(synth.named_buffers()))

    def render(ws: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(synth, params, (ws,), {"noise_mode": "const"}).image
    return render


def make_private_copy(G: nn.Module) -> nn.Module:
    """Deep copy of G for tuning; the mapping network is shared (it is never trained)."""
    memo = {id(G.mapping): G.mapping}
    tuned = copy.deepcopy(G, memo)
    tuned.training = False
    tuned.synthesis.eval()
    for p in tuned.synthesis.parameters():      # the shared mapping's flags are left alone
        p.requires_grad_(False)
    return tuned


def _lr_schedule(t: float, rampup: float, rampdown: float) -> float:
    ramp = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    if rampup > 0:
        ramp *= min(1.0, t / rampup)
    return ramp


def _check_cancel(cancel: CancelFn | None, phase: str, step: int) -> None:
    if cancel is not None and cancel():
        raise InversionCancelled(f"inversion cancelled during {phase} at step {step}")


@torch.no_grad()
def _evaluate(name: str, image: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
              perceptual: nn.Module, steps: int, max_steps: int, seconds: float,
              stopped: bool) -> PhaseResult:
    return PhaseResult(name=name, steps=steps, max_steps=max_steps, seconds=seconds,
                       psnr=float(perc.psnr(image, target, weight)[0]),
                       ssim=float(perc.ssim(image, target, weight)[0]),
                       perceptual=float(perceptual(image, target, weight)[0]),
                       mse=float(perc.mse(image, target, weight)[0]), stopped_early=stopped)


def _stop_threshold(settings: InversionSettings, perceptual: nn.Module) -> float | None:
    if settings.stop_perceptual is not None:
        return settings.stop_perceptual
    return getattr(perceptual, "default_threshold", None)


# ---------------------------------------------------------------------------------------------
# The two phases


def find_pivot(G: nn.Module, target: torch.Tensor, weight: torch.Tensor | None,
               settings: InversionSettings, perceptual: nn.Module,
               progress: ProgressFn | None = None, cancel: CancelFn | None = None,
               w_init: torch.Tensor | None = None) -> tuple[torch.Tensor, PhaseResult]:
    """Phase 1: latent search with G frozen. Returns (w [1, w_dim] or [1, num_ws, w_dim], report)."""
    t0 = time.perf_counter()
    render = _frozen_synthesis(G)
    w_avg, w_std = w_statistics(G)
    device = w_avg.device
    if w_init is None:
        w_init = w_avg.unsqueeze(0)
        if settings.space == "w+":
            w_init = w_init.unsqueeze(1).repeat(1, G.num_ws, 1)
    w_opt = w_init.detach().clone().to(device).requires_grad_(True)
    opt = torch.optim.Adam([w_opt], lr=settings.pivot_lr, betas=(0.9, 0.999))
    gen = torch.Generator(device="cpu").manual_seed(settings.seed)
    total = settings.pivot_steps
    for step in range(total):
        _check_cancel(cancel, "pivot", step + 1)
        t = step / max(total, 1)
        noise_scale = w_std * settings.noise * max(0.0, 1.0 - t / settings.noise_ramp) ** 2 \
            if settings.noise_ramp > 0 else 0.0
        lr = settings.pivot_lr * _lr_schedule(t, settings.lr_rampup, settings.lr_rampdown)
        for group in opt.param_groups:
            group["lr"] = lr
        noise = torch.randn(w_opt.shape, generator=gen).to(device) * noise_scale
        ws = G.to_wplus(w_opt + noise)
        img = render(ws)
        l_mse = perc.mse(img, target, weight)[0]
        l_per = perceptual(img, target, weight)[0]
        loss = settings.mse_weight * l_mse + settings.perceptual_weight * l_per
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress is not None:
            progress(ProgressEvent("pivot", step + 1, total, {
                "loss": loss.item(), "mse": l_mse.item(), "perceptual": l_per.item(),
                "psnr": float(perc.psnr(img.detach(), target, weight)[0]), "lr": lr}))
    w = w_opt.detach()
    with torch.no_grad():
        img = render(G.to_wplus(w))
    report = _evaluate("pivot", img, target, weight, perceptual, total, total,
                       time.perf_counter() - t0, False)
    return w, report


def tune_generator(G: nn.Module, w: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                   settings: InversionSettings, perceptual: nn.Module,
                   progress: ProgressFn | None = None,
                   cancel: CancelFn | None = None) -> tuple[nn.Module, PhaseResult]:
    """Phase 2: tune a private copy of G so that G'(w) reproduces the target."""
    t0 = time.perf_counter()
    tuned = make_private_copy(G)
    params = list(tuned.synthesis.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=settings.tune_lr, betas=(0.9, 0.999))
    ws = G.to_wplus(w.detach())
    threshold = _stop_threshold(settings, perceptual)
    criteria = threshold is not None or settings.stop_psnr is not None
    total = settings.tune_steps
    steps = 0
    stopped = False
    for step in range(total):
        _check_cancel(cancel, "tune", step + 1)
        img = tuned.synthesis(ws, noise_mode="const").image
        l_mse = perc.mse(img, target, weight)[0]
        l_per = perceptual(img, target, weight)[0]
        # The PSNR the report gives: of the image the user will see, i.e. clamped to [-1, 1].
        cur_psnr = float(perc.psnr(img.detach(), target, weight)[0])
        if criteria and step % max(1, settings.stop_check_every) == 0:
            ok_p = threshold is None or l_per.item() <= threshold
            ok_q = settings.stop_psnr is None or cur_psnr >= settings.stop_psnr
            if ok_p and ok_q:
                stopped = True        # the current weights already meet the target
                break
        loss = settings.mse_weight * l_mse + settings.perceptual_weight * l_per
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps = step + 1
        if progress is not None:
            progress(ProgressEvent("tune", step + 1, total, {
                "loss": loss.item(), "mse": l_mse.item(), "perceptual": l_per.item(), "psnr": cur_psnr}))
    for p in params:
        p.requires_grad_(False)
        p.grad = None
    del opt
    with torch.no_grad():
        img = tuned.synthesis(ws, noise_mode="const").image
    report = _evaluate("tune", img, target, weight, perceptual, steps, total,
                       time.perf_counter() - t0, stopped)
    return tuned, report


def invert(G: nn.Module, target: torch.Tensor, weight: torch.Tensor | None = None, *,
           settings: InversionSettings | str | None = None, D: nn.Module | None = None,
           perceptual: nn.Module | None = None, progress: ProgressFn | None = None,
           cancel: CancelFn | None = None) -> Inversion:
    """PTI: pivot search, then pivotal tuning of a private copy of G.

    target [1, 3, R, R] in [-1, 1] at G's resolution; weight [1, 1, R, R] in [0, 1] or None.
    ``settings`` may be a preset name. ``perceptual`` overrides the automatic backend choice
    (LPIPS if available, else D's features if D is given, else MS-SSIM + L1).
    ``progress`` is called after every step; ``cancel`` is polled before every step and a True
    raises `InversionCancelled` (the base generator is untouched either way).
    """
    t0 = time.perf_counter()
    if settings is None:
        settings = PRESETS["balanced"]
    elif isinstance(settings, str):
        settings = preset(settings)
    res = G.resolution
    if target.ndim != 4 or target.shape[0] != 1 or target.shape[1] != 3 or target.shape[-2:] != (res, res):
        raise ValueError(f"target must be [1, 3, {res}, {res}], got {tuple(target.shape)}")
    device = next(G.parameters()).device
    target = target.to(device=device, dtype=torch.float32)
    if weight is not None:
        weight = weight.to(device=device, dtype=torch.float32)
    if perceptual is None:
        perceptual = perc.make_perceptual(settings.perceptual, D=D, device=device)
    backend = getattr(perceptual, "name", type(perceptual).__name__)
    log.info("inverting at %d px, space %s, preset %s, perceptual %s", res, settings.space,
             settings.preset, backend)
    w, pivot_report = find_pivot(G, target, weight, settings, perceptual, progress, cancel)
    if settings.tune_steps > 0:
        tuned, tune_report = tune_generator(G, w, target, weight, settings, perceptual, progress, cancel)
    else:
        tuned, tune_report = make_private_copy(G), None
    seconds = time.perf_counter() - t0
    log.info("inversion done in %.2f s: pivot PSNR %.2f dB → tuned PSNR %s", seconds, pivot_report.psnr,
             f"{tune_report.psnr:.2f} dB" if tune_report else "n/a")
    return Inversion(w=w, generator=tuned, space=settings.space, pivot=pivot_report, tuning=tune_report,
                     perceptual_backend=backend, settings=settings, seconds=seconds)


# ---------------------------------------------------------------------------------------------
# Weight deltas (what the disk cache stores)


def weight_deltas(base: nn.Module, tuned: nn.Module) -> dict[str, torch.Tensor]:
    """tuned − base for every synthesis parameter that changed (names relative to G)."""
    base_params = dict(base.named_parameters())
    out = {}
    for name, p in tuned.named_parameters():
        if not name.startswith("synthesis."):
            continue
        b = base_params[name]
        if p.shape != b.shape:
            raise ValueError(f"parameter {name} has shape {tuple(p.shape)} vs base {tuple(b.shape)}")
        d = p.detach() - b.detach()
        if torch.count_nonzero(d):
            out[name] = d
    return out


def apply_weight_deltas(base: nn.Module, deltas: dict[str, torch.Tensor]) -> nn.Module:
    """A private copy of base with the deltas added (in fp32, whatever their stored dtype)."""
    tuned = make_private_copy(base)
    params = dict(tuned.named_parameters())
    with torch.no_grad():
        for name, d in deltas.items():
            if name not in params:
                raise KeyError(f"delta for unknown parameter {name!r}")
            p = params[name]
            if p.shape != d.shape:
                raise ValueError(f"delta {name} has shape {tuple(d.shape)}, parameter {tuple(p.shape)}")
            p.add_(d.to(device=p.device, dtype=p.dtype))
    return tuned
