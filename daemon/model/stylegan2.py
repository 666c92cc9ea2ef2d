"""StyleGAN2 generator and discriminator in plain PyTorch.

Parameter and buffer names mirror NVIDIA's StyleGAN2-ADA `training/networks.py`
(`mapping.fc0.weight`, `synthesis.b64.conv0.affine.bias`, …) so that a state dict
from a real checkpoint loads with `strict=True`; the math and its order follow the
same reference so a real checkpoint reproduces NVIDIA's images.

What is added over the reference: the synthesis can stop after block k and return
only the feature maps (the drag loop needs block 6 and nothing after it); it takes W+ split
in two parts (the drag loop optimises only the first rows); `Generator.feature_windows`
computes block k's features only in small windows (the drag loop reads a few pixels around
each handle; the machinery is in windows.py); and the whole network always runs in fp32
(fp16-trained layers are numerically fine in fp32).
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field

import torch
from torch import nn

from . import windows
from .ops import (LRELU_GAIN, bias_act, conv2d_resample, modulated_conv2d,
                  normalize_2nd_moment, setup_filter, upsample2d)

NOISE_MODES = ("const", "random", "none")


def _check_fields(cfg, rules: dict) -> None:
    """Every field of `cfg` of the type and in the range `rules` names: checkpoints come from
    the internet, and a config such as z_dim=0 or channel_max=-1 would otherwise fail deep in
    torch (ZeroDivisionError, RuntimeError) instead of with a sentence naming the field."""
    for name, (kind, lo, hi) in rules.items():
        v = getattr(cfg, name)
        if v is None and kind in ("int?", "float?"):
            continue
        if kind.startswith("int"):
            ok = isinstance(v, numbers.Integral) and not isinstance(v, bool)
        else:
            ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
        if not ok:
            raise ValueError(f"{name} must be {'an integer' if kind.startswith('int') else 'a number'}, "
                             f"got {v!r:.40}")
        if not lo <= v <= hi:
            raise ValueError(f"{name} must be in {lo}…{hi}, got {v!r:.40}")
        # numpy scalars (as pickles hold them) become plain numbers, so to_json() can store them
        object.__setattr__(cfg, name, int(v) if kind.startswith("int") else float(v))


_SIZE = 1 << 14        # far above any published StyleGAN2 width


def _config_from_json(cls, text: str, what: str):
    """A config dataclass from its to_json() text; ValueError names fields it does not know."""
    data = json.loads(text)
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what} config fields: {sorted(unknown)}")
    return cls(**data)


@dataclass(frozen=True)
class GeneratorConfig:
    """Everything needed to rebuild a generator; stored in checkpoint metadata."""
    resolution: int = 512
    z_dim: int = 512
    w_dim: int = 512
    img_channels: int = 3
    channel_base: int = 32768
    channel_max: int = 512
    mapping_layers: int = 8
    mapping_lr_multiplier: float = 0.01
    layer_features: int | None = None      # mapping hidden width; None → w_dim
    conv_clamp: float | None = None
    num_fp16_res: int = 0                  # recorded only: we always compute in fp32
    w_avg_beta: float = 0.995

    def __post_init__(self):
        _check_fields(self, {"resolution": ("int", 0, 1 << 30), "z_dim": ("int", 1, _SIZE), "w_dim": ("int", 1, _SIZE),
                             "img_channels": ("int", 1, 4), "channel_base": ("int", 1, 1 << 24),
                             "channel_max": ("int", 1, _SIZE), "mapping_layers": ("int", 1, 32),
                             "mapping_lr_multiplier": ("float", 1e-6, 1e3), "layer_features": ("int?", 1, _SIZE),
                             "conv_clamp": ("float?", 1e-6, 1e6), "num_fp16_res": ("int", 0, 16),
                             "w_avg_beta": ("float", 0.0, 1.0)})
        if not 8 <= self.resolution <= 1024 or self.resolution & (self.resolution - 1):
            raise ValueError(f"resolution must be a power of two in 8…1024, got {self.resolution}")
        if self.img_channels not in (1, 3, 4):
            raise ValueError(f"img_channels must be 1, 3 or 4, got {self.img_channels}")
        if self.channel_base < self.resolution:
            raise ValueError(f"channel_base {self.channel_base} leaves the {self.resolution}-px block without "
                             "channels (it must be at least the resolution)")

    @property
    def num_blocks(self) -> int:
        return int(math.log2(self.resolution)) - 1          # b4 … b{res}

    @property
    def num_ws(self) -> int:
        return 2 * self.num_blocks          # b4: one conv; later blocks: two; plus the last toRGB

    def channels(self, res: int) -> int:
        return min(self.channel_base // res, self.channel_max)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "GeneratorConfig":
        return _config_from_json(cls, text, "generator")


class FullyConnectedLayer(nn.Module):
    """Equalised-learning-rate linear layer (weights stored divided by lr_multiplier)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 activation: str = "linear", lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_gain
        b = self.bias
        if b is not None and self.bias_gain != 1:
            b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        x = x.matmul(w.t())
        gain = LRELU_GAIN if self.activation == "lrelu" else 1.0
        return bias_act(x, b, act=self.activation, gain=gain)


