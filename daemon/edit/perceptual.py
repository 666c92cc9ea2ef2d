"""Image-quality metrics and the pluggable perceptual term used by the inversion.

Three backends, chosen in this order by `make_perceptual(prefer="auto")`:

1. ``lpips`` — LPIPS (Zhang et al. 2018) when the optional ``lpips`` package is importable
   *and* its backbone weights are already on this machine (torchvision's cache and the
   package's own linear-layer weights). Nothing is ever downloaded: on a machine without the
   weights the backend is reported unavailable and the next one is used.
2. ``discriminator`` — when the checkpoint ships a discriminator: per-block features of
   ``D(img, return_features=True)``, unit-normalised along channels at every pixel, squared
   distances averaged over space (weighted by the alpha map) and over blocks. This is LPIPS'
   recipe with D as the backbone and uniform channel weights. D's parameters are read
   through `torch.func.functional_call` with detached tensors, so the shared D is neither
   copied nor touched (no ``.grad`` accumulates on it).
3. ``ms-ssim+l1`` — ``0.84·(1 − MS-SSIM) + 0.16·L1`` (the mix of Zhao et al., "Loss
   functions for image restoration with neural networks", 2017) with our own MS-SSIM.

Every backend is an `nn.Module` mapping two images [N, 3, H, W] in [-1, 1] plus an optional
weight map [N, 1, H, W] in [0, 1] (0 = pixel does not count) to a loss [N]. Each carries a
``name`` (reported with the inversion result) and ``default_threshold``, the value below
which a reconstruction counts as good for early stopping (PTI stops at LPIPS ≤ 0.06).

The metrics `psnr`, `ssim` and `ms_ssim` take the same arguments; PSNR and SSIM are computed
on the [0, 1] scale (peak 1), so they read like the usual 8-bit figures.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

BACKENDS = ("lpips", "discriminator", "ms-ssim+l1")

# Standard MS-SSIM scale weights (Wang, Simoncelli & Bovik 2003), finest scale first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


# ---------------------------------------------------------------------------------------------
# Weighted reductions and metrics


def _weight_like(x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor | None:
    if weight is None:
        return None
    if weight.ndim == 3:
        weight = weight.unsqueeze(1)
    if weight.shape[-2:] != x.shape[-2:]:
        weight = F.interpolate(weight, size=x.shape[-2:], mode="area")
    return weight.to(dtype=x.dtype, device=x.device)


def weighted_mean(x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of x [N, C, H, W] over C, H, W with a [N, 1, H, W] weight map → [N]."""
    if weight is None:
        return x.mean(dim=[1, 2, 3])
    weight = _weight_like(x, weight)
    num = (x * weight).sum(dim=[1, 2, 3])
    den = weight.sum(dim=[1, 2, 3]) * x.shape[1]
    return num / den.clamp_min(1e-8)


