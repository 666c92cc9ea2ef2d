"""Feature windows: a block's features computed only around given centres must equal the whole
map's inside the requested boxes, with the same gradients, and the drag engine must give the
same edit with and without them."""
from __future__ import annotations

import pytest
import torch

import dragd.daemon.model.windows as wn
from dragd.daemon.edit.drag import DragSession, sample_features
from dragd.daemon.model.stylegan2 import Generator
from dragd.daemon.model.windows import FeatureWindows

RES, BLOCK = 128, 5                      # block 5 of a 128-px generator: 64×64 features


@pytest.fixture(scope="module")
def gen():
    torch.manual_seed(0)
    G = Generator(resolution=RES, channel_base=2048, channel_max=64).eval()
    with torch.no_grad():                 # trained generators have noise; random init has none
        for m in G.modules():
            if hasattr(m, "noise_strength"):
                m.noise_strength.fill_(0.5)
    ws = G.mapping(torch.randn(1, G.cfg.z_dim)).detach()
    return G, ws


def _force_plan(monkeypatch, j, half):
    monkeypatch.setattr(wn, "window_plan", lambda cfg, block, h, count: (j, wn.window_sizes(half, BLOCK - j)))


def _box(c, half, r):
    return max(c - half, 0), min(c + half, r - 1) + 1


