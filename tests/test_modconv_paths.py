"""The two modulated-convolution code paths must stay the same maths.

`modulated_conv2d(fused=True)` is NVIDIA's inference path (the batch folded into groups,
the weights modulated and demodulated per sample); `fused=False` scales the activations
instead and is what runs whenever autograd is on (drag, PTI, training). Only the fused path
is compared with NVIDIA's code (benchmarks/verify_reference.py, tests/test_nvidia_golden.py),
so these tests are what keeps the other one honest: same values and same gradients with
respect to the input, the styles and the weight, in fp32, to 1e-5 of the largest value.
"""
import pytest
import torch

from dragd.daemon.model.ops import modulated_conv2d, setup_filter
from dragd.daemon.model.stylegan2 import Generator

REL = 1e-5


def assert_rel_close(actual, expected, rel=REL, what=""):
    # Relative to the largest |value|: elementwise rtol is meaningless where a sum cancels to ~0.
    scale = expected.abs().max().item()
    diff = (actual - expected).abs().max().item()
    assert diff <= rel * scale, f"{what}: max|diff| {diff:.3e} > {rel:g} × max|ref| {scale:.3g}"


# (batch, in, out, size, kernel, up): the generator's 3×3 convs (plain and 2× up) and its
# 1×1 toRGB; odd sizes and batch 1 included because the fused path reshapes by batch.
SHAPES = [
    (1, 4, 6, 4, 3, 1),
    (3, 8, 5, 7, 3, 1),
    (2, 6, 4, 4, 3, 2),
    (3, 5, 7, 5, 3, 2),
    (2, 6, 3, 8, 1, 1),
]


def _inputs(n, i, o, size, k, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, i, size, size, generator=gen)
    weight = torch.randn(o, i, k, k, generator=gen)
    # Styles as an affine layer makes them (bias 1): around 1, a few negative.
    styles = 1 + 0.7 * torch.randn(n, i, generator=gen)
    return x, weight, styles


def _run(fused, x, weight, styles, up, k, demodulate, noise):
    x, weight, styles = (t.clone().requires_grad_(True) for t in (x, weight, styles))
    out = modulated_conv2d(x, weight, styles, noise=noise, up=up, padding=k // 2,
                           resample_filter=setup_filter() if up > 1 else None, demodulate=demodulate,
                           flip_weight=(up == 1), fused=fused)
    # A fixed random projection, so every output element weighs differently in the gradient.
    proj = torch.randn(out.shape, generator=torch.Generator().manual_seed(99))
    (out * proj).sum().backward()
    return out.detach(), x.grad, styles.grad, weight.grad


@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "n{}_i{}_o{}_s{}_k{}_up{}".format(*s))
def test_fused_and_activation_scaled_paths_agree(shape, demodulate):
    n, i, o, size, k, up = shape
    x, weight, styles = _inputs(n, i, o, size, k, seed=sum(shape))
    noise = torch.randn(n, 1, size * up, size * up, generator=torch.Generator().manual_seed(5)) * 0.3
    fused = _run(True, x, weight, styles, up, k, demodulate, noise)
    scaled = _run(False, x, weight, styles, up, k, demodulate, noise)
    assert fused[0].shape == (n, o, size * up, size * up)
    for name, a, b in zip(("output", "d/dx", "d/dstyles", "d/dweight"), scaled, fused):
        assert_rel_close(a, b, what=name)


def test_default_path_follows_autograd():
    """fused=None: the fused path exactly when autograd is off, the activation-scaled one when on."""
    x, weight, styles = _inputs(2, 6, 4, 5, 3, seed=3)
    kw = dict(padding=1, demodulate=True)
    with torch.no_grad():
        default_off = modulated_conv2d(x, weight, styles, **kw)
        fused = modulated_conv2d(x, weight, styles, fused=True, **kw)
        scaled = modulated_conv2d(x, weight, styles, fused=False, **kw)
    default_on = modulated_conv2d(x, weight, styles, **kw).detach()
    assert torch.equal(default_off, fused)
    assert torch.equal(default_on, scaled)
    assert not torch.equal(fused, scaled)      # else the two checks above prove nothing


def test_generator_image_and_features_same_with_and_without_autograd(tiny_generator):
    """The whole synthesis: no_grad (fused everywhere) vs autograd on (activation-scaled)."""
    G: Generator = tiny_generator
    with torch.no_grad():        # noise on, so the noise add is covered by both paths
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.4)
    ws = G.mapping(torch.randn(2, G.cfg.z_dim, generator=torch.Generator().manual_seed(4)))
    ws = ws + 0.3 * torch.randn(ws.shape, generator=torch.Generator().manual_seed(6))   # distinct rows
    with torch.no_grad():
        ref = G.synthesize(ws)
    out = G.synthesize(ws.clone().requires_grad_(True))
    assert out.image.requires_grad
    assert_rel_close(out.image.detach(), ref.image, what="image")
    for k, (a, b) in enumerate(zip(out.features, ref.features), 1):
        assert_rel_close(a.detach(), b, what=f"block {k} features")