class MappingNetwork(nn.Module):
    """z [N, z_dim] → ws [N, num_ws, w_dim], tracking the running mean w_avg."""

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, num_layers: int = 8,
                 layer_features: int | None = None, lr_multiplier: float = 0.01,
                 w_avg_beta: float = 0.995):
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws = z_dim, w_dim, num_ws
        self.num_layers, self.w_avg_beta = num_layers, w_avg_beta
        hidden = w_dim if layer_features is None else layer_features
        features = [z_dim] + [hidden] * (num_layers - 1) + [w_dim]
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation="lrelu",
                                        lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_w_avg: bool = False) -> torch.Tensor:
        assert z.ndim == 2 and z.shape[1] == self.z_dim, f"z must be [N, {self.z_dim}], got {tuple(z.shape)}"
        x = normalize_2nd_moment(z.to(torch.float32))
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_w_avg:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3×3 conv (+ optional 2× up), noise, bias, lrelu."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 up: int = 1, conv_clamp: float | None = None, kernel_size: int = 3):
        super().__init__()
        self.resolution, self.up, self.conv_clamp = resolution, up, conv_clamp
        self.padding = kernel_size // 2
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.register_buffer("noise_const", torch.randn([resolution, resolution]))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("resample_filter", setup_filter(), persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const",
                noise: torch.Tensor | None = None) -> torch.Tensor:
        """x: [N, I, H, W], w: [N, w_dim] → [N, O, H·up, W·up].

        noise: unit noise broadcastable to the output, used instead of noise_mode's
        (windows.py passes crops of noise_const)."""
        styles = self.affine(w)
        if noise is None and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
        elif noise is None and noise_mode == "const":
            noise = self.noise_const
        if noise is not None:
            noise = noise * self.noise_strength
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1))
        return bias_act(x, self.bias, act="lrelu", gain=LRELU_GAIN, clamp=self.conv_clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1×1 conv to image channels, no demodulation."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 1, 1]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution stage of the skip architecture: [const | up-conv], conv, toRGB."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 img_channels: int, conv_clamp: float | None = None):
        super().__init__()
        self.in_channels, self.resolution = in_channels, resolution
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2,
                                        conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.register_buffer("resample_filter", setup_filter(), persistent=False)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                noise_mode: str = "const", render: bool = True):
        """x: [N, C_in, res/2, res/2] (None for b4), img: [N, img_channels, res/2, res/2] or None,
        ws: [N, num_conv + 1, w_dim] (the last row feeds toRGB). Returns (x [N, C, res, res], img)."""
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = self.conv1(x, ws[:, 0], noise_mode)
        else:
            x = self.conv0(x, ws[:, 0], noise_mode)
            x = self.conv1(x, ws[:, 1], noise_mode)
        if render:
            if img is not None:
                img = upsample2d(img, self.resample_filter)
            y = self.torgb(x, ws[:, self.num_conv])
            img = y if img is None else img + y
        return x, img


