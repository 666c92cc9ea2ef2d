"""A synthesis block's features computed only in small windows around given centres.

The drag loop reads block k's features only near each handle (the tracking square, the motion
disc). Blocks 1…j then run on the whole map and blocks j+1…k on one crop of block j's output
per handle, as a batch. Each layer of those blocks runs only on the pixels the next one reads:
walking back from the box a window must cover, each layer's input is the span its output
reads (`_reads`), and after every layer the windows are cropped to the next layer's span, so
the windows shrink towards the final box instead of carrying every block's edge margin to the
end. Inside the box the values equal the whole map's (up to float summation order). j is
chosen by a FLOP estimate, and when no j beats the whole map the whole map is computed.

Nothing here changes the network's maths: a windowed layer is the layer itself, only on a
crop, with the matching crop of its constant noise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .stylegan2 import GeneratorConfig, SynthesisNetwork

# Input pixels an output pixel v of a synthesis layer depends on. A 3×3 conv (padding 1) reads
# v − 1 … v + 1. An up-sampling layer (transposed 3×3 conv with stride 2, then the 4-tap FIR on
# its output padded by 1) reads ⌈(v − 3)/2⌉ … ⌊(v + 2)/2⌋. tests/test_feature_windows.py checks
# that these spans suffice and that one pixel less does not.
CONV_REACH = 1
UP_REACH = (3, 2)


def _reads(lo: int, hi: int, up: int) -> tuple[int, int]:
    """The input span (first, last pixel) that output pixels lo…hi of a layer read."""
    if up == 1:
        return lo - CONV_REACH, hi + CONV_REACH
    return -((UP_REACH[0] - lo) // 2), (hi + UP_REACH[1]) // 2


def window_sizes(half: int, blocks: int) -> list[int]:
    """Sides of the windows through `blocks` windowed blocks: each layer's input (conv0, conv1 of
    each block), then the final window, 2·half + 1. Wide enough wherever a window sits, so all
    windows of one layer have one size and run as one batch."""
    sizes = [2 * half + 1]
    for up in (1, 2) * blocks:                        # the layers, last to first
        n = sizes[0]
        sizes.insert(0, max(hi - lo + 1 for lo, hi in (_reads(a, a + n - 1, up) for a in range(up))))
    return sizes


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


def window_plan(cfg: "GeneratorConfig", block: int, half: int, count: int) -> tuple[int, list[int]]:
    """(j, window_sizes): crop `count` windows from block j's output to get block `block`'s
    features in boxes of side 2·half + 1; (block, []): the whole map is cheaper."""
    res = [2 ** (k + 1) for k in range(1, cfg.num_blocks + 1)]        # block k is 2^(k+1) square

    def cost(k: int, up: int, side: int) -> int:   # multiply-adds (÷ 9) of a layer on a side² input
        c_out = cfg.channels(res[k - 1])
        return side * side * (cfg.channels(res[k - 2]) if up == 2 else c_out) * c_out

    def whole(k: int) -> int:
        return (cost(k, 2, res[k - 2]) if k > 1 else 0) + cost(k, 1, res[k - 1])

    best = (sum(whole(k) for k in range(1, block + 1)), block, [])
    for j in range(1, block):
        sizes = window_sizes(half, block - j)
        layers = [(k, up) for k in range(j + 1, block + 1) for up in (2, 1)]
        sides = [res[k - 2] if up == 2 else res[k - 1] for k, up in layers] + [res[block - 1]]
        if any(s > side for s, side in zip(sizes, sides)):
            continue
        total = sum(whole(k) for k in range(1, j + 1)) + count * sum(
            cost(k, up, s) for s, (k, up) in zip(sizes, layers))
        best = min(best, (total, j, sizes))
    return best[1], best[2]


def _origins(c: int, half: int, sizes: list[int], sides: list[int], ups: list[int]) -> list[int]:
    """Along one axis: where each layer's input window starts (then the final window), so that
    the final window covers c ± half (clipped to the map) and each window holds all that the
    next one reads. sides: the map's side at each of those windows; ups: each layer's up factor."""
    lo, hi = max(c - half, 0), min(c + half, sides[-1] - 1)
    origins = []
    for i in range(len(sizes) - 1, -1, -1):
        o = max(0, min(lo, sides[i] - sizes[i]))
        assert lo >= o and hi <= o + sizes[i] - 1, f"a window of {sizes[i]} at {o} misses {lo}…{hi}"
        origins.insert(0, o)
        if i:
            lo, hi = _reads(o, o + sizes[i] - 1, ups[i - 1])
            lo, hi = max(lo, 0), min(hi, sides[i - 1] - 1)
    return origins


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
    j, sizes = window_plan(synthesis.cfg, block, half, len(centres))
    x = synthesis(ws, noise_mode=noise_mode, stop_after_block=j, render=False).features[-1]
    assert x.shape[0] == 1, f"feature_windows takes one latent, got a batch of {x.shape[0]}"
    if j == block:
        return x
    blocks = [getattr(synthesis, f"b{synthesis.block_resolutions[k - 1]}") for k in range(j + 1, block + 1)]
    layers = [layer for blk in blocks for layer in (blk.conv0, blk.conv1)]
    sides = [synthesis.block_resolutions[j - 1]] + [layer.resolution for layer in layers]
    ups = [layer.up for layer in layers]
    xs = [_origins(cx, half, sizes, sides, ups) for cx, _ in centres]
    ys = [_origins(cy, half, sizes, sides, ups) for _, cy in centres]
    origins = [[(x[i], y[i]) for x, y in zip(xs, ys)] for i in range(len(sizes))]   # [window i][centre]
    size = sizes[0]
    x = torch.stack([x[0, :, oy:oy + size, ox:ox + size] for ox, oy in origins[0]])   # [P, C, S, S]
    rows = synthesis.block_ws(ws)[j:block]
    for i, layer in enumerate(layers):
        w = rows[i // 2][:, i % 2].expand(len(centres), -1)
        out = [(ox * layer.up, oy * layer.up) for ox, oy in origins[i]]
        noise = None
        if noise_mode == "const":              # the crop of the whole map's noise this window sees
            n = size * layer.up
            noise = torch.stack([layer.noise_const[oy:oy + n, ox:ox + n] for ox, oy in out])[:, None]
        x = layer(x, w, noise_mode, noise=noise)
        size = sizes[i + 1]
        x = torch.stack([x[k, :, ny - oy:ny - oy + size, nx - ox:nx - ox + size]
                         for k, ((ox, oy), (nx, ny)) in enumerate(zip(out, origins[i + 1]))])
    return FeatureWindows(x, torch.tensor(origins[-1], dtype=torch.int64), sides[-1])
