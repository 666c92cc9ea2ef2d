"""Low-level StyleGAN2 operations in plain PyTorch.

Each function reproduces the reference semantics of NVIDIA's StyleGAN2-ADA
`torch_utils/ops` (upfirdn2d, bias_act, conv2d_resample, modulated_conv2d)
with ordinary PyTorch calls, so nothing has to be compiled and every device
PyTorch supports works. The order of operations matters for exactness (a real
checkpoint must reproduce NVIDIA's images), so it is kept as in the reference.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)


def setup_filter(taps=(1, 3, 3, 1)) -> torch.Tensor:
    """Separable FIR taps → normalised 2-D filter [fh, fw] (sums to 1)."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def bias_act(x: torch.Tensor, b: torch.Tensor | None, act: str = "linear",
             gain: float = 1.0, clamp: float | None = None) -> torch.Tensor:
    """x + b (broadcast over dim 1), activation, gain, clamp — in that order."""
    if b is not None:
        x = x + b.reshape([1, -1] + [1] * (x.ndim - 2))
    if act == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE)
    elif act != "linear":
        raise ValueError(f"unsupported activation {act!r}")
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int, int, int] = (0, 0, 0, 0), gain: float = 1.0) -> torch.Tensor:
    """Upsample by zero insertion, pad (or crop if negative), FIR filter, downsample.

    x: [N, C, H, W]; f: [fh, fw], or None for no filter (the 1-tap [[1]], as the reference);
    pad = (x0, x1, y0, y1).
    """
    n, c, h, w = x.shape
    if f is None:
        f = torch.ones([1, 1], device=x.device)
    px0, px1, py0, py1 = pad
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    # f is applied as a true convolution (flipped), as the reference does.
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype).flip([0, 1])
    f = f[None, None].repeat(c, 1, 1, 1)
    x = F.conv2d(x, f, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    fh, fw = f.shape
    pad = ((fw + up - 1) // 2, (fw - up) // 2, (fh + up - 1) // 2, (fh - up) // 2)
    return upfirdn2d(x, f, up=up, pad=pad, gain=up * up)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None = None,
                    up: int = 1, down: int = 1, padding: int = 0, groups: int = 1,
                    flip_weight: bool = True) -> torch.Tensor:
    """2-D convolution with optional 2× up- or down-sampling through filter f.

    Only the paths StyleGAN2 uses are implemented: plain, transposed-conv up, strided down
    (k>1) and 1×1 down. flip_weight=False makes it a true convolution. f=None means no filter
    (the 1-tap [[1]], as the reference): up-sampling then leaves the transposed conv's zeros
    (scaled by up²), down-sampling just drops samples.
    """
    out_ch, in_per_group, kh, kw = w.shape
    px0 = px1 = py0 = py1 = padding
    if f is None:
        f = torch.ones([1, 1], device=x.device)
    fh, fw = f.shape
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2

    def conv(x, w, stride=1, pad=0, transpose=False, flip=flip_weight):
        if not flip:
            w = w.flip([2, 3])
        if transpose:
            return F.conv_transpose2d(x, w, stride=stride, padding=pad, groups=groups)
        return F.conv2d(x, w, stride=stride, padding=pad, groups=groups)

    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d(x, f, down=down, pad=(px0, px1, py0, py1))
        return conv(x, w)
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, pad=(px0, px1, py0, py1))
        return conv(x, w, stride=down)
    if up > 1 and down == 1:
        # conv_transpose2d wants [in, out/groups, kh, kw] per group.
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_ch // groups, in_per_group, kh, kw)
            w = w.transpose(1, 2).reshape(groups * in_per_group, out_ch // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = conv(x, w, stride=up, pad=[pyt, pxt], transpose=True, flip=not flip_weight)
        return upfirdn2d(x, f, pad=(px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt), gain=up * up)
    if up == 1 and down == 1 and px0 == px1 and py0 == py1 and px0 >= 0:
        return conv(x, w, pad=[py0, px0])
    raise NotImplementedError(f"conv2d_resample: up={up} down={down} k={kh}x{kw} padding={padding}")


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                     noise: torch.Tensor | None = None, up: int = 1, padding: int = 0,
                     resample_filter: torch.Tensor | None = None, demodulate: bool = True,
                     flip_weight: bool = True, fused: bool | None = None) -> torch.Tensor:
    """Style-modulated convolution.

    x: [N, I, H, W]; weight: [O, I, k, k]; styles: [N, I]; noise broadcastable to [N, O, H', W'].
    fused=True folds the batch into groups and modulates the weights (NVIDIA's inference
    path); fused=False scales the activations instead and convolves with the shared weight.
    Both are the same maths; the second needs no weight-gradient convolution to give style
    gradients, so it is what we use whenever autograd is on (None: decide by that).
    """
    n = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    assert styles.shape == (n, in_ch), (styles.shape, (n, in_ch))
    if fused is None:
        fused = not torch.is_grad_enabled()
    if not fused:
        dcoefs = None
        if demodulate:
            w2 = weight.square().sum(dim=[2, 3])                            # [O, I]
            dcoefs = (styles.square() @ w2.t() + 1e-8).rsqrt()             # [N, O]
        x = x * styles.reshape(n, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, padding=padding,
                            flip_weight=flip_weight)
        if dcoefs is not None:
            x = x * dcoefs.reshape(n, -1, 1, 1)
        return x if noise is None else x + noise
    w = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)          # [N, O, I, k, k]
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()      # [N, O]
        w = w * dcoefs.reshape(n, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_ch, kh, kw).to(x.dtype)
    x = conv2d_resample(x, w, f=resample_filter, up=up, padding=padding, groups=n,
                        flip_weight=flip_weight)
    x = x.reshape(n, -1, *x.shape[2:])
    if noise is not None:
        x = x + noise
    return x


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()