@dataclass
class SynthesisOutput:
    image: torch.Tensor | None            # [N, C, res, res] in ≈[-1, 1], None if not rendered
    features: list[torch.Tensor] = field(default_factory=list)   # block k → [N, C_k, 2^(k+1), 2^(k+1)]


class SynthesisNetwork(nn.Module):
    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        self.block_resolutions = [2 ** (k + 1) for k in range(1, cfg.num_blocks + 1)]   # 4, 8, …, res
        for res in self.block_resolutions:
            in_ch = cfg.channels(res // 2) if res > 4 else 0
            block = SynthesisBlock(in_ch, cfg.channels(res), cfg.w_dim, res, cfg.img_channels,
                                   conv_clamp=cfg.conv_clamp)
            setattr(self, f"b{res}", block)
        self.num_ws = cfg.num_ws

    def block_ws(self, ws) -> list[torch.Tensor]:
        """W+ [N, num_ws, w_dim] → each block's rows [N, num_conv + 1, w_dim] in fp32 (consecutive
        blocks share one row: toRGB's and the next conv0's).

        ws may be split, (head [N, n, w_dim], tail [N, num_ws − n, w_dim]), taken as their
        concatenation: each block reads its rows from whichever part holds them, so autograd
        skips the style gradients of layers fed only by a frozen tail (the drag loop optimises
        a head of 6 rows)."""
        head, tail = ws if isinstance(ws, tuple) else (ws, ws[:, :0])
        head, tail = head.to(torch.float32), tail.to(torch.float32)
        assert head.ndim == 3 and tail.ndim == 3 and head.shape[1] + tail.shape[1] == self.num_ws \
            and head.shape[2] == tail.shape[2] == self.cfg.w_dim, \
            f"ws must be [N, {self.num_ws}, {self.cfg.w_dim}], got {tuple(head.shape)} + {tuple(tail.shape)}"
        out, w_idx = [], 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            out.append(_rows(head, tail, w_idx, block.num_conv + 1))
            w_idx += block.num_conv
        return out

    def forward(self, ws, noise_mode: str = "const",
                stop_after_block: int | None = None, render: bool = True) -> SynthesisOutput:
        """ws: W+ [N, num_ws, w_dim] or split (head, tail), see `block_ws`. stop_after_block k
        (1-based: 1 = b4) skips everything later.

        The image is rendered only when the last block runs and render=True; when stopping
        early no toRGB layer runs at all.
        """
        n_blocks = self.cfg.num_blocks
        block_ws = self.block_ws(ws)
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        last = n_blocks if stop_after_block is None else stop_after_block
        if not 1 <= last <= n_blocks:
            raise ValueError(f"stop_after_block must be in 1…{n_blocks}, got {stop_after_block}")
        render = render and last == n_blocks
        x = img = None
        features = []
        for res, w in zip(self.block_resolutions[:last], block_ws):
            x, img = getattr(self, f"b{res}")(x, img, w, noise_mode=noise_mode, render=render)
            features.append(x)
        return SynthesisOutput(image=img, features=features)


def _rows(head: torch.Tensor, tail: torch.Tensor, start: int, count: int) -> torch.Tensor:
    """Rows start…start+count of cat([head, tail], 1) without building the concatenation."""
    n = head.shape[1]
    if start + count <= n:
        return head.narrow(1, start, count)
    if start >= n:
        return tail.narrow(1, start - n, count)
    return torch.cat([head.narrow(1, start, n - start), tail.narrow(1, 0, start + count - n)], dim=1)


class Generator(nn.Module):
    """z or w or W+ → image and per-block features.

    Latents accepted by `synthesize`: w [N, w_dim] (broadcast to every layer) or W+
    [N, num_ws, w_dim]. `forward(z)` maps then synthesises, like NVIDIA's G(z, c).
    """

    supports_split_latent = True      # synthesize() accepts (head, tail); see SynthesisNetwork
    supports_feature_windows = True   # feature_windows(); see dragd.daemon.edit.drag

    def __init__(self, cfg: GeneratorConfig | None = None, **overrides):
        super().__init__()
        cfg = cfg or GeneratorConfig()
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        self.cfg = cfg
        self.synthesis = SynthesisNetwork(cfg)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(cfg.z_dim, cfg.w_dim, self.num_ws, cfg.mapping_layers,
                                      cfg.layer_features, cfg.mapping_lr_multiplier, cfg.w_avg_beta)

    @property
    def resolution(self) -> int:
        return self.cfg.resolution

    @property
    def w_dim(self) -> int:
        return self.cfg.w_dim

    @property
    def num_blocks(self) -> int:
        return self.cfg.num_blocks

    def block_resolution(self, k: int) -> int:
        """Spatial size of the features of block k (1-based)."""
        return self.synthesis.block_resolutions[k - 1]

    def to_wplus(self, w: torch.Tensor) -> torch.Tensor:
        if w.ndim == 2:
            assert w.shape[1] == self.w_dim, f"w must be [N, {self.w_dim}], got {tuple(w.shape)}"
            return w.unsqueeze(1).repeat([1, self.num_ws, 1])
        assert w.ndim == 3 and w.shape[1:] == (self.num_ws, self.w_dim), \
            f"W+ must be [N, {self.num_ws}, {self.w_dim}], got {tuple(w.shape)}"
        return w

    def synthesize(self, w, noise_mode: str = "const",
                   stop_after_block: int | None = None, render: bool = True) -> SynthesisOutput:
        """w: [N, w_dim], W+ [N, num_ws, w_dim] or a split W+ (head, tail)."""
        ws = w if isinstance(w, tuple) else self.to_wplus(w)
        return self.synthesis(ws, noise_mode=noise_mode,
                              stop_after_block=stop_after_block, render=render)

    def feature_windows(self, w, block: int, centres: list[tuple[int, int]], half: int,
                        noise_mode: str = "const") -> "windows.FeatureWindows | torch.Tensor":
        """Block `block`'s features in the boxes centre ± half only; see windows.feature_windows.
        w: [1, w_dim], W+ [1, num_ws, w_dim] or a split W+."""
        ws = w if isinstance(w, tuple) else self.to_wplus(w)
        return windows.feature_windows(self.synthesis, ws, block, centres, half, noise_mode=noise_mode)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                noise_mode: str = "const") -> torch.Tensor:
        ws = self.mapping(z, truncation_psi, truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode).image

    @torch.no_grad()
    def mean_w(self, n: int = 10000, seed: int = 0) -> torch.Tensor:
        """The tracked w_avg if it was ever updated, else an estimate from n samples. [w_dim]

        The estimate is kept until the mapping's weights change: every session without a tracked
        w_avg asks for it, and n mapping passes per open cost time and, with the small result
        kept alive between the freed batches, heap the C allocator did not give back (about
        1.3 MB per session with a 32-dim z, measured)."""
        if self.mapping.w_avg.abs().sum() > 0:
            return self.mapping.w_avg.clone()
        key = (n, seed, tuple(p._version for p in self.mapping.parameters()),
               tuple(p.data_ptr() for p in self.mapping.parameters()))
        cached = getattr(self, "_mean_w_estimate", None)
        if cached is None or cached[0] != key:
            gen = torch.Generator().manual_seed(seed)
            z = torch.randn([n, self.cfg.z_dim], generator=gen).to(self.mapping.w_avg.device)
            with torch.no_grad():
                cached = (key, self.mapping(z)[:, 0].mean(dim=0))
            self._mean_w_estimate = cached
        return cached[1].clone()


