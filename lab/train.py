"""StyleGAN2 trainer for dragd's own generator, fed by the procedural portrait renderer.

The recipe follows StyleGAN2-ADA's training loop (without ADA itself: the renderer draws a
fresh image for every sample, so the discriminator never sees the same image twice and has
nothing to over-fit):

* non-saturating logistic loss for G and D;
* lazy R1 on reals every `r1_interval` (16) minibatches as its own optimiser step, weighted
  `r1_gamma / 2 * r1_interval`;
* optional path-length regularisation every `pl_interval` (4) minibatches (weight 2 in the
  ADA configs; **off by default here**: it costs a double backward through G and the small
  models we train on CPU do not need it);
* style mixing with probability 0.9 (second z takes over from a random layer cutoff);
* Adam lr 0.0025, betas (0, 0.99), with the lazy-regularisation compensation
  lr·c, beta**c, c = interval / (interval + 1);
* EMA of G with a half-life in kimg and the ADA ramp-up (half-life ≤ 0.05 · images seen);
* w_avg tracked in G.mapping (update_w_avg) so truncation works on the exported model;
* bf16 autocast, TF32 and channels_last (D) on CUDA; plain fp32 on CPU;
* data streamed from the renderer on the training device, one fresh seed per image
  (`seed = data_seed + images seen so far`), so there are no dataset files and a resumed run
  continues the same stream.

CLI:
    python -m dragd.lab.train --preset placeholder --kimg 40 --out /tmp/run [--resume CKPT] [--device cuda]
    python -m dragd.lab.train export CKPT OUT.safetensors [--no-d] [--dtype float16|float32]
    python -m dragd.lab.train samples MODEL OUT.png [--psi 1.0 0.7]   # sample sheet of a model
    python -m dragd.lab.train presets        # every preset, with G/D size and exported size
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import importlib
import json
import math
import os
import platform
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from dragd.daemon.model.stylegan2 import (Discriminator, DiscriminatorConfig, Generator,
                                    GeneratorConfig)

DEFAULT_DATA = "dragd.lab.portraits:render_seeds"
CKPT_NAME = "checkpoint.pt"


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class TrainConfig:
    name: str
    resolution: int
    z_dim: int
    w_dim: int
    mapping_layers: int
    g_channel_base: int
    g_channel_max: int
    d_channel_base: int
    d_channel_max: int
    batch: int
    mbstd_group: int = 4
    g_lr: float = 0.0025
    d_lr: float = 0.0025
    beta1: float = 0.0
    beta2: float = 0.99
    r1_gamma: float = 0.05
    r1_interval: int = 16
    pl_weight: float = 0.0            # 0 = path-length regularisation off (ADA configs use 2)
    pl_interval: int = 4
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01
    style_mixing_prob: float = 0.9
    ema_kimg: float = 10.0            # EMA half-life in thousands of images
    ema_rampup: float | None = 0.05   # half-life ≤ ema_rampup · images seen; None = no ramp-up
    mapping_lr_multiplier: float = 0.01
    w_avg_beta: float = 0.995
    sample_grid: tuple[int, int] = (8, 4)   # columns, rows
    sample_every_kimg: float = 2.0
    ckpt_every_min: float = 5.0
    log_every: int = 20               # iterations
    placeholder: bool = False
    data: str = DEFAULT_DATA
    data_seed: int = 1_000_000        # the renderer's seeds start here (test seeds live below)
    seed: int = 0                     # weights, z and noise
    amp: bool = True                  # bf16 autocast, only ever applied on CUDA
    # "gan": the StyleGAN2 losses above. "distill": G learns render(latent_params(z)) from z
    # with a dense loss (no D, no style mixing; see `Trainer.distill_step`).
    objective: str = "gan"
    distill_scales: int = 3           # L1 at full, 1/2, 1/4 … resolution
    distill_grad_weight: float = 1.0  # L1 of the images' finite differences (edges)
    distill_adv_weight: float = 0.0   # weight of a GAN term beside the dense loss (0: no D)
    distill_adv_start_kimg: float = 0.0   # … switched on once this many images were seen

    def generator_config(self) -> GeneratorConfig:
        return GeneratorConfig(resolution=self.resolution, z_dim=self.z_dim, w_dim=self.w_dim,
                               channel_base=self.g_channel_base, channel_max=self.g_channel_max,
                               mapping_layers=self.mapping_layers,
                               mapping_lr_multiplier=self.mapping_lr_multiplier,
                               w_avg_beta=self.w_avg_beta)

    def discriminator_config(self) -> DiscriminatorConfig:
        return DiscriminatorConfig(resolution=self.resolution, channel_base=self.d_channel_base,
                                   channel_max=self.d_channel_max,
                                   mbstd_group_size=min(self.mbstd_group, self.batch))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["sample_grid"] = list(self.sample_grid)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        if "sample_grid" in d:
            d["sample_grid"] = tuple(d["sample_grid"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def r1_gamma_heuristic(resolution: int, batch: int) -> float:
    """StyleGAN2-ADA's 'auto' config: gamma = 0.0002 · res² / batch."""
    return 0.0002 * resolution ** 2 / batch


