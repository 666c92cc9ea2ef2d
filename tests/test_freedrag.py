"""FreeDrag's rules (daemon/edit/freedrag.py) and a FreeDrag drag on the toy generator."""
from __future__ import annotations

import os
import sys

import pytest
import torch

from dragd.daemon.edit.drag import DragSession
from dragd.daemon.edit.freedrag import D_MAX, L_EXPECTED, line_search, template_weight

sys.path.insert(0, os.path.dirname(__file__))
from toy_generator import ToyBlobGenerator  # noqa: E402


@pytest.mark.parametrize("loss_end, loss_init", [(0.0, 0.0), (0.1, 0.2), (0.5, 0.2)])
def test_line_search_never_overshoots_the_target(loss_end, loss_init):
    """Advance (L_end ≤ l/2) and step-back (L_end > L_init) both pick a point on the line to the
    target and never past it, also when the target is nearer than one sub-move."""
    res = 64
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(1, 6, 32, 32, generator=g)
    template = torch.randn(9, 6, generator=g)
    for _ in range(50):
        current = torch.rand(2, generator=g) * (res - 1)
        target = (current + (torch.rand(2, generator=g) - 0.5) * 16).clamp(0, res - 1)
        nxt = line_search(feat, current, target, template, loss_end, loss_init, res)
        along = target - current
        u = float((nxt - current) @ along / along.square().sum())
        assert u <= 1 + 1e-5                                         # not past the target
        assert float((current + u * along - nxt).norm()) < 1e-4      # on the line to it
        if loss_end <= 0.5 * L_EXPECTED:
            assert 0 < u and float((nxt - current).norm()) <= D_MAX * res / 128 + 1e-5


def test_line_search_keeps_the_point_while_the_content_catches_up():
    feat = torch.randn(1, 6, 32, 32)
    current, target = torch.tensor([10.0, 10.0]), torch.tensor([30.0, 20.0])
    assert torch.equal(line_search(feat, current, target, torch.randn(9, 6), 0.2, 0.25, 64), current)


def test_template_weight_follows_good_matches_and_keeps_memory_on_bad_ones():
    lam = template_weight(torch.tensor([0.0, 0.2 * L_EXPECTED, 0.8 * L_EXPECTED]))
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
