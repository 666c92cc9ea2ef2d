"""StyleGAN2 generator and discriminator in plain PyTorch.

Parameter and buffer names mirror NVIDIA's StyleGAN2-ADA `training/networks.py`
(`mapping.fc0.weight`, `synthesis.b64.conv0.affine.bias`, …) so that a state dict
from a real checkpoint loads with `strict=True`; the math and its order follow the
same reference so a real checkpoint reproduces NVIDIA's images.

What is added over the reference: the synthesis can stop after block k and return
only the feature maps (the drag loop needs block 6 and nothing after it); it can compute
block k's features only in small windows (`feature_windows`: the drag loop reads a few
pixels around each handle); and the whole network always runs in fp32 (fp16-trained layers
are numerically fine in fp32).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .ops import (LRELU_GAIN, bias_act, conv2d_resample, modulated_conv2d,
                  normalize_2nd_moment, setup_filter, upsample2d)

NOISE_MODES = ("const", "random", "none")

# Pixels at each edge of a synthesis block's output that depend on input outside the window
# the block was given (up-sampling transposed 3×3 conv + 4-tap FIR, then a 3×3 conv): 3.
# After n windowed blocks: 3·(2^n − 1). tests/test_feature_windows.py checks that 3 suffices
# and 2 does not.
WINDOW_BLOCK_MARGIN = 3


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
        log2 = math.log2(self.resolution)
        if self.resolution < 8 or self.resolution > 1024 or log2 != int(log2):
            raise ValueError(f"resolution must be a power of two in 8…1024, got {self.resolution}")
        if self.img_channels not in (1, 3, 4):
            raise ValueError(f"img_channels must be 1, 3 or 4, got {self.img_channels}")
        if self.mapping_layers < 1:
            raise ValueError("mapping_layers must be ≥ 1")

    @property
    def num_blocks(self) -> int:
        return int(math.log2(self.resolution)) - 1          # b4 … b{res}

    @property
    def num_ws(self) -> int:
        return 2 * int(math.log2(self.resolution)) - 2

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
                windows: list[tuple[int, int]] | None = None) -> torch.Tensor:
        """windows: x is a batch of crops of the full input; windows[i] is the (x, y) origin of
        crop i's output in the full output map (only with const or no noise)."""
        styles = self.affine(w)
        noise = None
        if noise_mode == "random":
            assert windows is None, "random noise cannot be windowed"
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution],
                                device=x.device) * self.noise_strength
        elif noise_mode == "const":
            noise = self.noise_const * self.noise_strength
            if windows is not None:
                size = x.shape[-1] * self.up
                noise = torch.stack([noise[oy:oy + size, ox:ox + size] for ox, oy in windows])[:, None]
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
                noise_mode: str = "const", render: bool = True,
                windows: list[tuple[int, int]] | None = None):
        """ws: [N, num_conv + 1, w_dim] (the last row feeds toRGB). Returns (x, img).

        windows: x holds N crops of the previous block's output and windows[i] is the (x, y)
        origin of crop i's output at this block's resolution (twice the input crop's origin);
        the outer WINDOW_BLOCK_MARGIN pixels of each output crop are not those of the full map,
        except along the map's own border."""
        if self.in_channels == 0:
            assert windows is None, "the first block has no input to window"
            x = self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = self.conv1(x, ws[:, 0], noise_mode)
        else:
            x = self.conv0(x, ws[:, 0], noise_mode, windows)
            x = self.conv1(x, ws[:, 1], noise_mode, windows)
        if render:
            if img is not None:
                img = upsample2d(img, self.resample_filter)
            y = self.torgb(x, ws[:, self.num_conv])
            img = y if img is None else img + y
        return x, img


@dataclass
class FeatureWindows:
    """Square windows of one block's feature map, one per requested centre.

    Inside the box each window was asked to cover, the values are the full map's (up to float
    summation order); outside it they may not be."""
    data: torch.Tensor        # [P, C, S, S]
    origins: torch.Tensor     # [P, 2] int64 (x, y) of each window's top-left pixel in the full map
    full_size: int            # side of the full map

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def device(self) -> torch.device:
        return self.data.device

    def detach(self) -> "FeatureWindows":
        return FeatureWindows(self.data.detach(), self.origins, self.full_size)


