import math

import pytest
import torch

import torch.nn.functional as F

from dragd.daemon.model.ops import conv2d_resample, setup_filter, upfirdn2d, upsample2d
from dragd.daemon.model.stylegan2 import (Discriminator, DiscriminatorConfig, Generator, GeneratorConfig,
                                    MinibatchStdLayer)


def small_generator(resolution, **kw):
    torch.manual_seed(0)
    cfg = dict(resolution=resolution, z_dim=32, w_dim=32, channel_base=64 * resolution // 4,
               channel_max=32, mapping_layers=2)
    cfg.update(kw)
    return Generator(**cfg).eval()


@pytest.mark.parametrize("resolution", [8, 32, 64])
def test_shapes_and_num_ws(resolution):
    G = small_generator(resolution)
    assert G.num_ws == 2 * int(math.log2(resolution)) - 2
    z = torch.randn(2, 32)
    ws = G.mapping(z)
    assert ws.shape == (2, G.num_ws, 32)
    out = G.synthesis(ws)
    assert out.image.shape == (2, 3, resolution, resolution)
    assert [f.shape[-1] for f in out.features] == [2 ** k for k in range(2, int(math.log2(resolution)) + 1)]


def test_const_noise_is_deterministic_and_random_noise_is_not(tiny_generator):
    G = tiny_generator
    # Give noise a visible effect; fresh generators start with zero noise strength.
    for name, p in G.named_parameters():
        if name.endswith("noise_strength"):
            p.data.fill_(0.5)
    ws = G.mapping(torch.randn(1, 32))
    a = G.synthesis(ws, noise_mode="const").image
    b = G.synthesis(ws, noise_mode="const").image
    assert torch.equal(a, b)
    c = G.synthesis(ws, noise_mode="random").image
    assert (a - c).abs().max() > 1e-3
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesis(ws, noise_mode="loud")


@pytest.mark.parametrize("k", [1, 2, 3])
def test_stop_after_block_matches_full_forward_and_skips_torgb(tiny_generator, k):
    G = tiny_generator
    ws = G.mapping(torch.randn(2, 32))
    full = G.synthesis(ws)
    torgb_calls = []
    hooks = [m.register_forward_hook(lambda *a: torgb_calls.append(1))
             for name, m in G.named_modules() if name.endswith("torgb")]
    part = G.synthesis(ws, stop_after_block=k)
    for h in hooks:
        h.remove()
    assert part.image is None
    assert len(part.features) == k
    for a, b in zip(part.features, full.features[:k]):
        assert torch.equal(a, b)
    assert torgb_calls == []
    with pytest.raises(ValueError, match="stop_after_block"):
        G.synthesis(ws, stop_after_block=len(full.features) + 1)


def test_gradients_reach_the_wplus_rows_that_feed_a_block(tiny_generator):
    G = tiny_generator
    ws = G.mapping(torch.randn(1, 32)).detach().requires_grad_(True)
    G.synthesis(ws).image.square().sum().backward()
    assert (ws.grad.abs().sum(dim=2) > 0).all()
    ws.grad = None
    # Block 2 (8x8) uses rows 0..2 for its convolutions; nothing later may get gradient.
    G.synthesis(ws, stop_after_block=2).features[-1].square().sum().backward()
    used = ws.grad.abs().sum(dim=2)[0] > 0
    assert used[:3].all() and not used[3:].any()


def test_w_and_wplus_inputs_agree(tiny_generator):
    G = tiny_generator
    w = G.mapping(torch.randn(1, 32))[:, 0]
    a = G.synthesize(w).image
    b = G.synthesize(w.unsqueeze(1).repeat(1, G.num_ws, 1)).image
    assert torch.equal(a, b)
    with pytest.raises(AssertionError, match="W\\+ must be"):
        G.synthesize(torch.zeros(1, G.num_ws + 1, 32))


def test_truncation(tiny_generator):
    G = tiny_generator
    G.mapping.w_avg.normal_()
    z = torch.randn(3, 32)
    assert torch.equal(G.mapping(z, truncation_psi=1.0), G.mapping(z))
    at_mean = G.mapping(z, truncation_psi=0.0)
    assert torch.allclose(at_mean, G.mapping.w_avg.expand_as(at_mean))
    cut = G.mapping(z, truncation_psi=0.0, truncation_cutoff=2)
    assert torch.allclose(cut[:, :2], at_mean[:, :2]) and torch.equal(cut[:, 2:], G.mapping(z)[:, 2:])


