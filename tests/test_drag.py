"""Drag engine: sampling, tracking, losses, the session loop, bad input."""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import threading

import pytest
import torch
import torch.nn.functional as F

from dragd.daemon.edit.drag import (DragConfig, DragInputError, DragSession, _mask_weights,
                               _sample_pixels, motion_loss, sample_features, track_points)

sys.path.insert(0, os.path.dirname(__file__))
from toy_generator import ToyBlobGenerator, unsplit_generator  # noqa: E402


def resized(feat, res):
    return F.interpolate(feat, size=(res, res), mode="bilinear", align_corners=False)


def sample_resized(big, xy):
    """Reference: bilinear sample of an image-size map at pixel coords, border clamped."""
    res = big.shape[-1]
    g = (xy.clamp(0, res - 1) * (2.0 / (res - 1)) - 1).reshape(1, 1, -1, 2)
    out = F.grid_sample(big, g, mode="bilinear", padding_mode="border", align_corners=True)
    return out[0, :, 0].t().reshape(*xy.shape[:-1], big.shape[1])


# ------------------------------------------------------------------ sampling equivalence


@pytest.mark.parametrize("feat_res,res", [(16, 64), (32, 32), (8, 64), (128, 512)])
def test_sampling_at_feature_resolution_matches_resize_then_sample(feat_res, res):
    torch.manual_seed(0)
    C = 5
    # float64: the two definitions agree to rounding error (float32 differs by ~2e-5).
    feat = torch.randn(1, C, feat_res, feat_res, dtype=torch.float64, requires_grad=True)
    xy = torch.rand(300, 2, dtype=torch.float64) * (res - 1)
    borders = torch.tensor([[0, 0], [res - 1, res - 1], [0, res - 1], [res - 1.0, 0.3],
                            [0.2, res - 1.4], [res / 2, 0], [res - 1.5, res - 1.5]], dtype=torch.float64)
    ints = torch.randint(0, res, (50, 2)).double()
    xy = torch.cat([xy, borders, ints])
    ours = sample_features(feat, xy, res)
    ref = sample_resized(resized(feat, res), xy)
    assert torch.allclose(ours, ref, atol=1e-10, rtol=0)
    f32 = sample_features(feat.detach().float(), xy.float(), res)
    assert torch.allclose(f32.double(), ref.detach(), atol=1e-4)
    # Integer pixels: one grid_sample at feature resolution is exactly the resized map.
    big = resized(feat, res)[0]
    ix = ints.long()
    assert torch.allclose(_sample_pixels(feat, ints, res), big[:, ix[:, 1], ix[:, 0]].t(), atol=1e-10)
    # Gradients agree too.
    g = torch.randn_like(ours)
    (ga,) = torch.autograd.grad(ours, feat, g)
    (gb,) = torch.autograd.grad(ref, feat, g)
    assert torch.allclose(ga, gb, atol=1e-10)


# ------------------------------------------------------------------ point tracking


@pytest.mark.parametrize("norm", ["l1", "l2"])
@pytest.mark.parametrize("feat_res,p0,expect", [
    # Features at image resolution: content moves (−1, +1) px, onto the borders and a corner.
    (64, [(20, 30), (1, 10), (30, 62), (1, 62)], [(19, 31), (0, 11), (29, 63), (0, 63)]),
    # Features at half resolution: one feature pixel = 2 image px. (The outermost image
    # pixel reads a clamped feature there, so the border cases stop one pixel short.)
    (32, [(20, 30), (3, 10), (30, 60), (3, 60)], [(18, 32), (1, 12), (28, 62), (1, 62)]),
])
def test_tracking_finds_feature_displaced_by_known_offset_also_at_borders(norm, feat_res, p0, expect):
    torch.manual_seed(1)
    res, r2 = 64, 3
    f0 = torch.randn(1, 8, feat_res, feat_res)
    f1 = torch.roll(f0, shifts=(1, -1), dims=(2, 3))     # content moves by (−1, +1) feature px
    p0 = torch.tensor(p0, dtype=torch.float32)
    expect = torch.tensor(expect, dtype=torch.float32)
    refs = _sample_pixels(f0, p0, res)
    assert torch.equal(track_points(f1, p0, refs, r2, res, norm), expect)
    # Starting the search away from the truth (window still covers it, clipped at borders).
    start = (expect + torch.tensor([2.0, -3.0])).clamp(0, res - 1)
    assert torch.equal(track_points(f1, start, refs, r2, res, norm), expect)