# Distillation: the mapping's lr is raised (it must learn the renderer's parameters from z),
# Adam with momentum as for any regression, no style mixing (each z has its own target).
_DISTILL = dict(z_dim=128, w_dim=256, mapping_layers=4, g_channel_base=4096, g_channel_max=128,
                d_channel_base=1024, d_channel_max=32, batch=8, objective="distill", g_lr=0.005,
                beta1=0.9, beta2=0.99, style_mixing_prob=0.0, mapping_lr_multiplier=1.0,
                ema_kimg=2.0, ema_rampup=0.1, sample_every_kimg=10.0, ckpt_every_min=5.0,
                log_every=50, data="dragd.lab.portraits:render_latents")

PRESETS: dict[str, dict] = {
    # Unit tests: a few seconds per dozen iterations on one CPU thread.
    "tiny": dict(resolution=32, z_dim=32, w_dim=32, mapping_layers=2,
                 g_channel_base=256, g_channel_max=32, d_channel_base=256, d_channel_max=32,
                 batch=4, r1_gamma=0.05, ema_kimg=0.01, sample_grid=(4, 2),
                 sample_every_kimg=0.5, ckpt_every_min=1.0, log_every=1),
    # The shipped default model: trainable on one CPU thread in about an hour.
    "placeholder": dict(resolution=64, z_dim=128, w_dim=128, mapping_layers=2,
                        g_channel_base=2048, g_channel_max=128, d_channel_base=1024,
                        d_channel_max=128, batch=8, r1_gamma=r1_gamma_heuristic(64, 8),
                        ema_kimg=2.0,
                        sample_every_kimg=2.0, ckpt_every_min=4.0, log_every=20,
                        placeholder=True),
    # The model to train on a GPU: 128 px, exported G ≤ 16 MB fp16, drag step ≤ 150 ms on CPU.
    # Channels [256, 256, 256, 128, 64, 32] for b4…b128: the largest of the candidates we
    # measured whose drag step stays ≤ 150 ms on one thread of this CPU (see the report /
    # benchmarks/bench_train.py); D mirrors G as in StyleGAN2-ADA.
    "default128": dict(resolution=128, z_dim=256, w_dim=256, mapping_layers=8,
                       g_channel_base=4096, g_channel_max=256, d_channel_base=4096,
                       d_channel_max=256, batch=32, r1_gamma=r1_gamma_heuristic(128, 32),
                       ema_kimg=10.0, sample_every_kimg=50.0, ckpt_every_min=10.0,
                       log_every=100),
    # The shipped default model, distilled on one CPU thread (see `Trainer.distill_step`) in
    # two stages: 64 px first (a quarter of the cost per step), then grown to 128 px.
    # The committed model is distill64 as it stands: the dense loss alone draws the layout of
    # each face within ~30 kimg but leaves eyes and mouths a blur; the GAN term from there on
    # drew them within 20 kimg more (docs/default_model_samples.png).
    "distill64": dict(resolution=64, **_DISTILL, distill_adv_weight=0.05,
                      distill_adv_start_kimg=30.12, r1_gamma=0.1),
    "distill128": dict(resolution=128, **_DISTILL, distill_adv_weight=0.05, r1_gamma=0.4),
}


def get_preset(name: str, **overrides) -> TrainConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return TrainConfig(name=name, **{**PRESETS[name], **overrides})


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def state_bytes(module: torch.nn.Module, bytes_per_float: int = 2) -> int:
    """Bytes of the persistent state dict at the given float width (safetensors ≈ this + header)."""
    return sum(t.numel() * (bytes_per_float if t.is_floating_point() else t.element_size())
               for t in module.state_dict().values())


# ---------------------------------------------------------------------------------------------
# Data


def resolve_data_fn(spec: str | Callable) -> Callable:
    """'package.module:function' → the function; callables pass through."""
    if callable(spec):
        return spec
    module_name, _, fn_name = spec.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, fn_name or "render_seeds")


def fetch_reals(data_fn: Callable, seeds: list[int], resolution: int,
                device: torch.device) -> torch.Tensor:
    return _checked_images(data_fn(seeds, resolution=resolution, device=device), len(seeds),
                           resolution, device)


def _checked_images(out, n: int, resolution: int, device: torch.device) -> torch.Tensor:
    """A data function's images (alone or first of a tuple) as fp32 on `device`, [n, 3, R, R]."""
    images = (out[0] if isinstance(out, (tuple, list)) else out).to(device=device, dtype=torch.float32)
    expected = (n, 3, resolution, resolution)
    if tuple(images.shape) != expected:
        raise ValueError(f"data function returned {tuple(images.shape)}, expected {expected}")
    return images


def normalize_latents(z: torch.Tensor) -> torch.Tensor:
    """z as the mapping network sees it (unit second moment per sample): the renderer's
    parameters must be a function of what G receives, not of the raw draw."""
    return z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()