def test_w_avg_tracking_and_mean_w(tiny_generator):
    G = tiny_generator
    before = G.mapping.w_avg.clone()
    G.mapping(torch.randn(8, 32), update_w_avg=True)
    assert not torch.equal(before, G.mapping.w_avg)
    assert torch.equal(G.mean_w(), G.mapping.w_avg)


def test_config_roundtrip_and_validation():
    cfg = GeneratorConfig(resolution=64, w_dim=128, conv_clamp=256.0)
    assert GeneratorConfig.from_json(cfg.to_json()) == cfg
    assert cfg.num_ws == 10 and cfg.channels(64) == 512 and cfg.channels(1024) == 32
    for bad in (48, 4, 2048):
        with pytest.raises(ValueError, match="power of two"):
            GeneratorConfig(resolution=bad)
    with pytest.raises(ValueError, match="unknown generator config"):
        GeneratorConfig.from_json('{"resolution": 64, "colour": "blue"}')
    dcfg = DiscriminatorConfig(resolution=64)
    assert DiscriminatorConfig.from_json(dcfg.to_json()) == dcfg
    with pytest.raises(ValueError, match="unknown discriminator config"):
        DiscriminatorConfig.from_json('{"resolution": 64, "colour": "blue"}')


def test_conv_clamp_bounds_activations():
    G = small_generator(32, conv_clamp=0.05)
    out = G.synthesis(G.mapping(torch.randn(1, 32)))
    for f in out.features:
        assert f.abs().max() <= 0.05 + 1e-6


def test_upsample_preserves_constants_and_filter_is_normalised():
    f = setup_filter()
    assert f.shape == (4, 4) and torch.isclose(f.sum(), torch.tensor(1.0))
    x = torch.full([1, 2, 8, 8], 3.0)
    y = upsample2d(x, f)
    assert y.shape == (1, 2, 16, 16)
    assert torch.allclose(y[:, :, 2:-2, 2:-2], torch.tensor(3.0))
    # upfirdn2d is a true convolution: a delta reproduces an asymmetric kernel unflipped.
    k = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    d = torch.zeros(1, 1, 3, 3)
    d[0, 0, 1, 1] = 1
    z = upfirdn2d(d, k, pad=(1, 0, 1, 0))
    assert torch.equal(z[0, 0, 1:3, 1:3], k)



def test_resampling_without_a_filter_drops_or_spreads_samples():
    """f=None is the 1-tap filter: down-sampling keeps every other sample, up-sampling leaves
    the zeros of zero insertion (gain up² as with a filter)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    w3, w1 = torch.randn(4, 3, 3, 3), torch.randn(4, 3, 1, 1)
    assert torch.allclose(conv2d_resample(x, w3, down=2, padding=1), F.conv2d(x, w3, stride=2, padding=1),
                          atol=1e-6)
    assert torch.allclose(conv2d_resample(x, w1, down=2), F.conv2d(x[:, :, ::2, ::2], w1), atol=1e-6)
    up = conv2d_resample(x, w1, up=2)
    spread = torch.zeros(2, 4, 16, 16)
    spread[:, :, 1::2, 1::2] = 4 * F.conv2d(x, w1)
    assert torch.allclose(up, spread, atol=1e-5)
    assert conv2d_resample(x, w3, up=2, padding=1).shape == (2, 4, 16, 16)
    assert torch.equal(upfirdn2d(x, None, down=2), x[:, :, ::2, ::2])


def test_discriminator_shapes_and_features():
    torch.manual_seed(0)
    D = Discriminator(resolution=32, channel_base=256, channel_max=32).eval()
    img = torch.randn(4, 3, 32, 32)
    logits, feats = D(img, return_features=True)
    assert logits.shape == (4, 1)
    assert [f.shape[-1] for f in feats] == [16, 8, 4]
    with pytest.raises(ValueError, match="divisible"):
        MinibatchStdLayer(4)(torch.randn(6, 8, 4, 4))
    with pytest.raises(AssertionError, match="image must be"):
        D(torch.randn(4, 3, 16, 16))


def test_mean_w_estimate_is_computed_once_per_mapping_weights():
    G = small_generator(32)
    G.mapping.w_avg.zero_()                     # untracked: the estimate from samples is used
    calls = []
    hook = G.mapping.register_forward_hook(lambda *a: calls.append(1))
    first = G.mean_w()
    assert torch.equal(G.mean_w(), first) and len(calls) == 1
    first.add_(1.0)                             # a caller's copy: the cache is not changed
    assert not torch.equal(G.mean_w(), first)
    with torch.no_grad():
        G.mapping.fc0.weight.mul_(1.5)          # new weights: a new estimate
    assert not torch.equal(G.mean_w(), first - 1.0) and len(calls) == 2
    hook.remove()
