"""A synthesis block's features computed only in small windows around given centres.

The drag loop reads block k's features only near each handle (the tracking square, the motion
disc). Blocks 1…j then run on the whole map and blocks j+1…k on one crop of block j's output
per handle, as a batch: each crop is wide enough that its output, inside the box it was asked
to cover, equals the whole map's (up to float summation order). j is chosen by a FLOP estimate,
and when no j beats the whole map the whole map is computed.

Nothing here changes the network's maths: a windowed block runs the block's own layers, only
on a crop, with the matching crop of each layer's constant noise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .stylegan2 import GeneratorConfig, SynthesisBlock, SynthesisNetwork

# Pixels at each edge of a synthesis block's output that depend on input outside the window
# the block was given (up-sampling transposed 3×3 conv + 4-tap FIR, then a 3×3 conv): 3.
# After n windowed blocks: 3·(2^n − 1). tests/test_feature_windows.py checks that 3 suffices
# and 2 does not.
WINDOW_BLOCK_MARGIN = 3


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


def window_size(half: int, scale: int) -> tuple[int, int]:
    """(margin, S) for windows that go through log2(scale) blocks: the margin lost at each edge
    of the final window, and the side S of the first-block window whose final window covers
    2·half + 1 pixels plus that margin on both sides, whatever the rounding of its origin."""
    margin = WINDOW_BLOCK_MARGIN * (scale - 1)
    return margin, -(-(2 * half + 1 + 2 * margin + scale - 1) // scale)


def window_plan(cfg: "GeneratorConfig", block: int, half: int, count: int) -> tuple[int, int]:
    """(j, S): crop `count` S-square windows from block j's output to get block `block`'s
    features in boxes of side 2·half + 1; (block, 0): the whole map is cheaper."""
    res = [2 ** (k + 1) for k in range(1, cfg.num_blocks + 1)]        # block k is 2^(k+1) square

    def cost(k: int, side: int) -> float:          # multiply-adds of block k on a side² output
        c_out = cfg.channels(res[k - 1])
        c_in = cfg.channels(res[k - 2]) if k > 1 else 0
        return side * side * (c_in * c_out / 4 + c_out * c_out)

    best = (sum(cost(k, res[k - 1]) for k in range(1, block + 1)), block, 0)
    for j in range(1, block):
        _, size = window_size(half, 2 ** (block - j))
        if size >= res[j - 1]:
            continue
        total = sum(cost(k, res[k - 1]) for k in range(1, j + 1)) + count * sum(
            cost(k, size * 2 ** (k - j)) for k in range(j + 1, block + 1))
        best = min(best, (total, j, size))
    return best[1], best[2]


def _block_in_windows(blk: "SynthesisBlock", x: torch.Tensor, ws: torch.Tensor, noise_mode: str,
                      origins: list[tuple[int, int]]) -> torch.Tensor:
    """blk's features (no toRGB) on x [P, C, s, s], crops of the previous block's output;
    origins[i] is the (x, y) of crop i's output at blk's resolution. ws: [P, num_conv + 1, w_dim]."""
    for i, layer in enumerate((blk.conv0, blk.conv1)):
        noise = None
        if noise_mode == "const":              # the crop of the whole map's noise this crop sees
            size = x.shape[-1] * layer.up
            noise = torch.stack([layer.noise_const[oy:oy + size, ox:ox + size] for ox, oy in origins])[:, None]
        x = layer(x, ws[:, i], noise_mode, noise=noise)
    return x


def feature_windows(synthesis: "SynthesisNetwork", ws, block: int, centres: list[tuple[int, int]],
                    half: int, noise_mode: str = "const") -> "FeatureWindows | torch.Tensor":
    """Block `block`'s features [1, C, r, r] in the boxes centre ± half (clipped to the map),
    computing only what those boxes depend on.

    ws: W+ [1, num_ws, w_dim] or a split W+ (head, tail), as `SynthesisNetwork.forward`.
    centres: (x, y) pixels at block `block`'s resolution r. Returns FeatureWindows, or the whole
    map [1, C, r, r] when `window_plan` finds no windows cheaper.
    """
    if noise_mode == "random":
        raise ValueError("feature_windows needs noise_mode 'const' or 'none': random noise "
                         "differs between a window and the full map")
    n_blocks = synthesis.cfg.num_blocks
    if not 1 <= block <= n_blocks:
        raise ValueError(f"block must be in 1…{n_blocks}, got {block}")
    j, size = window_plan(synthesis.cfg, block, half, len(centres))
    x = synthesis(ws, noise_mode=noise_mode, stop_after_block=j, render=False).features[-1]
    assert x.shape[0] == 1, f"feature_windows takes one latent, got a batch of {x.shape[0]}"
    if j == block:
        return x
    scale = 2 ** (block - j)
    margin, _ = window_size(half, scale)
    res_j = synthesis.block_resolutions[j - 1]

    def origin(c: int) -> int:
        return min(max((c - half - margin) // scale, 0), res_j - size)

    origins = [(origin(cx), origin(cy)) for cx, cy in centres]
    x = torch.stack([x[0, :, oy:oy + size, ox:ox + size] for ox, oy in origins])   # [P, C, S, S]
    block_ws = synthesis.block_ws(ws)
    for k in range(j + 1, block + 1):
        origins = [(2 * ox, 2 * oy) for ox, oy in origins]
        blk = getattr(synthesis, f"b{synthesis.block_resolutions[k - 1]}")
        x = _block_in_windows(blk, x, block_ws[k - 1].expand(len(origins), -1, -1), noise_mode, origins)
    res_k, side = synthesis.block_resolutions[block - 1], x.shape[-1]
    # Each window loses `margin` pixels at every edge that is not the map's own border.
    for (ox, oy), (cx, cy) in zip(origins, centres):
        for o, c in ((ox, cx), (oy, cy)):
            lo = o + (margin if o > 0 else 0)
            hi = o + side - 1 - (margin if o + side < res_k else 0)
            assert lo <= max(c - half, 0) and min(c + half, res_k - 1) <= hi, \
                f"window at {o} (size {side}) does not cover {c} ± {half}"
    return FeatureWindows(x, torch.tensor(origins, dtype=torch.int64), res_k)