def test_tracking_exact_corner_and_clipped_window():
    torch.manual_seed(2)
    res = 32
    f = torch.randn(1, 6, res, res)
    corners = torch.tensor([[0.0, 0.0], [31.0, 31.0], [0.0, 31.0], [31.0, 0.0]])
    refs = _sample_pixels(f, corners, res)
    start = torch.tensor([[2.0, 1.0], [29.0, 30.0], [1.0, 28.0], [28.0, 2.0]])
    assert torch.equal(track_points(f, start, refs, 3, res), corners)


def test_tracking_stays_put_on_flat_features():
    f = torch.ones(1, 4, 16, 16)
    h = torch.tensor([[5.0, 7.0], [0.0, 15.0]])
    assert torch.equal(track_points(f, h, torch.ones(2, 4), 3, 16), h)


# ------------------------------------------------------------------ motion supervision


def test_motion_loss_gradient_flows_only_through_the_shifted_term():
    torch.manual_seed(3)
    res, r1 = 32, 2
    feat = torch.randn(1, 4, res, res, requires_grad=True)
    h = torch.tensor([[10.0, 12.0]])
    t = torch.tensor([[20.0, 12.0]])                     # d = (1, 0)
    loss = motion_loss(feat, h, t, r1, res)
    (grad,) = torch.autograd.grad(loss, feat)
    off = torch.tensor([(x, y) for y in range(-r1, r1 + 1) for x in range(-r1, r1 + 1)
                        if x * x + y * y <= r1 * r1], dtype=torch.float32)
    q = h + off
    shifted = q + torch.tensor([1.0, 0.0])
    touched = torch.zeros(res, res, dtype=torch.bool)
    touched[shifted[:, 1].long(), shifted[:, 0].long()] = True
    g = grad[0].abs().sum(0)
    assert (g[~touched] == 0).all()                       # e.g. the left-most disc pixel (8, 12)
    assert g[12, 8] == 0 and (g[touched] > 0).all()
    # Same value and gradient as the loss with F(q) an explicit constant.
    const = feat.detach()[0, :, q[:, 1].long(), q[:, 0].long()].t()
    moving = feat[0, :, shifted[:, 1].long(), shifted[:, 0].long()].t()
    ref = (const - moving).abs().mean()                  # authors: F.l1_loss mean per point
    (gref,) = torch.autograd.grad(ref, feat)
    assert torch.allclose(loss, ref) and torch.allclose(grad, gref)


def test_motion_loss_sums_per_point_means_and_is_zero_at_target():
    torch.manual_seed(4)
    res = 32
    feat = torch.randn(1, 3, 16, 16, requires_grad=True)
    h = torch.tensor([[5.0, 6.0], [20.0, 22.0]])
    t = torch.tensor([[9.0, 9.0], [20.0, 10.0]])
    both = motion_loss(feat, h, t, 2, res)
    one = motion_loss(feat, h[:1], t[:1], 2, res) + motion_loss(feat, h[1:], t[1:], 2, res)
    assert torch.allclose(both, one)
    weighted = motion_loss(feat, h, t, 2, res, weights=torch.tensor([0.0, 1.0]))
    assert torch.allclose(weighted, motion_loss(feat, h[1:], t[1:], 2, res))
    at_target = motion_loss(feat, h, h.clone(), 2, res)
    assert at_target.item() == 0
    (g,) = torch.autograd.grad(at_target, feat, allow_unused=True)
    assert g is None or (g == 0).all()