# ---------------------------------------------------------------------------------------------
# Discriminator (residual, minibatch-stddev), names as NVIDIA's `Discriminator`.


@dataclass(frozen=True)
class DiscriminatorConfig:
    resolution: int = 512
    img_channels: int = 3
    channel_base: int = 32768
    channel_max: int = 512
    conv_clamp: float | None = None
    mbstd_group_size: int | None = 4       # None = whole minibatch (as NVIDIA's code allows)
    mbstd_num_channels: int = 1
    num_fp16_res: int = 0                  # recorded only

    def __post_init__(self):
        _check_fields(self, {"resolution": ("int", 0, 1 << 30), "img_channels": ("int", 1, 4),
                             "channel_base": ("int", 1, 1 << 24), "channel_max": ("int", 1, _SIZE),
                             "conv_clamp": ("float?", 1e-6, 1e6), "mbstd_group_size": ("int?", 1, 1024),
                             "mbstd_num_channels": ("int", 1, 64), "num_fp16_res": ("int", 0, 16)})
        if not 8 <= self.resolution <= 1024 or self.resolution & (self.resolution - 1):
            raise ValueError(f"resolution must be a power of two in 8…1024, got {self.resolution}")
        if self.channel_base < self.resolution:
            raise ValueError(f"channel_base {self.channel_base} leaves the {self.resolution}-px block without "
                             "channels (it must be at least the resolution)")

    def channels(self, res: int) -> int:
        return min(self.channel_base // res, self.channel_max)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DiscriminatorConfig":
        return _config_from_json(cls, text, "discriminator")


class Conv2dLayer(nn.Module):
    """Equalised-learning-rate conv with optional 2× down-sampling."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", down: int = 1, conv_clamp: float | None = None):
        super().__init__()
        self.activation, self.down, self.conv_clamp = activation, down, conv_clamp
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = LRELU_GAIN if activation == "lrelu" else 1.0
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None
        self.register_buffer("resample_filter", setup_filter(), persistent=False)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = self.weight * self.weight_gain
        x = conv2d_resample(x, w.to(x.dtype), f=self.resample_filter, down=self.down, padding=self.padding)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp)


class DiscriminatorBlock(nn.Module):
    """Residual block: [fromRGB], conv, down-conv, plus a 1×1 down skip, each branch × √½."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, img_channels: int,
                 conv_clamp: float | None = None):
        super().__init__()
        self.in_channels = in_channels
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 0:
            x = self.fromrgb(img)
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv0(x)
        x = self.conv1(x, gain=math.sqrt(0.5))
        return y + x


