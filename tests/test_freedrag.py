"""FreeDrag's rules (daemon/edit/freedrag.py) and a FreeDrag drag on the toy generator."""
from __future__ import annotations

import os
import sys

import pytest
import torch

from dragd.daemon.edit.drag import DragSession
from dragd.daemon.edit.freedrag import D_MAX, FreeDragState, line_search, template_weight

sys.path.insert(0, os.path.dirname(__file__))
from toy_generator import ToyBlobGenerator  # noqa: E402


@pytest.mark.parametrize("loss_end, loss_init", [(0.0, 0.0), (0.1, 0.2), (0.5, 0.2)])
def test_line_search_never_overshoots_the_target(loss_end, loss_init):
    """Advance (L_end ≤ l/2) and step-back (L_end > L_init) both pick a point on the line to the
    target and never past it, also when the target is nearer than one sub-move."""
    res, l = 64, 0.3
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(1, 6, 32, 32, generator=g)
    template = torch.randn(9, 6, generator=g)
    for _ in range(50):
        current = torch.rand(2, generator=g) * (res - 1)
        target = (current + (torch.rand(2, generator=g) - 0.5) * 16).clamp(0, res - 1)
        nxt = line_search(feat, current, target, template, loss_end, loss_init, res, l)
        along = target - current
        u = float((nxt - current) @ along / along.square().sum())
        assert u <= 1 + 1e-5                                         # not past the target
        assert float((current + u * along - nxt).norm()) < 1e-4      # on the line to it
        if loss_end <= 0.5 * l:
            assert 0 < u and float((nxt - current).norm()) <= D_MAX * res / 128 + 1e-5


def test_line_search_keeps_the_point_while_the_content_catches_up():
    feat = torch.randn(1, 6, 32, 32)
    current, target = torch.tensor([10.0, 10.0]), torch.tensor([30.0, 20.0])
    assert torch.equal(line_search(feat, current, target, torch.randn(9, 6), 0.2, 0.25, 64, 0.3), current)


def test_template_weight_follows_good_matches_and_keeps_memory_on_bad_ones():
    lam = template_weight(torch.tensor([0.0, 0.2 * 0.3, 0.8 * 0.3]), 0.3)
    assert lam[0] > lam[1] > lam[2]
    assert torch.allclose(lam[1:], torch.tensor([0.5, 0.1]), atol=1e-6)


def test_freedrag_moves_the_blob_to_the_target():
    G = ToyBlobGenerator()
    w = torch.zeros(1, G.w_dim)
    c0 = G.centres(w)[0, 0]
    h = c0.round()
    t = h + torch.tensor([8.0, 5.0])
    s = DragSession(G, w, [h.tolist()], [t.tolist()], method="freedrag")
    *_, last = s.run()
    assert last.reason == "converged" and last.step < 100
    moved = G.centres(s.latent)[0, 0] - c0
    assert float((moved - torch.tensor([8.0, 5.0])).norm()) < 2.5      # the content went (measured 1.8)


def test_l_is_the_distance_of_a_two_grid_px_shift_and_scales_with_the_features():
    """l is measured on the model's own features: a map 100× fainter gets an l 100× smaller, and on
    a linear ramp l is the distance of a 2-grid-px shift (l = 0.3 fixed ran ahead on weak features)."""
    res = 64
    ramp = torch.arange(32.0).repeat(32, 1)[None, None] * 0.1        # F(x) = 0.1·x per feature px
    h = torch.tensor([[30.0, 30.0]])
    l = FreeDragState(ramp, h, res).l
    # 2 grid px = 1 image px = 0.5 feature px; averaged |cos| over 8 directions: (2 + 4·0.7071) / 8
    assert l.item() == pytest.approx(0.1 * 0.5 * (2 + 4 * 0.5 ** 0.5) / 8, rel=1e-4)
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(1, 6, 32, 32, generator=g)
    loud, faint = FreeDragState(feat, h, res).l, FreeDragState(feat * 0.01, h, res).l
    assert torch.allclose(faint, loud * 0.01, rtol=1e-4)


class _ScaledFeatures:
    """The toy generator with every feature multiplied by a constant (another model's scale)."""

    def __init__(self, G, k):
        self.G, self.k = G, k

    def __getattr__(self, name):
        return getattr(self.G, name)

    def synthesize(self, *a, **kw):
        out = self.G.synthesize(*a, **kw)
        out.features = [f * self.k for f in out.features]
        return out


def test_freedrag_drags_alike_whatever_the_scale_of_the_features():
    G = ToyBlobGenerator()
    w = torch.zeros(1, G.w_dim)
    h = G.centres(w)[0, 0].round()
    t = h + torch.tensor([8.0, 5.0])
    runs = []
    for k in (1.0, 0.05):
        s = DragSession(_ScaledFeatures(G, k), w, [h.tolist()], [t.tolist()], method="freedrag")
        *_, last = s.run()
        runs.append((last.step, G.centres(s.latent)[0, 0]))
    assert runs[0][0] == runs[1][0]
    assert float((runs[0][1] - runs[1][1]).norm()) < 0.05


def test_freedrag_in_feature_windows_is_freedrag_on_the_whole_map():
    """The windows cover all that the line search and the templates read: same points, same loss."""
    from dragd.daemon.model.stylegan2 import Generator

    torch.manual_seed(0)
    G = Generator(resolution=128, channel_base=2048, channel_max=64).eval()
    ws = G.mapping(torch.randn(1, G.cfg.z_dim)).detach()
    h = [[40.3, 50.6], [3.0, 124.0], [100.0, 20.0]]
    t = [[60.0, 44.0], [20.0, 110.0], [90.0, 35.0]]
    a = DragSession(G, ws, h, t, lr=0.01, method="freedrag")
    b = DragSession(G, ws, h, t, lr=0.01, method="freedrag", windows=False)
    assert a._windowed() and not b._windowed()
    for _ in range(30):
        ra, rb = a.step(), b.step()
        assert torch.allclose(ra.handles, rb.handles, atol=1e-4)
        assert ra.losses["motion"] == pytest.approx(rb.losses["motion"], rel=1e-4)
    assert float((ra.handles - torch.tensor(h)).abs().max()) > 1.5    # the points moved (2.3 px measured)