def test_mask_term_equals_resize_definition_when_change_keeps_sign():
    torch.manual_seed(5)
    res, C = 64, 6
    f0 = torch.randn(1, C, 16, 16)
    f = f0 + torch.rand(1, C, 16, 16)                    # F − F0 ≥ 0
    movable = torch.zeros(res, res)
    movable[10:40, 5:30] = 1.0
    movable[45:50, 45:60] = 0.4                          # soft
    w = _mask_weights(movable, (16, 16))
    ours = ((f - f0).abs() * w).sum() / C
    ref = F.l1_loss(resized(f, res) * (1 - movable), resized(f0, res) * (1 - movable))
    assert torch.allclose(ours, ref, rtol=1e-5)
    mixed = f0 + torch.randn(1, C, 16, 16)
    ours_mixed = ((mixed - f0).abs() * w).sum() / C
    ref_mixed = F.l1_loss(resized(mixed, res) * (1 - movable), resized(f0, res) * (1 - movable))
    assert ours_mixed >= ref_mixed - 1e-6               # an upper bound otherwise


# ------------------------------------------------------------------ the session on the toy


@pytest.fixture
def toy():
    return ToyBlobGenerator(resolution=64)


@pytest.fixture
def tiny_real():
    from dragd.daemon.model.stylegan2 import Generator

    torch.manual_seed(0)
    return Generator(resolution=64, z_dim=32, w_dim=32, channel_base=1024, channel_max=32,
                     mapping_layers=2).eval()


def toy_drag(G, offset=(8.0, 5.0)):
    w = torch.zeros(1, G.w_dim)
    c0 = G.centres(w)[0]
    h = c0[0].round()
    return w, c0, h, h + torch.tensor(offset)