def mse(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean squared error on the [-1, 1] scale → [N]."""
    return weighted_mean((x - y).square(), weight)


def psnr(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """PSNR in dB of images in [-1, 1], measured on the [0, 1] scale (peak 1) → [N].

    Both images are clamped to [-1, 1] first: what counts is the image the user gets, not
    generator output beyond the displayable range. The inversion's stop rule, its progress
    and its reports all use this one function."""
    err = mse(x.clamp(-1, 1), y.clamp(-1, 1), weight) / 4.0
    return 10 * torch.log10(1.0 / err.clamp_min(1e-12))


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-coords.square() / (2 * sigma * sigma))
    return g / g.sum()


def _blur_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, 'valid' borders, per channel."""
    c = x.shape[1]
    k = g.numel()
    x = F.conv2d(x, g.reshape(1, 1, 1, k).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, g.reshape(1, 1, k, 1).repeat(c, 1, 1, 1), groups=c)


def _ssim_maps(x: torch.Tensor, y: torch.Tensor, win: int, sigma: float = 1.5,
               data_range: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel SSIM and contrast-structure maps (valid region), inputs on any scale."""
    g = _gaussian_window(win, sigma * win / 11, x.device, x.dtype)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mu_x, mu_y = _blur_valid(x, g), _blur_valid(y, g)
    sxx = _blur_valid(x * x, g) - mu_x.square()
    syy = _blur_valid(y * y, g) - mu_y.square()
    sxy = _blur_valid(x * y, g) - mu_x * mu_y
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mu_x * mu_y + c1) / (mu_x.square() + mu_y.square() + c1)
    return lum * cs, cs


def _valid_weight(weight: torch.Tensor | None, win: int, like: torch.Tensor) -> torch.Tensor | None:
    if weight is None:
        return None
    # The SSIM of a window counts as much as the weight its window covers.
    w = F.avg_pool2d(weight, win, stride=1) if win > 1 else weight
    return w.to(like.dtype)


def _window_for(size: int) -> int:
    win = min(11, size)
    return win if win % 2 == 1 else win - 1


def ssim(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Single-scale SSIM (11×11 Gaussian, σ = 1.5, on the [0, 1] scale) → [N]."""
    x01, y01 = (x.clamp(-1, 1) + 1) / 2, (y.clamp(-1, 1) + 1) / 2
    weight = _weight_like(x, weight)
    win = _window_for(min(x.shape[-2:]))
    s, _ = _ssim_maps(x01, y01, win)
    return weighted_mean(s, _valid_weight(weight, win, s))


def ms_ssim(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None,
            scales: int | None = None) -> torch.Tensor:
    """Multi-scale SSIM → [N] (differentiable; images in [-1, 1]).

    Five scales with the standard weights when the image is ≥ 128 px (so the coarsest scale
    keeps ≥ 8 px); smaller images use fewer scales, the weights of the kept scales
    renormalised to sum to 1. Contrast-structure terms are clamped at a small positive value
    before the power so the gradient stays finite when a window is anti-correlated.
    """
    size = min(x.shape[-2:])
    if scales is None:
        scales = max(1, min(5, int(math.log2(max(size, 1) / 8)) + 1))
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=x.dtype, device=x.device)
    weights = weights / weights.sum()
    weight = _weight_like(x, weight)
    x01, y01 = (x + 1) / 2, (y + 1) / 2
    values = []
    for i in range(scales):
        win = _window_for(min(x01.shape[-2:]))
        s, cs = _ssim_maps(x01, y01, win)
        vw = _valid_weight(weight, win, s)
        term = s if i == scales - 1 else cs
        values.append(weighted_mean(term, vw).clamp_min(1e-4))
        if i < scales - 1:
            x01 = F.avg_pool2d(x01, 2)
            y01 = F.avg_pool2d(y01, 2)
            if weight is not None:
                weight = F.avg_pool2d(weight, 2)
    vals = torch.stack(values, dim=1)                        # [N, scales]
    return torch.prod(vals ** weights.unsqueeze(0), dim=1)


# ---------------------------------------------------------------------------------------------
# Backends


class MsSsimL1(nn.Module):
    """0.84·(1 − MS-SSIM) + 0.16·L1 (L1 on the [0, 1] scale)."""

    name = "ms-ssim+l1"
    default_threshold = 0.02

    def __init__(self, alpha: float = 0.84):
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        l1 = weighted_mean((x - y).abs() / 2, weight)
        return self.alpha * (1 - ms_ssim(x, y, weight)) + (1 - self.alpha) * l1


def _unit_normalize(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return f / (f.square().sum(dim=1, keepdim=True).sqrt() + eps)


class DiscriminatorFeatures(nn.Module):
    """LPIPS-style distance on the discriminator's per-block features.

    The discriminator is held by reference and evaluated with detached copies of its
    parameters (`torch.func.functional_call`), so gradients reach the images only.
    """

    name = "discriminator"
    # Uncalibrated for an arbitrary D: no early stop on this value unless the caller sets one.
    default_threshold = None

    def __init__(self, D: nn.Module, blocks: list[int] | None = None):
        super().__init__()
        self._D = [D]                      # a list: not registered as a sub-module, never copied
        self.blocks = blocks

    @property
    def D(self) -> nn.Module:
        return self._D[0]

    def _features(self, img: torch.Tensor) -> list[torch.Tensor]:
        D = self.D
        params = {k: v.detach() for k, v in D.named_parameters()}
        params.update({k: v for k, v in D.named_buffers()})
        res = D.cfg.resolution if hasattr(D, "cfg") else img.shape[-1]
        if img.shape[-1] != res:
            img = F.interpolate(img, size=(res, res), mode="bilinear", align_corners=False, antialias=True)
        # Batch of one per image so minibatch-stddev never mixes the two images.
        _, feats = torch.func.functional_call(D, params, (img,), {"return_features": True})
        return feats

    def forward(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        fx, fy = self._features(x), self._features(y)
        idx = range(len(fx)) if self.blocks is None else self.blocks
        total = 0.0
        for i in idx:
            d = (_unit_normalize(fx[i]) - _unit_normalize(fy[i])).square().sum(dim=1, keepdim=True)
            total = total + weighted_mean(d, _weight_like(d, weight))
        return total / len(list(idx))


class LpipsLoss(nn.Module):
    """Wrapper around the ``lpips`` package (weights must already be on disk)."""

    default_threshold = 0.06       # PTI's LPIPS early-stop threshold

    def __init__(self, net: str = "alex"):
        super().__init__()
        lpips = importlib.import_module("lpips")
        self.inner = lpips.LPIPS(net=net, spatial=True, verbose=False)
        self.inner.eval()
        for p in self.inner.parameters():
            p.requires_grad_(False)
        self.name = f"lpips-{net}"

    def forward(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        d = self.inner(x, y, normalize=False)           # [N, 1, H, W], inputs in [-1, 1]
        return weighted_mean(d, _weight_like(d, weight))


# torchvision's file names for the ImageNet backbones LPIPS builds on.
_BACKBONE_FILES = {"alex": "alexnet-owt-", "vgg": "vgg16-", "squeeze": "squeezenet1_1-"}


def lpips_available(net: str = "alex") -> tuple[bool, str]:
    """Whether LPIPS can be built on this machine without a download, and why not."""
    if os.environ.get("DRAGD_NO_LPIPS"):
        return False, "disabled by DRAGD_NO_LPIPS"
    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        return False, "the 'lpips' package is not installed"
    if importlib.util.find_spec("torchvision") is None:
        return False, "torchvision (needed by lpips) is not installed"
    linear = Path(spec.origin).parent / "weights" / "v0.1" / f"{net}.pth"
    if not linear.is_file():
        return False, f"lpips linear weights missing ({linear})"
    ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
    prefix = _BACKBONE_FILES.get(net)
    if prefix is None:
        return False, f"unknown lpips backbone {net!r}"
    if not ckpt_dir.is_dir() or not any(p.name.startswith(prefix) for p in ckpt_dir.iterdir()):
        return False, f"{net} backbone weights not in {ckpt_dir} (no download is attempted)"
    return True, "ok"


def resolve_backend(prefer: str = "auto", D: nn.Module | None = None, lpips_net: str = "alex") -> str:
    """The backend name `make_perceptual` would build, without building it."""
    if prefer not in ("auto",) + BACKENDS:
        raise ValueError(f"perceptual backend must be 'auto' or one of {BACKENDS}, got {prefer!r}")
    if prefer in ("auto", "lpips") and lpips_available(lpips_net)[0]:
        return "lpips"
    if prefer in ("auto", "lpips", "discriminator") and D is not None:
        return "discriminator"
    return "ms-ssim+l1"


def make_perceptual(prefer: str = "auto", D: nn.Module | None = None, lpips_net: str = "alex",
                    device: torch.device | str | None = None) -> nn.Module:
    """Build the best available perceptual backend (see the module docstring), logging why."""
    name = resolve_backend(prefer, D, lpips_net)
    reason = lpips_available(lpips_net)[1]
    if prefer == "lpips" and name != "lpips":
        log.warning("LPIPS requested but unavailable (%s); using %s", reason, name)
    if name == "lpips":
        try:
            module = LpipsLoss(lpips_net)
            if device is not None:
                module = module.to(device)
            log.info("perceptual term: LPIPS (%s)", lpips_net)
            return module
        except Exception as exc:          # weights present but unreadable, a broken torchvision, …
            reason = f"could not be built: {type(exc).__name__}: {exc}"
            log.warning("LPIPS %s; falling back", reason)
            name = "discriminator" if D is not None else "ms-ssim+l1"
    if name == "discriminator":
        log.info("perceptual term: discriminator features (LPIPS unavailable: %s)", reason)
        return DiscriminatorFeatures(D)
    log.info("perceptual term: MS-SSIM + L1 (LPIPS unavailable: %s; no discriminator)", reason)
    return MsSsimL1()