class MinibatchStdLayer(nn.Module):
    def __init__(self, group_size: int, num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = n if self.group_size is None else min(self.group_size, n)    # None = whole minibatch
        if n % g:
            raise ValueError(f"minibatch-stddev needs a batch divisible by {g}, got {n}")
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)       # [G, n/G, F, c, H, W]
        y = (y - y.mean(dim=0)).square().mean(dim=0)
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])   # [n/G, F]
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(nn.Module):
    def __init__(self, in_channels: int, resolution: int, mbstd_group_size: int, mbstd_num_channels: int,
                 conv_clamp: float | None = None):
        super().__init__()
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3, activation="lrelu",
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        return self.out(x)


class Discriminator(nn.Module):
    """Unconditional residual discriminator; image [N, C, res, res] → logits [N, 1]."""

    def __init__(self, cfg: DiscriminatorConfig | None = None, **overrides):
        super().__init__()
        cfg = cfg or DiscriminatorConfig()
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        self.cfg = cfg
        log2 = int(math.log2(cfg.resolution))
        self.block_resolutions = [2 ** i for i in range(log2, 2, -1)]
        for res in self.block_resolutions:
            in_ch = cfg.channels(res) if res < cfg.resolution else 0
            block = DiscriminatorBlock(in_ch, cfg.channels(res), cfg.channels(res // 2), cfg.img_channels,
                                       conv_clamp=cfg.conv_clamp)
            setattr(self, f"b{res}", block)
        self.b4 = DiscriminatorEpilogue(cfg.channels(4), 4, cfg.mbstd_group_size, cfg.mbstd_num_channels,
                                        conv_clamp=cfg.conv_clamp)

    def forward(self, img: torch.Tensor, return_features: bool = False):
        assert img.ndim == 4 and img.shape[1:] == (self.cfg.img_channels, self.cfg.resolution, self.cfg.resolution), \
            f"image must be [N, {self.cfg.img_channels}, {self.cfg.resolution}, {self.cfg.resolution}], got {tuple(img.shape)}"
        x = None
        feats = []
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x, img)
            feats.append(x)
        logits = self.b4(x)
        return (logits, feats) if return_features else logits
