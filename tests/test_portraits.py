"""The procedural portrait domain: renderer determinism, geometry, looks, and the committed
landmark detector."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from dragd.lab import landmarks as lm
from dragd.lab import portraits as P

NAMES = P.LANDMARK_NAMES
IDX = {n: i for i, n in enumerate(NAMES)}


def luminance(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> [B, H, W] in [0, 1]."""
    rgb = (images + 1) / 2
    return 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]


def sample_along(images: torch.Tensor, points: torch.Tensor, dirs: torch.Tensor, reach: float,
                 step: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear samples of images [B, C, H, W] on lines point + s * dir, s in
    [-reach, reach] (pixels; pixel centres at integer + 0.5). Returns (s [S], [B, C, S])."""
    s = torch.arange(-reach, reach + 1e-6, step)
    xy = points[:, None, :] + s[None, :, None] * dirs[:, None, :]                # [B, S, 2]
    H, W = images.shape[-2:]
    grid = torch.stack([xy[..., 0] / W * 2 - 1, xy[..., 1] / H * 2 - 1], dim=-1)[:, None]
    return s, F.grid_sample(images, grid, mode="bilinear", align_corners=False)[:, :, 0]


def image_direction(p: P.PortraitParams, head_angle: torch.Tensor) -> torch.Tensor:
    """[B, 2] unit image direction of a head-frame angle (0 = +u, pi/2 = down)."""
    a = head_angle + p.roll
    return torch.stack([a.cos(), a.sin()], dim=-1)


# --------------------------------------------------------------------------------------
# Determinism, shapes, variety
# --------------------------------------------------------------------------------------

def test_deterministic_per_seed_and_independent_of_the_batch():
    seeds = [5, 17, 3, 123456, 9]
    images, marks = P.render_seeds(seeds)
    again, again_marks = P.render_seeds(seeds)
    assert torch.equal(images, again) and torch.equal(marks, again_marks)
    # The same seeds in other company, order and batch size.
    alone, alone_marks = P.render_seeds([3])
    assert torch.equal(alone[0], images[2]) and torch.equal(alone_marks[0], marks[2])
    mixed, mixed_marks = P.render_seeds([9, 77, 78, 79, 5] + list(range(1000, 1030)))
    assert torch.equal(mixed[0], images[4]) and torch.equal(mixed[4], images[0])
    assert torch.equal(mixed_marks[4], marks[0])
    # Parameters too: a sub-batch of a big batch equals the small batch.
    big = P.sample_params(list(range(40)))
    small = P.sample_params([7, 30])
    for name in ("scale", "eye_open_l", "hair", "noise", "hairline"):
        assert torch.equal(getattr(big, name)[[7, 30]], getattr(small, name)), name


def test_shapes_range_and_resolution_independent_geometry():
    images, marks = P.render_seeds(range(6))
    assert images.shape == (6, 3, 128, 128) and images.dtype == torch.float32
    assert marks.shape == (6, len(NAMES), 2)
    assert images.min() >= -1 and images.max() <= 1 and torch.isfinite(images).all()
    assert images.std() > 0.2                                   # not a flat picture
    assert (marks > 4).all() and (marks < 124).all()            # well inside the frame

    big, big_marks = P.render_seeds(range(6), resolution=256)
    assert big.shape == (6, 3, 256, 256)
    # Geometry is defined in normalised coordinates: landmarks scale with the resolution
    # (pixel centres at integer + 0.5 make this exact) ...
    torch.testing.assert_close(big_marks, marks * 2, rtol=0, atol=1e-4)
    # ... and the 256 render, box-filtered, is close to the 128 one.
    assert (F.avg_pool2d(big, 2) - images).abs().mean() < 0.03


def test_different_seeds_give_different_portraits():
    images, marks = P.render_seeds(range(8))
    flat = images.flatten(1)
    diffs = (flat[:, None] - flat[None]).abs().mean(-1)
    off_diagonal = diffs[~torch.eye(8, dtype=torch.bool)]
    assert off_diagonal.min() > 0.05
    # The faces themselves vary, not only the backdrop.
    spread = marks.std(dim=0).mean()
    assert spread > 2.0


def test_parameters_span_the_documented_variety():
    p = P.sample_params(range(2000))
    assert (p.mouth_open > 0.02).float().mean().item() == pytest.approx(0.4, abs=0.05)
    assert (p.eye_open_l < 0.6).float().mean().item() == pytest.approx(0.15, abs=0.04)
    assert p.yaw.min() < -0.25 and p.yaw.max() > 0.25
    assert p.roll.min() < -0.15 and p.roll.max() > 0.15
    assert p.hair.std(0).min() > 0.1 and p.skin.std(0).min() > 0.1


# --------------------------------------------------------------------------------------
# Landmarks land on the drawn features
# --------------------------------------------------------------------------------------

def dark_centroid(lum: torch.Tensor, centre: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """[B, 2] centroid (pixels) of the darkest pixels within radius [B] of centre [B, 2]:
    the pixels within 0.05 of the minimum, weighted by how much darker they are."""
    B, H, W = lum.shape
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    near = (xs - centre[:, 0, None, None]) ** 2 + (ys - centre[:, 1, None, None]) ** 2 \
        < radius[:, None, None] ** 2
    masked = torch.where(near, lum, torch.full_like(lum, 9.0))
    floor = masked.flatten(1).min(1).values[:, None, None]
    weight = (floor + 0.05 - masked).clamp(min=0)
    total = weight.sum((1, 2))
    return torch.stack([(weight * xs).sum((1, 2)) / total, (weight * ys).sum((1, 2)) / total], -1)


def test_pupils_are_the_darkest_blobs_of_the_eyes():
    # Open eyes and hair lighter than the pupil, so the lash line is not as dark as it.
    p = P.sample_params(range(400))
    keep = (p.eye_open_l > 0.8) & (p.eye_open_r > 0.8) & (p.hair.mean(1) > 0.3)
    p = p.select(keep.nonzero()[:, 0][:24])
    assert p.batch_size >= 12
    images, marks = P.render(p, resolution=256)
    lum = luminance(images)
    radius = (p.eye_half_width * p.scale * 128 * 0.8)                   # pixels at 256
    for name in ("pupil_left", "pupil_right"):
        err = (dark_centroid(lum, marks[:, IDX[name]], radius) - marks[:, IDX[name]]).norm(dim=-1)
        assert err.median() < 0.6 and err.max() < 1.5, (name, err)


def test_nostrils_are_dark_blobs():
    p = P.sample_params(range(24))
    images, marks = P.render(p, resolution=256)
    lum = luminance(images)
    radius = (p.nostril_x * p.scale * 128 * 0.7)
    for name in ("nostril_left", "nostril_right"):
        err = (dark_centroid(lum, marks[:, IDX[name]], radius) - marks[:, IDX[name]]).norm(dim=-1)
        assert err.median() < 1.0, (name, err)


def edge_offsets(images, p, marks, name, head_angle, reach=4.0):
    """Distance (pixels) from a landmark to the nearest strong colour edge on the line
    through it along head_angle: strong = a local maximum of the colour gradient at least
    0.3 of the largest one on the line."""
    s, vals = sample_along(images, marks[:, IDX[name]], image_direction(p, head_angle), reach)
    grad = (vals[..., 2:] - vals[..., :-2]).norm(dim=1)                          # [B, S - 2]
    peak = (grad[:, 1:-1] >= grad[:, :-2]) & (grad[:, 1:-1] >= grad[:, 2:])
    strong = peak & (grad[:, 1:-1] >= 0.3 * grad.amax(1, keepdim=True))
    dist = torch.where(strong, s[2:-2].abs().expand_as(strong), torch.full_like(strong, 99.0, dtype=s.dtype))
    return dist.amin(1)


def test_outline_landmarks_sit_on_edges():
    p = P.sample_params(range(32))
    images, marks = P.render(p, resolution=256)
    down = torch.full_like(p.yaw, math.pi / 2)
    # (landmark, direction across its edge, share that must be within 2 px). The lips'
    # edge against the skin is soft in colour, and the parting line nearby is stronger.
    checks = [("chin", down, 0.95), ("jaw_left_low", torch.full_like(p.yaw, math.radians(125)), 0.95),
              ("jaw_right_low", torch.full_like(p.yaw, math.radians(55)), 0.95),
              ("lip_upper_top", down, 0.7), ("lip_lower_bottom", down, 0.7)]
    for name, angle, share in checks:
        off = edge_offsets(images, p, marks, name, angle)
        assert off.median() <= 1.0 and (off <= 2.0).float().mean() >= share, (name, off)
    # The lid apexes bound the eye opening: checked on open eyes only.
    open_eyes = (p.eye_open_l > 0.6) & (p.eye_open_r > 0.6)
    for name in ("eye_left_top", "eye_right_bottom"):
        off = edge_offsets(images, p, marks, name, down)[open_eyes]
        assert off.median() <= 1.0, (name, off)


def test_landmark_names_match_the_geometry():
    """Left/right, above/below as the names say, in the upright head frame."""
    p = P.sample_params(range(200))
    marks = P.landmarks(p)
    centre = (p.center + 1) * 64
    rel = marks - centre[:, None]
    c, s = p.roll.cos()[:, None], p.roll.sin()[:, None]
    x, y = rel[..., 0] * c + rel[..., 1] * s, -rel[..., 0] * s + rel[..., 1] * c     # unrolled
    X, Y = (lambda n: x[:, IDX[n]]), (lambda n: y[:, IDX[n]])
    left_to_right = [("jaw_left_high", "jaw_left_low", "chin", "jaw_right_low", "jaw_right_high"),
                     ("brow_left_outer", "brow_left_mid", "brow_left_inner", "brow_right_inner",
                      "brow_right_mid", "brow_right_outer"),
                     ("eye_left_outer", "eye_left_inner", "eye_right_inner", "eye_right_outer"),
                     ("nostril_left", "nostril_right"), ("mouth_left", "mouth_right")]
    for row in left_to_right:
        for a, b in zip(row, row[1:]):
            assert (X(a) < X(b)).all(), (a, b)
    top_to_bottom = [("brow_left_mid", "eye_left_top", "eye_left_bottom", "nose_tip",
                      "lip_upper_top", "lip_upper_inner", "chin"),
                     ("lip_upper_inner", "lip_lower_inner"), ("lip_lower_inner", "lip_lower_bottom"),
                     ("brow_right_mid", "eye_right_top"), ("eye_right_bottom", "nostril_right")]
    for column in top_to_bottom:
        for a, b in zip(column, column[1:]):
            assert (Y(a) <= Y(b)).all(), (a, b)
    for side in ("left", "right"):
        inside = (Y(f"eye_{side}_top") < Y(f"pupil_{side}")) & (Y(f"pupil_{side}") < Y(f"eye_{side}_bottom"))
        open_eye = getattr(p, "eye_open_" + side[0]) > 0.5
        assert inside[open_eye].all()


def test_landmarks_follow_the_pose():
    p = P.sample_params(range(16))
    base = P.landmarks(p)
    moved = P.sample_params(range(16))
    moved.center = p.center + torch.tensor([0.1, -0.05])
    torch.testing.assert_close(P.landmarks(moved) - base,
                               torch.tensor([0.1, -0.05]).expand_as(base) * 64, rtol=0, atol=1e-3)
    rolled = P.sample_params(range(16))
    rolled.roll = p.roll + 0.1
    centre = (p.center + 1) * 64                                   # pixels
    rel = base - centre[:, None]
    c, s = math.cos(0.1), math.sin(0.1)
    expect = torch.stack([rel[..., 0] * c - rel[..., 1] * s, rel[..., 0] * s + rel[..., 1] * c], -1)
    torch.testing.assert_close(P.landmarks(rolled) - centre[:, None], expect, rtol=0, atol=1e-3)


@settings(max_examples=40, deadline=None)
@given(st.floats(-0.3, 0.3), st.floats(-0.6, 0.6))
def test_yaw_inverse_matches_the_landmark_transform(yaw, fu):
    p = P.sample_params([0])
    p.yaw = torch.tensor([yaw])
    head_u = P._face_to_head(torch.tensor([fu]), p)
    back = P._head_to_face(head_u.view(1, 1, 1), p)
    assert abs(back.item() - fu) < 1e-5
    # Turning the face compresses it towards the silhouette but keeps the order.
    assert P._face_to_head(torch.tensor([fu + 0.01]), p).item() > head_u.item()


def test_feature_windows_never_clip_what_they_draw(monkeypatch):
    p = P.sample_params(range(2000, 2048))
    reference, _ = P.render(p)
    original = P._Window.around

    def wider(x, y, res):
        w = original(x, y, res)
        width, height = min(res, w.width + 16), min(res, w.height + 16)
        return P._Window((w.x0 - 8).clamp(0, res - width), (w.y0 - 8).clamp(0, res - height),
                         width, height, res)

    monkeypatch.setattr(P._Window, "around", staticmethod(wider))
    widened, _ = P.render(p)
    assert torch.equal(widened, reference)


# --------------------------------------------------------------------------------------
# Anti-aliasing
# --------------------------------------------------------------------------------------

def test_edges_are_anti_aliased():
    """The pixel under an outline landmark mixes the colours on either side of the edge."""
    p = P.sample_params(range(64))
    images, marks = P.render(p)
    fractions = []
    for name, angle in (("chin", math.pi / 2), ("jaw_left_low", math.radians(125)),
                        ("jaw_right_low", math.radians(55))):
        pt = marks[:, IDX[name]]
        d = image_direction(p, torch.full_like(p.yaw, angle))
        inside = sample_at(images, pt - 2.5 * d)
        outside = sample_at(images, pt + 2.5 * d)
        edge = sample_at(images, pt.floor() + 0.5)          # the pixel holding the landmark
        span = inside - outside
        t = ((edge - outside) * span).sum(1) / span.square().sum(1).clamp(min=1e-6)
        contrast = span.norm(dim=1) > 0.15
        fractions.append(((t > 0.12) & (t < 0.88))[contrast].float())
    mixed = torch.cat(fractions).mean()
    assert mixed > 0.4, mixed


def sample_at(images: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """[B, 3] colours at pixel coordinates xy [B, 2] (nearest pixel)."""
    col = xy[:, 0].floor().long().clamp(0, images.shape[-1] - 1)
    row = xy[:, 1].floor().long().clamp(0, images.shape[-2] - 1)
    return images[torch.arange(len(xy)), :, row, col]


def test_coverage_ramps_over_one_pixel():
    d = torch.linspace(-1, 1, 201).view(1, 1, -1)
    cov = P._coverage(d, torch.ones(1, 1, 1))
    assert cov[..., d[0, 0] <= -0.5].eq(1).all() and cov[..., d[0, 0] >= 0.5].eq(0).all()
    assert (cov.diff() <= 0).all()
    assert cov[0, 0, 100].item() == pytest.approx(0.5)


# --------------------------------------------------------------------------------------
# Devices and the committed detector
# --------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    cpu, cpu_marks = P.render_seeds(range(8))
    gpu, gpu_marks = P.render_seeds(range(8), device="cuda")
    assert (gpu.cpu() - cpu).abs().max() < 1e-3
    torch.testing.assert_close(gpu_marks.cpu(), cpu_marks, rtol=0, atol=1e-3)


def test_committed_detector_is_accurate_on_held_out_renders():
    model = lm.load()
    seeds = range(900_000, 900_256)                 # held out, and not the eval default
    err = lm.errors(model, seeds)
    stats = lm.summary(err)
    assert stats["mean"] < 0.5, stats


def test_detector_scales_to_other_resolutions_and_gives_features():
    model = lm.load()
    images, marks = P.render_seeds(range(900_300, 900_316), resolution=256)
    found = lm.detect(images, model)
    assert found.shape == marks.shape
    assert (found - marks).norm(dim=-1).mean() < 2.0            # 256 px: twice the 128 error
    feats = lm.penultimate_features(images, model)
    assert feats.shape[0] == 16 and feats.dim() == 2 and torch.isfinite(feats).all()
    # Different portraits give different features.
    assert (feats[0] - feats[1]).abs().sum() > 0


def test_training_seeds_never_touch_the_held_out_range():
    cfg = lm.TrainConfig(batch=8)
    assert lm._train_seeds(cfg, 0).min() >= lm.HELD_OUT_SEEDS_END
    with pytest.raises(ValueError):
        lm.errors(lm.load(), [lm.HELD_OUT_SEEDS_END + 3])


def test_latent_portraits_are_smooth_in_z_and_cover_the_seed_variety():
    z = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    p = P.latent_params(z)
    seeded = P.sample_params(range(400))
    for name in ("scale", "yaw", "mouth_open", "eye_open_l", "smile", "hair_length"):
        lo, hi = getattr(seeded, name).min(), getattr(seeded, name).max()
        vals = getattr(p, name)
        slack = 0.05 * (hi - lo)          # 400 seeds come near the ends of a range, not onto them
        assert lo - slack <= vals.min() and vals.max() <= hi + slack, name
        assert vals.std() > 0.2 * getattr(seeded, name).std(), name
    # the renderer's only per-pixel noise (grain) is off, the blotches are smooth
    assert (p.noise[:, 1] == 0).all() and p.noise[:, 0].abs().max() > 0.1
    # a small step in z moves the picture a little, a large one a lot
    img, _ = P.render_latents(z[:8], 64)
    near, _ = P.render_latents(z[:8] + 0.01, 64)
    far, _ = P.render_latents(z[:8] + 1.0, 64)
    assert (near - img).abs().mean() < 0.1 * (far - img).abs().mean()
    with pytest.raises(ValueError, match="D ≥"):
        P.latent_params(torch.zeros(2, P.LATENT_DIMS - 1))


def test_latent_dims_is_what_the_parameter_table_reads():
    src = P._LatentSource(torch.zeros(1, P.LATENT_DIMS))
    P._draw_params(src, torch.zeros(1, dtype=torch.long), "cpu")
    assert src.used == P.LATENT_DIMS