def disc_mask(res, centre, radius):
    yy, xx = torch.meshgrid(torch.arange(res, dtype=torch.float32),
                            torch.arange(res, dtype=torch.float32), indexing="ij")
    return (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius ** 2


def test_toy_drag_converges_and_step_never_renders(toy):
    w, c0, h, t = toy_drag(toy)
    s = DragSession(toy, w, [h.tolist()], [t.tolist()])
    results = []
    while True:
        r = s.step()
        results.append(r)
        if r.done:
            break
    assert toy.render_calls == 0                          # the step stops at the feature block
    assert toy.split_calls == len(results)                # optimisation passes get (head, tail)
    assert r.reason == "converged" and r.image is None and r.step < 100
    assert [x.step for x in results] == list(range(len(results)))
    assert float(r.distances[0]) <= 1.0
    assert torch.allclose(r.distances, (t - r.handles).norm(dim=-1))
    # The content under the handle really reached the target (true geometry of the toy).
    c = toy.centres(s.latent)[0]
    true_point = h - c0[0] + c[0]
    # Stop distance 1 px + at most half a pixel diagonal of integer tracking.
    assert (true_point - t).norm() < 1 + math.sqrt(0.5)
    assert all(math.isfinite(v) for x in results for v in x.losses.values())
    assert r.losses["motion"] == 0.0


def test_toy_mask_keeps_the_other_blob_in_place(toy):
    w, c0, h, t = toy_drag(toy)
    mid = (h + t) / 2
    mask = disc_mask(64, mid, 16)
    free = DragSession(toy, w, [h.tolist()], [t.tolist()])
    *_, last_free = free.run()
    moved_free = (toy.centres(free.latent)[0, 1] - c0[1]).norm()
    assert moved_free > 2.0                               # without a mask the other blob follows
    masked = DragSession(toy, w, [h.tolist()], [t.tolist()], mask=mask)
    *_, last = masked.run()
    assert last.reason == "converged"
    c = toy.centres(masked.latent)[0]
    assert (c[1] - c0[1]).norm() < 0.3
    assert (h - c0[0] + c[0] - t).norm() < 1 + math.sqrt(0.5)
    assert last.image is not None and last.image.shape == (1, 3, 64, 64)


def test_handles_already_at_targets_stop_at_once_with_zero_loss(toy):
    w, c0, h, _ = toy_drag(toy)
    s = DragSession(toy, w, [h.tolist(), [40.0, 10.0]], [(h + 0.3).tolist(), [40.0, 10.0]])
    r = s.step()
    assert r.done and r.reason == "converged" and r.step == 0
    assert r.losses["motion"] == 0.0 and r.losses["total"] == 0.0
    assert torch.equal(s.latent, w[:, None].expand(1, toy.num_ws, toy.w_dim))


def test_handle_within_stop_distance_contributes_no_motion_loss(toy):
    w, c0, h, t = toy_drag(toy)
    far = DragSession(toy, w, [[40.0, 10.0]], [[48.0, 14.0]]).step().losses["motion"]
    both = DragSession(toy, w, [h.tolist(), [40.0, 10.0]], [h.tolist(), [48.0, 14.0]]).step()
    assert both.losses["motion"] == pytest.approx(far, rel=1e-6) and far > 0


def test_an_arrived_handle_stays_put_while_another_is_pulled_10_px():
    """The blobs' positions share part of their latent direction, so pulling blob 1 drags blob 0
    along unless something holds it: the paper's loop lets it drift past its stop distance
    (measured 1.38 px), the hold term keeps it within (0.66 px)."""
    G = ToyBlobGenerator()
    w = torch.zeros(1, G.w_dim)
    c0 = G.centres(w)[0]
    a, b = c0.round()
    t = b + torch.tensor([-8.0, 6.0])
    drift = {}
    for method in ("dragd", "draggan"):
        s = DragSession(G, w, [a.tolist(), b.tolist()], [a.tolist(), t.tolist()], method=method, stall_steps=0)
        *_, last = s.run()
        assert last.reason == "converged"
        moved = G.centres(s.latent)[0] - c0
        assert float(moved[1].norm()) > 9                      # blob 1 really was pulled ~10 px
        drift[method] = float(moved[0].norm())
    assert drift["dragd"] <= s.stop_distance < drift["draggan"]


def test_only_the_first_rows_move_and_w_space_shares_one_offset(tiny_real):
    G = tiny_real
    torch.manual_seed(7)
    wplus = G.mapping(torch.randn(1, 32)) + 0.1 * torch.randn(1, G.num_ws, 32)
    for space in ("w+", "w"):
        s = DragSession(G, wplus, [[20, 20]], [[30, 24]], latent_space=space, n_optimized_layers=4)
        for _ in range(3):
            s.step()
        delta = s.latent[:, :4] - wplus[:, :4]
        assert torch.equal(s.latent[:, 4:], wplus[:, 4:])
        assert delta.abs().amax() > 0
        shared = torch.allclose(delta, delta[:, :1].expand_as(delta), atol=1e-6)
        assert shared == (space == "w")


def test_step_limit(toy):
    w, c0, h, t = toy_drag(toy, offset=(12.0, 0.0))
    s = DragSession(toy, w, [h.tolist()], [t.tolist()], max_steps=3)
    rs = [s.step() for _ in range(4)]
    assert [r.done for r in rs] == [False, False, False, True]
    assert rs[-1].reason == "max_steps" and rs[-1].step == 3
    again = s.step()                                      # stays stopped, no further update
    assert again.done and torch.equal(again.handles, rs[-1].handles)


def _far_from_blobs(G, w):
    """The background pixel farthest from both blobs: the latent does not move it."""
    c = G.centres(w)[0]
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    d = torch.stack([(xx - c[i, 0]) ** 2 + (yy - c[i, 1]) ** 2 for i in range(2)]).amin(0)
    y, x = divmod(int(d.argmax()), 64)
    return [float(x), float(y)]


class _Jitter:
    """The toy generator with its blobs pinned and every feature map shifted by one feature
    pixel on every other pass: tracking makes the handle hop between two pixels for ever."""

    def __init__(self, G):
        self.G = G
        self.passes = 0

    def __getattr__(self, name):
        return getattr(self.G, name)

    def synthesize(self, w, **kw):
        out = self.G.synthesize(w, **kw)
        self.passes += 1
        shift = self.passes % 2
        return dataclasses.replace(out, features=[f.roll(shift, dims=-1) for f in out.features])


def test_a_handle_that_oscillates_in_place_ends_as_stalled():
    G = _Jitter(ToyBlobGenerator(position_scale=0.0))         # nothing the drag does moves anything
    w = torch.zeros(1, G.w_dim)
    h = G.centres(w)[0, 0].round()
    t = h + torch.tensor([9.0, 0.0])
    *steps, last = DragSession(G, w, [h.tolist()], [t.tolist()], stall_steps=12).run()
    xs = {float(r.handles[0, 0]) for r in steps}
    assert len(xs) == 2                                        # it hopped back and forth
    assert last.reason == "stalled" and last.step == 12        # the first full window
    *_, last = DragSession(G, w, [h.tolist()], [t.tolist()], stall_steps=0, max_steps=30).run()
    assert last.reason == "max_steps" and last.step == 30


def test_a_handle_that_sits_still_runs_to_the_step_limit(toy):
    """No oscillation, so nothing says the drag cannot still finish: the paper's loop would go
    on to its step limit, and so does ours."""
    w = torch.zeros(1, toy.w_dim)
    h = _far_from_blobs(toy, w)
    t = [h[0] + (8.0 if h[0] < 32 else -8.0), h[1]]
    *_, last = DragSession(toy, w, [h], [t], stall_steps=12, max_steps=40).run()
    assert last.reason == "max_steps" and last.step == 40
    assert float(last.distances[0]) > 7                    # it really did not follow


def test_a_slow_drag_that_keeps_closing_in_is_not_stalled(toy):
    """At lr 1e-3 this drag pauses for up to 31 steps between tracked jumps (measured); the stall
    window stretches with 2e-3/lr, so 20 becomes 40 and the drag reaches its target."""
    w, c0, h, t = toy_drag(toy, offset=(12.0, 0.0))
    *_, last = DragSession(toy, w, [h.tolist()], [t.tolist()], lr=1e-3, stall_steps=20).run()
    assert last.reason == "converged" and last.step > 100


# ------------------------------------------------------------------ run, cancel, previews


def test_run_cancel_event_between_steps_with_previews(toy):
    w, c0, h, t = toy_drag(toy, offset=(12.0, 6.0))
    s = DragSession(toy, w, [h.tolist()], [t.tolist()])
    ev = threading.Event()
    out = []
    for r in s.run(cancel=ev, preview_every=2):
        out.append(r)
        if len(out) == 5:
            ev.set()
    assert len(out) == 6
    assert [r.done for r in out] == [False] * 5 + [True]
    assert out[-1].reason == "cancelled" and out[-1].step == 5 and out[-1].image is not None
    assert [r.image is not None for r in out[:5]] == [True, False, True, False, True]
    assert toy.render_calls == 4                          # three previews + the final image
    assert len(s.history) == 2                           # the cancelled drag counts as finished


def test_run_cancel_callable_and_run_limit_then_continue(toy):
    w, c0, h, t = toy_drag(toy)
    s = DragSession(toy, w, [h.tolist()], [t.tolist()])
    assert list(s.run(cancel=lambda: True))[0].reason == "cancelled"
    first = list(s.run(max_steps=4))
    assert [r.step for r in first] == [0, 1, 2, 3, 4]
    assert first[-1].reason == "max_steps" and first[-1].image is not None
    assert all(r.image is None for r in first[:-1])
    rest = list(s.run())                                  # same point set: carries on
    assert rest[0].step == 4 and rest[-1].reason == "converged"
    assert torch.equal(rest[0].handles, first[-1].handles)


def test_run_rejects_bad_arguments(toy):
    w, c0, h, t = toy_drag(toy)
    s = DragSession(toy, w, [h.tolist()], [t.tolist()])
    for kwargs in (dict(max_steps=0), dict(preview_every=-1), dict(cancel=3)):
        with pytest.raises(DragInputError):
            next(s.run(**kwargs))


# ------------------------------------------------------------------ continue / reset / undo


def test_continue_undo_and_reset(toy):
    w, c0, h, t = toy_drag(toy, offset=(6.0, 0.0))
    s = DragSession(toy, w, [h.tolist()], [t.tolist()])
    start = s.latent
    *_, r1 = s.run()
    assert r1.reason == "converged"
    after1 = s.latent
    assert len(s.history) == 2 and torch.equal(s.history[1].latent, after1)
    # Continue from the current latent with a new point set (second blob, moved up).
    c = toy.centres(after1)[0]
    h2 = c[1].round()
    s.set_points([h2.tolist()], [(h2 + torch.tensor([0.0, -5.0])).tolist()])
    assert torch.equal(s.latent, after1)
    first = s.step()
    assert first.step == 0 and torch.equal(first.handles, h2[None])
    *_, r2 = s.run()
    assert r2.reason == "converged" and len(s.history) == 3
    after2 = s.latent
    # reset_points: the references are re-taken at the current latent and handles.
    s.reset_points()
    feats = toy.synthesize(after2, stop_after_block=s.feature_block).features[-1]
    assert torch.allclose(s._refs, sample_features(feats, s._handles, 64), atol=1e-6)
    assert len(s.history) == 3                            # nothing new to record
    # Undo walks back through finished drags, then refuses.
    s.undo()
    assert torch.equal(s.latent, after1)
    s.undo()
    assert torch.equal(s.latent, start)
    with pytest.raises(DragInputError, match="nothing to undo"):
        s.undo()
    assert len(s.history) == 1


def test_undo_discards_unfinished_progress_and_jumps(toy):
    w, c0, h, t = toy_drag(toy, offset=(6.0, 0.0))
    s = DragSession(toy, w, [h.tolist()], [t.tolist()])
    start = s.latent
    *_, r = s.run()
    done1 = s.latent
    s.set_points([[40.0, 40.0]], [[44.0, 40.0]])
    for _ in range(3):
        s.step()
    assert not torch.equal(s.latent, done1)
    snap = s.undo()                                       # back to the last finished drag
    assert torch.equal(s.latent, done1) and torch.equal(snap.latent, done1)
    assert torch.equal(s.handles, snap.handles)
    s.undo(to=0)
    assert torch.equal(s.latent, start) and torch.equal(s.handles, h[None])
    with pytest.raises(DragInputError, match="out of range"):
        s.undo(to=5)


# ------------------------------------------------------------------ bad input


def _bad_cases(res):
    ok_h, ok_t = [[10.0, 10.0]], [[20.0, 12.0]]
    nan, inf = float("nan"), float("inf")
    zeros = torch.zeros(res, res, dtype=torch.bool)
    mask_elsewhere = torch.zeros(res, res, dtype=torch.bool)
    mask_elsewhere[40:, 40:] = True
    return [
        ("outside", dict(handles=[[10.0, 10.0], [530.0, 12.0]], targets=[[1, 1], [2, 2]]),
         r"handle 1 at \(530\.0, 12\.0\) is outside the 64×64 image"),
        ("target outside", dict(targets=[[-3.0, 12.0]]), "target 0 .* outside"),
        ("nan", dict(handles=[[nan, 1.0]]), "non-finite"),
        ("inf", dict(targets=[[5.0, inf]]), "non-finite"),
        ("no points", dict(handles=[], targets=[]), "at least one"),
        ("bad shape", dict(handles=[[1.0, 2.0, 3.0]]), r"\(x, y\) pairs"),
        ("not numbers", dict(handles="abc"), r"\(x, y\) pairs"),
        ("count mismatch", dict(handles=[[1.0, 1.0], [5.0, 5.0]]), "2 handles but 1 targets"),
        ("duplicates", dict(handles=[[5.0, 5.0], [5.2, 4.9]], targets=[[9, 9], [1, 1]]), "same pixel"),
        ("mask size", dict(mask=torch.ones(32, 32, dtype=torch.bool)), "must be 64×64"),
        ("mask dtype", dict(mask=torch.ones(res, res, dtype=torch.int64)), "dtype"),
        ("mask empty", dict(mask=zeros), "empty"),
        ("mask range", dict(mask=torch.full((res, res), 1.5)), r"\[0, 1\]"),
        ("mask nan", dict(mask=torch.full((res, res), nan)), "NaN"),
        ("handle fixed", dict(mask=mask_elsewhere), "outside the movable region"),
        ("lr zero", dict(lr=0.0), "lr"),
        ("lr negative", dict(lr=-1e-3), "lr"),
        ("lr nan", dict(lr=nan), "lr"),
        ("lambda", dict(lambda_mask=-1.0), "lambda_mask"),
        ("space", dict(latent_space="z"), "latent_space"),
        ("norm", dict(tracking_norm="l3"), "tracking_norm"),
        ("block", dict(feature_block=9), "feature_block"),
        ("layers", dict(n_optimized_layers=0), "n_optimized_layers"),
        ("layers big", dict(n_optimized_layers=99), "n_optimized_layers"),
        ("steps", dict(max_steps=0), "max_steps"),
        ("r1", dict(r1=0), "r1"),
        ("stop", dict(stop_distance=-1.0), "stop_distance"),
        ("stall", dict(stall_steps=-1), "stall_steps"),
        ("method", dict(method="dragan"), "method must be one of"),
        ("unknown", dict(learning_rate=0.1), "unknown"),
        ("latent shape", dict(latent=torch.zeros(1, 3, 8)), "latent must be"),
        ("latent nan", dict(latent=torch.full((1, 8), nan)), "latent contains NaN"),
        ("latent type", dict(latent=[0.0] * 8), "torch tensor"),
    ], ok_h, ok_t


@pytest.mark.parametrize("case", range(33))
def test_bad_input_is_refused_before_any_work(case):
    G = ToyBlobGenerator(resolution=64)
    cases, ok_h, ok_t = _bad_cases(64)
    assert len(cases) == 33
    name, kw, pattern = cases[case]
    args = dict(latent=torch.zeros(1, G.w_dim), handles=ok_h, targets=ok_t)
    args.update(kw)
    with pytest.raises(DragInputError, match=pattern) as info:
        DragSession(G, args.pop("latent"), args.pop("handles"), args.pop("targets"), **args)
    assert isinstance(info.value, ValueError)
    assert G.feature_calls == 0 and G.render_calls == 0


def test_bad_points_and_masks_later_leave_the_session_unchanged(toy):
    w, c0, h, t = toy_drag(toy)
    s = DragSession(toy, w, [h.tolist()], [t.tolist()], config=DragConfig(lr=1e-2))
    calls = toy.feature_calls
    with pytest.raises(DragInputError, match="outside"):
        s.set_points([[1.0, 1.0]], [[70.0, 1.0]])
    with pytest.raises(DragInputError, match="empty"):
        s.set_mask(torch.zeros(64, 64))
    assert toy.feature_calls == calls
    assert torch.equal(s.handles, h[None]) and torch.equal(s.targets, t[None])
    s.set_mask(disc_mask(64, h, 20).float() * 0.5)          # soft masks are fine
    assert s.step().losses["mask"] == 0.0


def test_mask_formats_agree(toy):
    w, c0, h, t = toy_drag(toy)
    m = disc_mask(64, h, 20)
    made = [DragSession(toy, w, [h.tolist()], [t.tolist()], mask=x)._mask
            for x in (m, m.float(), m.to(torch.uint8), m.to(torch.uint8) * 255, m.numpy(), m[None, None])]
    for x in made[1:]:
        assert torch.equal(x, made[0])
    soft = DragSession(toy, w, [h.tolist()], [t.tolist()], mask=m.to(torch.uint8) * 128)._mask
    assert torch.allclose(soft, m.float() * 128 / 255)


# ------------------------------------------------------------------ real StyleGAN2 smoke test


def test_smoke_on_a_tiny_real_generator(tiny_real):
    G = tiny_real
    w = G.mapping(torch.randn(1, 32))
    before = {k: v.clone() for k, v in G.state_dict().items()}
    torgb = []
    hooks = [m.register_forward_hook(lambda *a: torgb.append(1))
             for name, m in G.named_modules() if name.endswith("torgb")]
    s = DragSession(G, w, [[20, 20], [40, 44]], [[30, 24], [36, 40]], lr=0.02)
    assert s.feature_block == 4 and s.r1 == 1 and s.r2 == 2
    rs = [s.step() for _ in range(6)]
    assert torgb == []
    assert all(math.isfinite(v) for r in rs for v in r.losses.values())
    assert not torch.equal(rs[-1].handles, rs[0].handles)
    assert not torch.equal(s.latent, G.to_wplus(w))
    assert all(torch.equal(v, before[k]) for k, v in G.state_dict().items())   # G untouched
    img = s.render()
    assert len(torgb) == 5 and img.shape == (1, 3, 64, 64)
    for hk in hooks:
        hk.remove()


def test_split_latent_generator_gives_the_same_drag(tiny_real):
    S = tiny_real
    assert S.supports_split_latent
    G = unsplit_generator(S)
    w = G.mapping(torch.randn(1, 32, generator=torch.Generator().manual_seed(3)))
    a = DragSession(G, w, [[20, 20]], [[30, 24]], lr=0.02)
    b = DragSession(S, w, [[20, 20]], [[30, 24]], lr=0.02)
    for _ in range(4):
        ra, rb = a.step(), b.step()
        assert torch.equal(ra.handles, rb.handles)
        assert ra.losses["total"] == pytest.approx(rb.losses["total"], rel=1e-4, abs=1e-7)
    assert torch.allclose(a.latent, b.latent, atol=1e-6)
    assert not torch.equal(a.latent, G.to_wplus(w))


def test_default_feature_block_is_the_papers_6th_but_never_the_last():
    from dragd.daemon.edit.drag import default_feature_block
    from dragd.daemon.model.stylegan2 import GeneratorConfig
    # 512 and 1024: block 6 (128 px) as in the paper; smaller models: one block before the last.
    assert [default_feature_block(GeneratorConfig(resolution=r).num_blocks)
            for r in (1024, 512, 256, 128, 64, 32, 8)] == [6, 6, 6, 5, 4, 3, 1]


def test_held_handles_read_the_same_features_with_and_without_windows(tiny_real):
    """Handle 0 is at its target from the start, so its hold term is on for the whole drag:
    read through the feature windows it must give what the whole map gives."""
    G = tiny_real
    assert G.supports_feature_windows
    w = G.mapping(torch.randn(1, 32, generator=torch.Generator().manual_seed(3)))
    h, t = [[20.0, 20.0], [44.0, 40.0]], [[20.0, 20.0], [36.0, 44.0]]
    a = DragSession(G, w, h, t, lr=0.01, stop_distance=3.0)
    b = DragSession(G, w, h, t, lr=0.01, stop_distance=3.0, windows=False)
    for _ in range(10):
        ra, rb = a.step(), b.step()
        assert torch.equal(ra.handles, rb.handles)
        assert ra.losses["motion"] == pytest.approx(rb.losses["motion"], rel=1e-4)
    assert float(ra.distances[0]) <= 3.0                 # still held


def test_subpixel_tracking_finds_a_handle_between_pixels():
    """Features that are the pixel coordinates themselves (bilinear reads are then exact): the
    reference at (10.375, 12.625) is found there to the 1/8-px grid, where the paper's integer
    tracker can only say (10, 13); "dragd" tracks this way below 128 px and stops at 1/128
    of the picture."""
    res = 32
    ys, xs = torch.meshgrid(torch.arange(res, dtype=torch.float32),
                            torch.arange(res, dtype=torch.float32), indexing="ij")
    feat = torch.stack([xs, ys])[None]                                   # [1, 2, 32, 32]
    true = torch.tensor([[10.375, 12.625]])
    refs = sample_features(feat, true, res)
    start = torch.tensor([[11.0, 12.0]])
    assert torch.equal(track_points(feat, start, refs, 3, res), torch.tensor([[10.0, 13.0]]))
    assert torch.allclose(track_points(feat, start, refs, 3, res, subpixel=True), true, atol=1e-6)
    G = ToyBlobGenerator(resolution=64)
    w = torch.zeros(1, G.w_dim)
    s = DragSession(G, w, [[16.0, 16.0]], [[16.0, 26.0]])
    assert s._subpixel and s.stop_distance == 0.5
    p = DragSession(G, w, [[16.0, 16.0]], [[16.0, 26.0]], method="draggan")
    assert not p._subpixel and p.stop_distance == 1.0
    big = DragSession(ToyBlobGenerator(resolution=256), w, [[16.0, 16.0]], [[16.0, 26.0]])
    assert not big._subpixel and big.stop_distance == 1.0   # from 128 px up: the paper's tracker