@dataclass
class SynthesisOutput:
    image: torch.Tensor | None            # [N, C, res, res] in ≈[-1, 1], None if not rendered
    features: list[torch.Tensor] = field(default_factory=list)   # block k → [N, C_k, 2^(k+1), 2^(k+1)]


class SynthesisNetwork(nn.Module):
    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        self.block_resolutions = [2 ** i for i in range(2, int(math.log2(cfg.resolution)) + 1)]
        for res in self.block_resolutions:
            in_ch = cfg.channels(res // 2) if res > 4 else 0
            block = SynthesisBlock(in_ch, cfg.channels(res), cfg.w_dim, res, cfg.img_channels,
                                   conv_clamp=cfg.conv_clamp)
            setattr(self, f"b{res}", block)
        self.num_ws = cfg.num_ws

    def forward(self, ws, noise_mode: str = "const",
                stop_after_block: int | None = None, render: bool = True) -> SynthesisOutput:
        """ws: [N, num_ws, w_dim], or a split latent (head [N, n, w_dim], tail [N, num_ws − n, w_dim])
        taken as their concatenation. Split, each block reads its rows from whichever part holds
        them, so autograd skips the style gradients of layers fed only by a frozen tail (the
        drag loop optimises a head of 6 rows). stop_after_block k (1-based: 1 = b4) skips
        everything later.

        The image is rendered only when the last block runs and render=True; when stopping
        early no toRGB layer runs at all.
        """
        n_blocks = len(self.block_resolutions)
        head, tail = _head_tail(ws)
        assert head.ndim == 3 and tail.ndim == 3 and head.shape[1] + tail.shape[1] == self.num_ws \
            and head.shape[2] == tail.shape[2] == self.cfg.w_dim, \
            f"ws must be [N, {self.num_ws}, {self.cfg.w_dim}], got {tuple(head.shape)} + {tuple(tail.shape)}"
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        last = n_blocks if stop_after_block is None else stop_after_block
        if not 1 <= last <= n_blocks:
            raise ValueError(f"stop_after_block must be in 1…{n_blocks}, got {stop_after_block}")
        render = render and last == n_blocks
        x = img = None
        features = []
        w_idx = 0
        for res in self.block_resolutions[:last]:
            block = getattr(self, f"b{res}")
            block_ws = _rows(head, tail, w_idx, block.num_conv + 1)
            x, img = block(x, img, block_ws, noise_mode=noise_mode, render=render)
            features.append(x)
            w_idx += block.num_conv
        return SynthesisOutput(image=img, features=features)

    def feature_windows(self, ws, block: int, centres: list[tuple[int, int]], half: int,
                        noise_mode: str = "const") -> "FeatureWindows | torch.Tensor":
        """Block `block`'s features [1, C, r, r] in the boxes centre ± half (clipped to the map),
        computing only what those boxes depend on.

        ws: as `forward`, batch 1. centres: (x, y) pixels at block `block`'s resolution r.
        Blocks 1…j run whole; windows of block j's output, one per centre, go through blocks
        j+1…block as a batch. j is chosen by a FLOP estimate; when no j beats the whole map,
        the whole map [1, C, r, r] is returned instead of FeatureWindows.
        """
        if noise_mode == "random":
            raise ValueError("feature_windows needs noise_mode 'const' or 'none': random noise "
                             "differs between a window and the full map")
        n_blocks = len(self.block_resolutions)
        if not 1 <= block <= n_blocks:
            raise ValueError(f"block must be in 1…{n_blocks}, got {block}")
        j, size = self._window_plan(block, half, len(centres))
        out = self.forward(ws, noise_mode=noise_mode, stop_after_block=j, render=False)
        x = out.features[-1]
        assert x.shape[0] == 1, f"feature_windows takes one latent, got a batch of {x.shape[0]}"
        if j == block:
            return x
        head, tail = _head_tail(ws)
        scale = 2 ** (block - j)
        margin, _ = _window_size(half, scale)
        res_j = self.block_resolutions[j - 1]

        def origin(c: int) -> int:
            return min(max((c - half - margin) // scale, 0), res_j - size)

        windows = [(origin(cx), origin(cy)) for cx, cy in centres]
        x = torch.stack([x[0, :, oy:oy + size, ox:ox + size] for ox, oy in windows])  # [P, C, S, S]
        w_idx = sum(getattr(self, f"b{r}").num_conv for r in self.block_resolutions[:j])
        for res in self.block_resolutions[j:block]:
            blk = getattr(self, f"b{res}")
            windows = [(2 * ox, 2 * oy) for ox, oy in windows]
            block_ws = _rows(head, tail, w_idx, blk.num_conv + 1).expand(len(windows), -1, -1)
            x, _ = blk(x, None, block_ws, noise_mode=noise_mode, render=False, windows=windows)
            w_idx += blk.num_conv
        res_k, side = self.block_resolutions[block - 1], x.shape[-1]
        for (ox, oy), (cx, cy) in zip(windows, centres):
            for o, c in ((ox, cx), (oy, cy)):
                lo = o + (margin if o > 0 else 0)
                hi = o + side - 1 - (margin if o + side < res_k else 0)
                assert lo <= max(c - half, 0) and min(c + half, res_k - 1) <= hi, \
                    f"window at {o} (size {side}) does not cover {c} ± {half}"
        return FeatureWindows(x, torch.tensor(windows, dtype=torch.int64), res_k)

    def _window_plan(self, block: int, half: int, count: int) -> tuple[int, int]:
        """(j, S): crop S-square windows from block j's output; (block, 0): no windows."""

        def cost(k: int, side: int) -> float:          # multiply-adds of block k on a side² output
            c_out = self.cfg.channels(self.block_resolutions[k - 1])
            c_in = self.cfg.channels(self.block_resolutions[k - 2]) if k > 1 else 0
            return side * side * (c_in * c_out / 4 + c_out * c_out)

        res = self.block_resolutions
        best = (sum(cost(k, res[k - 1]) for k in range(1, block + 1)), block, 0)
        for j in range(1, block):
            _, size = _window_size(half, 2 ** (block - j))
            if size >= res[j - 1]:
                continue
            total = sum(cost(k, res[k - 1]) for k in range(1, j + 1)) + count * sum(
                cost(k, size * 2 ** (k - j)) for k in range(j + 1, block + 1))
            best = min(best, (total, j, size))
        return best[1], best[2]


def _head_tail(ws) -> tuple[torch.Tensor, torch.Tensor]:
    """W+ [N, num_ws, w_dim] or a split (head, tail) → (head, tail) in fp32."""
    head, tail = ws if isinstance(ws, tuple) else (ws, ws[:, :0])
    return head.to(torch.float32), tail.to(torch.float32)


def _window_size(half: int, scale: int) -> tuple[int, int]:
    """(margin, S) for windows that go through log2(scale) blocks: the margin lost at each edge
    of the final window, and the side S of the first-block window whose final window covers
    2·half + 1 pixels plus that margin on both sides, whatever the rounding of its origin."""
    margin = WINDOW_BLOCK_MARGIN * (scale - 1)
    return margin, -(-(2 * half + 1 + 2 * margin + scale - 1) // scale)


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
                        noise_mode: str = "const") -> "FeatureWindows | torch.Tensor":
        """w: [1, w_dim], W+ [1, num_ws, w_dim] or a split W+; see SynthesisNetwork.feature_windows."""
        ws = w if isinstance(w, tuple) else self.to_wplus(w)
        return self.synthesis.feature_windows(ws, block, centres, half, noise_mode=noise_mode)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                noise_mode: str = "const") -> torch.Tensor:
        ws = self.mapping(z, truncation_psi, truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode).image

    @torch.no_grad()
    def mean_w(self, n: int = 10000, seed: int = 0) -> torch.Tensor:
        """The tracked w_avg if it was ever updated, else an estimate from n samples. [w_dim]"""
        if self.mapping.w_avg.abs().sum() > 0:
            return self.mapping.w_avg.clone()
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn([n, self.cfg.z_dim], generator=gen).to(self.mapping.w_avg.device)
        return self.mapping(z)[:, 0].mean(dim=0)


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