def fetch_latent_reals(data_fn: Callable, z: torch.Tensor, resolution: int,
                       device: torch.device) -> torch.Tensor:
    return _checked_images(data_fn(z, resolution=resolution), z.shape[0], resolution, device)


def multiscale_l1(fake: torch.Tensor, real: torch.Tensor, scales: int) -> torch.Tensor:
    """Mean L1 at full resolution and `scales − 1` successive 2× average-pooled ones."""
    total = fake.new_zeros([])
    for i in range(scales):
        if i:
            fake, real = F.avg_pool2d(fake, 2), F.avg_pool2d(real, 2)
        total = total + (fake - real).abs().mean()
    return total


def gradient_l1(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean L1 between the images' horizontal and vertical neighbour differences."""
    def diffs(x):
        return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]
    (fx, fy), (rx, ry) = diffs(fake), diffs(real)
    return (fx - rx).abs().mean() + (fy - ry).abs().mean()


# ---------------------------------------------------------------------------------------------
# Trainer


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu ({name}, {torch.get_num_threads()} threads)"


class Trainer:
    """Holds G, G_ema, D, their optimisers and counters; `step()` runs one minibatch."""

    def __init__(self, cfg: TrainConfig, device: str | torch.device = "cpu",
                 data_fn: Callable | None = None):
        self.cfg = cfg
        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"
        self.use_amp = cfg.amp and self.is_cuda
        if self.is_cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        self.data_fn = resolve_data_fn(data_fn if data_fn is not None else cfg.data)

        torch.manual_seed(cfg.seed)
        self.G = Generator(cfg.generator_config()).train().to(self.device)
        self.D = Discriminator(cfg.discriminator_config()).train().to(self.device)
        if self.is_cuda:
            self.D = self.D.to(memory_format=torch.channels_last)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)

        # Lazy regularisation: compensate lr and betas so the effective step matches.
        def make_opt(params, lr, interval):
            c = interval / (interval + 1) if interval else 1.0
            return torch.optim.Adam(params, lr=lr * c, betas=(cfg.beta1 ** c, cfg.beta2 ** c), eps=1e-8)

        g_interval = cfg.pl_interval if cfg.pl_weight > 0 else None
        self.G_opt = make_opt(self.G.parameters(), cfg.g_lr, g_interval)
        self.D_opt = make_opt(self.D.parameters(), cfg.d_lr, cfg.r1_interval)
        self.pl_mean = torch.zeros([], device=self.device)

        self.step_idx = 0                # completed minibatches
        self.nimg = 0                    # real images shown to D
        self.wall_s = 0.0                # training wall time over all sessions
        self.commands: list[str] = []    # the command lines that produced this state
        self.rng = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self.cpu_rng = torch.Generator().manual_seed(cfg.seed + 2)   # host-side choices: no sync
        self.fixed_z = torch.randn([cfg.sample_grid[0] * cfg.sample_grid[1], cfg.z_dim],
                                   generator=torch.Generator().manual_seed(123)).to(self.device)

    # -- helpers ---------------------------------------------------------------------------

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                              enabled=self.use_amp)

    def randn(self, *shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.rng, device=self.device)

    def _images_for(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.is_cuda else x

    def map_with_mixing(self, n: int, update_w_avg: bool) -> torch.Tensor:
        """z → ws, with style mixing: from a random cutoff on, layers take a second z's w.

        The mapping always runs in fp32 (its lr multiplier of 0.01 makes it sensitive to
        rounding, and it is cheap)."""
        cfg = self.cfg
        with torch.autocast(device_type=self.device.type, enabled=False):
            ws = self.G.mapping(self.randn(n, cfg.z_dim), update_w_avg=update_w_avg)
            if cfg.style_mixing_prob > 0:
                num_ws = ws.shape[1]
                cutoff = int(torch.randint(1, num_ws, [], generator=self.cpu_rng))
                if float(torch.rand([], generator=self.cpu_rng)) >= cfg.style_mixing_prob:
                    cutoff = num_ws
                if cutoff < num_ws:
                    ws2 = self.G.mapping(self.randn(n, cfg.z_dim), update_w_avg=False)
                    ws = torch.cat([ws[:, :cutoff], ws2[:, cutoff:]], dim=1)
        return ws

    def generate(self, n: int, update_w_avg: bool) -> tuple[torch.Tensor, torch.Tensor]:
        ws = self.map_with_mixing(n, update_w_avg)
        img = self.G.synthesis(ws, noise_mode="random").image
        return img, ws

    def real_batch(self) -> torch.Tensor:
        b = self.cfg.batch
        seeds = list(range(self.cfg.data_seed + self.nimg, self.cfg.data_seed + self.nimg + b))
        with torch.no_grad():
            return fetch_reals(self.data_fn, seeds, self.cfg.resolution, self.device)

    def ema_beta(self) -> float:
        cfg = self.cfg
        ema_nimg = cfg.ema_kimg * 1000
        if cfg.ema_rampup is not None:
            ema_nimg = min(ema_nimg, self.nimg * cfg.ema_rampup)
        return 0.5 ** (cfg.batch / max(ema_nimg, 1e-8))

    @torch.no_grad()
    def update_ema(self) -> float:
        beta = self.ema_beta()
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)
        return beta

    # -- one iteration ---------------------------------------------------------------------

    def step(self) -> dict:
        """One minibatch: Gmain, [Greg], Dmain, [Dreg], EMA. Returns the stats of the step."""
        if self.cfg.objective == "distill":
            return self.distill_step()
        cfg, G, D = self.cfg, self.G, self.D
        b = cfg.batch
        stats: dict = {"step": self.step_idx}
        reals = self._images_for(self.real_batch())

        # Gmain: non-saturating loss, softplus(-D(G(z))).
        D.requires_grad_(False)
        G.requires_grad_(True)
        self.G_opt.zero_grad(set_to_none=True)
        with self.autocast():
            fake, _ = self.generate(b, update_w_avg=True)
            fake_logits = D(self._images_for(fake)).float()
        loss_g = F.softplus(-fake_logits).mean()
        loss_g.backward()
        self.G_opt.step()
        stats["loss_G"] = loss_g.detach()

        # Greg: path-length regularisation, lazily (optional).
        if cfg.pl_weight > 0 and self.step_idx % cfg.pl_interval == 0:
            self.G_opt.zero_grad(set_to_none=True)
            n = max(b // cfg.pl_batch_shrink, 1)
            img, ws = self.generate(n, update_w_avg=False)        # fp32: double backward
            pl_noise = torch.randn(img.shape, generator=self.rng, device=self.device) \
                / math.sqrt(img.shape[2] * img.shape[3])
            (grads,) = torch.autograd.grad((img * pl_noise).sum(), ws, create_graph=True)
            lengths = grads.square().sum(2).mean(1).sqrt()
            self.pl_mean.copy_(self.pl_mean.lerp(lengths.mean().detach(), cfg.pl_decay))
            penalty = (lengths - self.pl_mean).square()
            (penalty.mean() * cfg.pl_weight * cfg.pl_interval + img[:, 0, 0, 0].sum() * 0).backward()
            self.G_opt.step()
            stats["pl_penalty"] = penalty.mean().detach()

        with torch.no_grad(), self.autocast():
            fake, _ = self.generate(b, update_w_avg=True)
        self.discriminator_step(reals, fake, stats)
        return self._end_step(stats)

    def _end_step(self, stats: dict) -> dict:
        """Stats to floats (one host transfer), EMA, counters: the tail of every step."""
        keys = [k for k, v in stats.items() if isinstance(v, torch.Tensor)]
        stats.update(zip(keys, torch.stack([stats[k].float() for k in keys]).tolist()))
        stats["ema_beta"] = self.update_ema()
        self.nimg += self.cfg.batch
        self.step_idx += 1
        return stats

    def discriminator_step(self, reals: torch.Tensor, fake: torch.Tensor, stats: dict) -> None:
        """Dmain: softplus(D(G(z))) + softplus(−D(x)); then, lazily, Dreg: R1 = ‖∇_x D(x)‖² on
        reals as its own optimiser step (fp32). `fake` carries no graph."""
        cfg, D = self.cfg, self.D
        self.G.requires_grad_(False)
        D.requires_grad_(True)
        self.D_opt.zero_grad(set_to_none=True)
        with self.autocast():
            fake_logits = D(self._images_for(fake.detach())).float()
            real_logits = D(reals).float()
        loss_d = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
        loss_d.backward()
        self.D_opt.step()
        stats["loss_D"] = loss_d.detach()
        stats["D_real"] = real_logits.detach().mean()
        stats["D_fake"] = fake_logits.detach().mean()
        if cfg.r1_gamma > 0 and self.step_idx % cfg.r1_interval == 0:
            self.D_opt.zero_grad(set_to_none=True)
            x = reals.detach().requires_grad_(True)
            logits = D(x).float()
            (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
            penalty = grad.square().sum(dim=[1, 2, 3])
            (penalty.mean() * (cfg.r1_gamma / 2) * cfg.r1_interval).backward()
            self.D_opt.step()
            stats["r1_penalty"] = penalty.detach().mean()
        D.requires_grad_(False)

    def distill_step(self) -> dict:
        """One minibatch of distillation: G(z) regresses onto the renderer's portrait for the
        same z (`data` maps normalised latents to images), so every sample has its own
        target and nothing can collapse. Loss: L1 at `distill_scales` resolutions plus L1 of
        horizontal and vertical differences, which keeps edges from averaging into a blur.
        With `distill_adv_weight` > 0 a discriminator adds the non-saturating GAN loss, as
        pix2pix adds one to its L1: the dense loss decides what is drawn, D how sharply."""
        cfg, G = self.cfg, self.G
        z = self.randn(cfg.batch, cfg.z_dim)
        with torch.no_grad():
            target = fetch_latent_reals(self.data_fn, normalize_latents(z), cfg.resolution, self.device)
        adversarial = cfg.distill_adv_weight > 0 and self.nimg >= cfg.distill_adv_start_kimg * 1000
        self.D.requires_grad_(False)
        G.requires_grad_(True)
        self.G_opt.zero_grad(set_to_none=True)
        with self.autocast():
            fake = G.synthesis(G.mapping(z, update_w_avg=True), noise_mode="const").image.float()
        loss_l1 = multiscale_l1(fake, target, cfg.distill_scales)
        loss_grad = gradient_l1(fake, target)
        loss = loss_l1 + cfg.distill_grad_weight * loss_grad
        stats = {"step": self.step_idx, "l1": loss_l1.detach(), "grad_l1": loss_grad.detach()}
        if adversarial:
            with self.autocast():
                loss_adv = F.softplus(-self.D(self._images_for(fake)).float()).mean()
            loss = loss + cfg.distill_adv_weight * loss_adv
            stats["adv"] = loss_adv.detach()
        loss.backward()
        self.G_opt.step()
        stats["loss_G"] = loss.detach()
        if adversarial:
            self.discriminator_step(self._images_for(target), fake, stats)
        return self._end_step(stats)

    # -- samples ---------------------------------------------------------------------------

    @torch.no_grad()
    def sample_grid(self, psi: float = 1.0, G: Generator | None = None) -> torch.Tensor:
        G = self.G_ema if G is None else G
        imgs = []
        for z in self.fixed_z.split(8):
            ws = G.mapping(z, truncation_psi=psi)
            imgs.append(G.synthesis(ws, noise_mode="const").image.float())
        return torch.cat(imgs)

    def save_samples(self, path: Path, psi: float = 1.0) -> None:
        save_image_grid(self.sample_grid(psi), path, self.cfg.sample_grid)

    # -- checkpoint ------------------------------------------------------------------------

    def state_dict(self) -> dict:
        rng = {"torch_cpu": torch.get_rng_state(), "trainer": self.rng.get_state(),
               "trainer_cpu": self.cpu_rng.get_state()}
        if self.is_cuda:
            rng["torch_cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": "dragd-train", "format_version": 1,
            "train_config": self.cfg.to_dict(),
            "G": self.G.state_dict(), "G_ema": self.G_ema.state_dict(), "D": self.D.state_dict(),
            "G_opt": self.G_opt.state_dict(), "D_opt": self.D_opt.state_dict(),
            "pl_mean": self.pl_mean.detach().cpu(),
            "step": self.step_idx, "nimg": self.nimg, "wall_s": self.wall_s,
            "device_name": _device_name(self.device), "commands": list(self.commands),
            "rng": rng,
        }

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.D.load_state_dict(state["D"])
        self.G_opt.load_state_dict(state["G_opt"])
        self.D_opt.load_state_dict(state["D_opt"])
        self.pl_mean.copy_(state["pl_mean"])
        self.step_idx, self.nimg = int(state["step"]), int(state["nimg"])
        self.wall_s = float(state["wall_s"])
        self.commands = list(state.get("commands", []))
        rng = state.get("rng", {})
        if "torch_cpu" in rng:
            torch.set_rng_state(rng["torch_cpu"])
        if "trainer" in rng and rng["trainer"].numel() == self.rng.get_state().numel():
            self.rng.set_state(rng["trainer"])
        if "trainer_cpu" in rng:
            self.cpu_rng.set_state(rng["trainer_cpu"])
        if "torch_cuda" in rng and self.is_cuda:
            torch.cuda.set_rng_state(rng["torch_cuda"], self.device)

    @torch.no_grad()
    def grow_from(self, path: str | Path) -> tuple[int, int]:
        """Start G and G_ema from a lower-resolution run of the same architecture (progressive
        growing): its mapping and blocks b4…b(R/2) are copied, the new blocks keep their
        initialisation. Steps are what a regression needs, and a 64-px step costs a quarter
        of a 128-px one, so most of them are best taken small. Returns (copied, new) tensors."""
        state = load_training_checkpoint(path)
        src = TrainConfig.from_dict(state["train_config"])
        same = ("z_dim", "w_dim", "mapping_layers", "g_channel_base", "g_channel_max")
        if any(getattr(src, f) != getattr(self.cfg, f) for f in same) or src.resolution >= self.cfg.resolution:
            raise ValueError(f"{path}: can grow only from a lower resolution with the same {', '.join(same)}; "
                             f"it has {src.resolution} px, " + ", ".join(f"{f}={getattr(src, f)}" for f in same))
        for name in ("G", "G_ema"):
            own = getattr(self, name).state_dict()
            shared = [k for k, v in state[name].items() if k in own and own[k].shape == v.shape]
            for key in shared:
                own[key].copy_(state[name][key])
        return len(shared), len(own) - len(shared)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu",
                        data_fn: Callable | None = None, **overrides) -> "Trainer":
        state = load_training_checkpoint(path)
        cfg = TrainConfig.from_dict(state["train_config"])
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        trainer = cls(cfg, device=device, data_fn=data_fn)
        trainer.load_state_dict(state)
        return trainer


def load_training_checkpoint(path: str | Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != "dragd-train":
        raise ValueError(f"{path} is not a dragd training checkpoint")
    return state


def save_image_grid(images: torch.Tensor, path: str | Path, grid: tuple[int, int]) -> None:
    """images [N, 3, H, W] in [-1, 1] → PNG with `grid` = (columns, rows)."""
    from PIL import Image

    cols, rows = grid
    n, c, h, w = images.shape
    images = images[: cols * rows]
    if images.shape[0] < cols * rows:
        pad = images.new_full([cols * rows - images.shape[0], c, h, w], -1.0)
        images = torch.cat([images, pad])
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x = x.reshape(rows, cols, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, c)
    Image.fromarray(x.numpy()).save(path)


# ---------------------------------------------------------------------------------------------
# Training run


def train(preset: str | TrainConfig = "tiny", kimg: float = 1.0, out: str | Path = "out/train",
          resume: str | Path | None = None, device: str = "cpu", data_fn: Callable | None = None,
          max_steps: int | None = None, minutes: float | None = None, overrides: dict | None = None,
          command: str | None = None, log: Callable[[str], None] = print,
          grow_from: str | Path | None = None) -> Trainer:
    """Train until `kimg` thousand reals were shown (in total, over resumes), `max_steps` more
    minibatches ran, or `minutes` of wall time passed. Checkpoints to OUT/checkpoint.pt
    periodically and at the end; SIGINT/SIGTERM stop cleanly with a checkpoint."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = dict(overrides or {})
    if resume:
        trainer = Trainer.from_checkpoint(resume, device=device, data_fn=data_fn, **overrides)
        log(f"resumed from {resume} at step {trainer.step_idx}, {trainer.nimg / 1000:.2f} kimg")
    else:
        cfg = preset if isinstance(preset, TrainConfig) else get_preset(preset, **overrides)
        if isinstance(preset, TrainConfig) and overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        trainer = Trainer(cfg, device=device, data_fn=data_fn)
        if grow_from:
            copied, fresh = trainer.grow_from(grow_from)
            log(f"grown from {grow_from}: {copied} tensors copied, {fresh} new (the higher-resolution blocks)")
    cfg = trainer.cfg
    trainer.commands.append(command or " ".join(shlex.quote(a) for a in sys.argv))
    log(f"preset={cfg.name} res={cfg.resolution} batch={cfg.batch} device={_device_name(trainer.device)} "
        f"amp={trainer.use_amp} G={count_params(trainer.G) / 1e6:.2f}M D={count_params(trainer.D) / 1e6:.2f}M "
        f"params; G fp16 ≈ {state_bytes(trainer.G) / 2**20:.2f} MiB")
    (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    if trainer.step_idx == 0 and cfg.objective == "distill":
        save_image_grid(fetch_latent_reals(trainer.data_fn, normalize_latents(trainer.fixed_z),
                                           cfg.resolution, trainer.device), out / "reals.png",
                        cfg.sample_grid)
    elif trainer.step_idx == 0:
        save_image_grid(trainer.real_batch()[: cfg.sample_grid[0] * cfg.sample_grid[1]]
                        if cfg.batch >= cfg.sample_grid[0] * cfg.sample_grid[1]
                        else fetch_reals(trainer.data_fn, list(range(cfg.sample_grid[0] * cfg.sample_grid[1])),
                                         cfg.resolution, trainer.device),
                        out / "reals.png", cfg.sample_grid)

    stop = {"flag": False}

    def on_signal(signum, frame):
        stop["flag"] = True
        log(f"signal {signum}: stopping after this step")

    old_handlers = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old_handlers[sig] = signal.signal(sig, on_signal)
        except ValueError:          # not in the main thread
            pass

    stats_file = open(out / "stats.jsonl", "a")
    session_t0 = time.time()
    wall_at_start = trainer.wall_s
    last_ckpt = time.time()
    next_sample_nimg = (trainer.nimg // int(cfg.sample_every_kimg * 1000) + 1) * int(cfg.sample_every_kimg * 1000)
    steps_done = 0
    tick_t0, tick_nimg = time.time(), trainer.nimg
    try:
        while trainer.nimg < kimg * 1000 and not stop["flag"]:
            if max_steps is not None and steps_done >= max_steps:
                break
            if minutes is not None and time.time() - session_t0 >= minutes * 60:
                break
            stats = trainer.step()
            steps_done += 1
            trainer.wall_s = wall_at_start + (time.time() - session_t0)
            stats.update(kimg=trainer.nimg / 1000, wall_s=round(trainer.wall_s, 1))
            stats_file.write(json.dumps(stats) + "\n")
            if not all(math.isfinite(v) for k, v in stats.items() if isinstance(v, float)):
                log(f"non-finite loss at step {stats['step']}: {stats}")
            if trainer.step_idx % cfg.log_every == 0:
                dt = time.time() - tick_t0
                kimg_s = (trainer.nimg - tick_nimg) / 1000 / max(dt, 1e-9)
                tick_t0, tick_nimg = time.time(), trainer.nimg
                stats_file.flush()
                extra = "".join(f" {k}={stats[k]:.4f}" for k in ("r1_penalty", "pl_penalty") if k in stats)
                losses = " ".join(f"{k} {stats[k]:.4f}" for k in
                                  ("loss_G", "loss_D", "D_real", "D_fake", "l1", "grad_l1", "adv") if k in stats)
                log(f"step {trainer.step_idx} kimg {trainer.nimg / 1000:.2f} {kimg_s * 3600:.1f} kimg/h "
                    f"{losses}{extra} wall {trainer.wall_s / 60:.1f} min")
            if trainer.nimg >= next_sample_nimg:
                next_sample_nimg += int(cfg.sample_every_kimg * 1000)
                trainer.save_samples(out / f"samples-{trainer.nimg // 1000:06d}kimg.png")
                trainer.save_samples(out / "samples-latest.png")
            if time.time() - last_ckpt >= cfg.ckpt_every_min * 60:
                trainer.save(out / CKPT_NAME)
                last_ckpt = time.time()
                log(f"checkpoint {out / CKPT_NAME} (step {trainer.step_idx})")
    finally:
        stats_file.close()
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    trainer.save(out / CKPT_NAME)
    trainer.save_samples(out / "samples-latest.png")
    log(f"done: step {trainer.step_idx}, {trainer.nimg / 1000:.2f} kimg, wall {trainer.wall_s / 60:.1f} min; "
        f"checkpoint {out / CKPT_NAME}")
    return trainer


# ---------------------------------------------------------------------------------------------
# Export


def export(ckpt: str | Path, out_path: str | Path, with_d: bool = True,
           dtype: torch.dtype = torch.float16, command: str | None = None, note: str | None = None,
           drag_lr: float | None = None, placeholder: bool | None = None,
           log: Callable[[str], None] = print) -> dict:
    """Training checkpoint → native dragd safetensors (G_ema [+ D]) with the training facts.
    `placeholder` overrides the preset's flag (a model that misses its targets stays one)."""
    from dragd.daemon.model.checkpoints import save_native

    state = load_training_checkpoint(ckpt)
    cfg = TrainConfig.from_dict(state["train_config"])
    G = Generator(cfg.generator_config()).eval()
    G.load_state_dict(state["G_ema"])
    D = None
    if with_d:
        D = Discriminator(cfg.discriminator_config()).eval()
        D.load_state_dict(state["D"])
    info = {
        "preset": cfg.name,
        "placeholder": "true" if (cfg.placeholder if placeholder is None else placeholder) else "false",
        "kimg": f"{state['nimg'] / 1000:.3f}",
        "steps": str(state["step"]),
        "batch": str(cfg.batch),
        "wall_time_s": f"{state['wall_s']:.0f}",
        "device_name": state.get("device_name", "unknown"),
        "training_commands": json.dumps(state.get("commands", [])),
        "export_command": command or " ".join(shlex.quote(a) for a in sys.argv),
        "train_config": json.dumps(cfg.to_dict(), sort_keys=True),
        "data": cfg.data,
        "trainer": ("dragd.lab.train (distillation: G(z) regresses onto render(latent_params(z)), "
                    "multi-scale and gradient L1, EMA)" if cfg.objective == "distill" else
                    "dragd.lab.train (StyleGAN2 recipe: NS logistic loss, lazy R1, EMA, style mixing)"),
        "torch_version": torch.__version__,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if note:
        info["notes"] = note
    if drag_lr is not None:
        info["drag_lr"] = repr(float(drag_lr))   # the daemon's default Adam lr for this model
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_native(out_path, G, D, info=info, dtype=dtype)
    size = out_path.stat().st_size
    log(f"exported {out_path}: {size / 2**20:.2f} MiB ({size} bytes), G_ema{' + D' if D is not None else ''}, "
        f"{str(dtype).removeprefix('torch.')}, {info['kimg']} kimg, {info['wall_time_s']} s on {info['device_name']}")
    return {"path": str(out_path), "bytes": size, "info": info}


# ---------------------------------------------------------------------------------------------
# Sample sheet of a finished model


@torch.no_grad()
def sample_sheet(model_path: str | Path, out_png: str | Path, n: int = 16, columns: int = 8,
                 psis: tuple[float, ...] = (1.0, 0.7), seed0: int = 0) -> None:
    """Seeds seed0…seed0+n−1 (z from torch.Generator().manual_seed(seed)), one block of rows
    per truncation psi, const noise. `model_path`: anything load_checkpoint reads, or a
    training checkpoint (then G_ema)."""
    path = Path(model_path)
    if path.suffix == ".pt":
        state = load_training_checkpoint(path)
        G = Generator(TrainConfig.from_dict(state["train_config"]).generator_config()).eval()
        G.load_state_dict(state["G_ema"])
    else:
        from dragd.daemon.model.checkpoints import load_checkpoint

        G = load_checkpoint(path).G.float().eval()
    z = torch.stack([torch.randn(G.cfg.z_dim, generator=torch.Generator().manual_seed(seed0 + i))
                     for i in range(n)])
    images = [G.synthesis(G.mapping(z, truncation_psi=psi), noise_mode="const").image for psi in psis]
    rows = math.ceil(n / columns) * len(psis)
    save_image_grid(torch.cat(images), out_png, (columns, rows))


# ---------------------------------------------------------------------------------------------
# CLI


def _parse_overrides(items: list[str]) -> dict:
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"--set: unknown field {key!r}; known: {sorted(fields)}")
        out[key] = json.loads(value) if value[:1] in "0123456789-[{tfn." else value
        if key == "sample_grid":
            out[key] = tuple(out[key])
    return out


def print_presets() -> None:
    for name in PRESETS:
        cfg = get_preset(name)
        torch.manual_seed(0)
        G, D = Generator(cfg.generator_config()), Discriminator(cfg.discriminator_config())
        chans = [cfg.generator_config().channels(2 ** i) for i in range(2, int(math.log2(cfg.resolution)) + 1)]
        print(f"{name}: {cfg.resolution}px z/w {cfg.z_dim}/{cfg.w_dim} map {cfg.mapping_layers} "
              f"G channels {chans} batch {cfg.batch} r1_gamma {cfg.r1_gamma:g} ema_kimg {cfg.ema_kimg:g}\n"
              f"    G {count_params(G) / 1e6:.3f}M params, {state_bytes(G) / 2**20:.2f} MiB fp16; "
              f"D {count_params(D) / 1e6:.3f}M params, {state_bytes(D) / 2**20:.2f} MiB fp16; "
              f"G+D {(state_bytes(G) + state_bytes(D)) / 2**20:.2f} MiB fp16")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "python -m dragd.lab.train " + " ".join(shlex.quote(a) for a in argv)
    if argv[:1] == ["export"]:
        ap = argparse.ArgumentParser(prog="python -m dragd.lab.train export",
                                     description="training checkpoint → native fp16 safetensors")
        ap.add_argument("ckpt")
        ap.add_argument("out")
        ap.add_argument("--no-d", action="store_true", help="export G_ema only")
        ap.add_argument("--dtype", choices=["float16", "float32"], default="float16")
        ap.add_argument("--note", help="free text stored as metadata 'notes' (e.g. how the run went)")
        ap.add_argument("--drag-lr", type=float, help="default drag learning rate for this model, stored as "
                        "metadata 'drag_lr' (the paper's 2e-3 suits 512-px FFHQ; small models want more)")
        ap.add_argument("--placeholder", action="store_true",
                        help="mark the model a placeholder whatever its preset says (metadata 'placeholder')")
        args = ap.parse_args(argv[1:])
        export(args.ckpt, args.out, with_d=not args.no_d, dtype=getattr(torch, args.dtype), command=command,
               note=args.note, drag_lr=args.drag_lr, placeholder=True if args.placeholder else None)
        return
    if argv[:1] == ["samples"]:
        ap = argparse.ArgumentParser(prog="python -m dragd.lab.train samples",
                                     description="sample sheet (PNG) of a model: rows per truncation psi")
        ap.add_argument("model", help="exported .safetensors (or any checkpoint dragd loads) or checkpoint.pt")
        ap.add_argument("out")
        ap.add_argument("--n", type=int, default=16)
        ap.add_argument("--columns", type=int, default=8)
        ap.add_argument("--psi", type=float, nargs="+", default=[1.0, 0.7])
        args = ap.parse_args(argv[1:])
        sample_sheet(args.model, args.out, n=args.n, columns=args.columns, psis=tuple(args.psi))
        return
    if argv[:1] == ["presets"]:
        print_presets()
        return
    ap = argparse.ArgumentParser(prog="python -m dragd.lab.train", description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--kimg", type=float, required=True, help="total length in thousands of real images")
    ap.add_argument("--out", required=True, help="run folder: checkpoint.pt, samples, stats.jsonl")
    ap.add_argument("--resume", help="training checkpoint to continue from (its preset wins)")
    ap.add_argument("--grow-from", help="a lower-resolution training checkpoint of the same architecture "
                    "to start G from (its blocks are copied; the new ones start fresh)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--minutes", type=float, help="stop (with a checkpoint) after this much wall time")
    ap.add_argument("--max-steps", type=int)
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="override preset fields, e.g. --set r1_gamma=0.2 batch=8")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train(args.preset, kimg=args.kimg, out=args.out, resume=args.resume, device=args.device,
          max_steps=args.max_steps, minutes=args.minutes, overrides=_parse_overrides(args.set),
          command=command, log=lambda s: print(s, flush=True), grow_from=args.grow_from)


if __name__ == "__main__":
    main()