def _max_box_error(full, fw, centres, half):
    r = full.shape[-1]
    worst = 0.0
    for i, (cx, cy) in enumerate(centres):
        ox, oy = fw.origins[i].tolist()
        (x0, x1), (y0, y1) = _box(cx, half, r), _box(cy, half, r)
        a = full[0, :, y0:y1, x0:x1]
        b = fw.data[i, :, y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        assert a.shape == b.shape
        worst = max(worst, float((a - b).abs().max()))
    return worst


CENTRES = [(0, 0), (63, 63), (0, 63), (5, 60), (31, 32), (17, 2), (61, 40)]


@pytest.mark.parametrize("j,half", [(4, 2), (4, 6), (3, 3), (3, 8)])
def test_windows_equal_the_whole_map_inside_their_boxes(gen, monkeypatch, j, half):
    G, ws = gen
    _force_plan(monkeypatch, j, half)
    with torch.no_grad():
        full = G.synthesize(ws, stop_after_block=BLOCK, render=False).features[-1]
        fw = G.feature_windows(ws, BLOCK, CENTRES, half)
    assert isinstance(fw, FeatureWindows) and fw.data.shape[0] == len(CENTRES)
    assert fw.data.shape[-1] < full.shape[-1]
    scale = float(full.abs().mean())
    assert _max_box_error(full, fw, CENTRES, half) < 1e-5 * max(scale, 1.0)


@pytest.mark.parametrize("name,short", [("CONV_REACH", 0), ("UP_REACH", (2, 2)), ("UP_REACH", (3, 1))])
def test_each_layer_reads_exactly_its_reach(gen, monkeypatch, name, short):
    """With any layer's reach one pixel short, interior windows read wrong values: the spans are tight."""
    G, ws = gen
    half = 4
    monkeypatch.setattr(wn, name, short)
    _force_plan(monkeypatch, 2, half)
    centres = [(31, 32), (20, 45), (40, 21)]       # away from the map's border
    with torch.no_grad():
        full = G.synthesize(ws, stop_after_block=BLOCK, render=False).features[-1]
        fw = G.feature_windows(ws, BLOCK, centres, half)
    assert _max_box_error(full, fw, centres, half) > 1e-3


def test_window_gradients_equal_whole_map_gradients(gen, monkeypatch):
    G, ws = gen
    half = 5
    _force_plan(monkeypatch, 3, half)
    centres = [(22, 23), (61, 3)]                  # feature px; covers pts below (image px ÷ 2)
    pts = torch.tensor([[[40.0, 50.0], [47.5, 43.25]], [[120.0, 10.0], [125.0, 2.0]]])  # image px
    grads = []
    for windowed in (False, True):
        head = ws[:, :6].clone().requires_grad_(True)
        split = (head, ws[:, 6:])
        if windowed:
            feat = G.feature_windows(split, BLOCK, centres, half)
            vals = sample_features(feat, pts, RES)
        else:
            feat = G.synthesize(split, stop_after_block=BLOCK, render=False).features[-1]
            vals = sample_features(feat, pts, RES)
        (g,) = torch.autograd.grad(vals.square().sum(), [head])
        grads.append(g)
    assert grads[0].abs().max() > 0
    rel = float((grads[0] - grads[1]).norm() / grads[0].norm())
    assert rel < 1e-5


def test_plan_picks_windows_for_few_handles_and_the_whole_map_for_many():
    G = Generator(resolution=512)                   # FFHQ channels; the plan only reads the config
    j, sizes = wn.window_plan(G.cfg, 6, 6, 2)
    assert j < 6 and 0 < sizes[0] < G.block_resolution(j) and sizes[-1] == 13
    assert wn.window_plan(G.cfg, 6, 6, 5000) == (6, [])


def test_whole_map_comes_back_when_windows_do_not_pay(gen):
    G, ws = gen
    with torch.no_grad():
        out = G.feature_windows(ws, BLOCK, [(x, y) for x in range(0, 64, 8) for y in range(0, 64, 8)], 30)
        full = G.synthesize(ws, stop_after_block=BLOCK, render=False).features[-1]
    assert isinstance(out, torch.Tensor) and torch.equal(out, full)


def test_random_noise_cannot_be_windowed(gen):
    G, ws = gen
    with pytest.raises(ValueError, match="noise_mode"):
        G.feature_windows(ws, BLOCK, [(3, 3)], 2, noise_mode="random")


class _CountingGenerator(torch.nn.Module):
    """Our generator, counting how often the engine asks for windows."""

    def __init__(self, G):
        super().__init__()
        self.G, self.window_calls = G, 0
        self.resolution, self.num_ws, self.w_dim = G.resolution, G.num_ws, G.w_dim
        self.num_blocks = G.num_blocks
        self.supports_split_latent = self.supports_feature_windows = True

    def block_resolution(self, k):
        return self.G.block_resolution(k)

    def synthesize(self, *a, **k):
        return self.G.synthesize(*a, **k)

    def feature_windows(self, *a, **k):
        self.window_calls += 1
        return self.G.feature_windows(*a, **k)


def test_drag_with_windows_is_the_drag_without(gen):
    G, ws = gen
    C = _CountingGenerator(G)
    h = [[40.3, 50.6], [2.0, 125.0], [100.0, 20.0]]
    t = [[50.0, 44.0], [12.0, 115.0], [95.0, 31.0]]
    a = DragSession(C, ws, h, t, lr=0.01, max_steps=10 ** 6)
    b = DragSession(G, ws, h, t, lr=0.01, max_steps=10 ** 6, windows=False)
    moved = 0.0
    for _ in range(12):
        ra, rb = a.step(), b.step()
        assert torch.equal(ra.handles, rb.handles)
        assert ra.losses["motion"] == pytest.approx(rb.losses["motion"], rel=1e-4)
        moved = max(moved, float((ra.handles - torch.tensor(h)).abs().max()))
    assert torch.allclose(a.latent, b.latent, atol=1e-5)
    assert C.window_calls == 12
    assert moved > 0                                # tracking did move handles: windows followed them


def test_a_mask_term_reads_the_whole_map(gen):
    G, ws = gen
    C = _CountingGenerator(G)
    mask = torch.zeros(RES, RES, dtype=torch.bool)
    mask[20:80, 20:80] = True
    s = DragSession(C, ws, [[40, 50]], [[50, 44]], mask=mask)
    s.step()
    assert C.window_calls == 0
    s.set_mask(None)
    s.step()
    assert C.window_calls == 1
