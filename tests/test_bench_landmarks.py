"""The landmark benchmark (the paper's Table-1 protocol) on a tiny model, end to end."""
from __future__ import annotations

import pytest
import torch

from dragd.daemon.model.checkpoints import load_checkpoint
from dragd.daemon.model.registry import DEFAULT_MODEL_PATH
from dragd.lab import bench_landmarks, landmarks
from dragd.lab.portraits import LANDMARK_NAMES


def test_frechet_distance_recovers_a_mean_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g)
    b = torch.randn(4000, 3, generator=g)
    assert bench_landmarks.frechet_distance(a, b) < 0.02
    shifted = b + torch.tensor([2.0, 0.0, 0.0])
    assert abs(bench_landmarks.frechet_distance(a, shifted) - 4.0) < 0.2
    assert abs(bench_landmarks.frechet_distance(a, 3 * b) - 3 * (3 - 1) ** 2) < 1.0


def test_benchmark_drags_landmarks_towards_their_targets_and_prints_its_table():
    """The shipped model and detector: 30 steps take every row's mean distance well below the
    no-edit distance (measured: 16–22 % lower with 2 pairs at 64 px)."""
    G = load_checkpoint(DEFAULT_MODEL_PATH).G.eval()
    report = bench_landmarks.run_benchmark(G, landmarks.load(), pairs=2, point_counts=(1, 5, None),
                                           max_steps=30, track_every=5)
    assert [r.points for r in report.rows] == ["1", "5", f"all ({len(LANDMARK_NAMES)})"]
    for row in report.rows:
        assert row.md < 0.9 * row.md_no_edit, row
        assert row.steps_per_edit <= 30
        assert row.md_512 == row.md * 512 / G.resolution
    table = report.table()
    assert "MD no edit" in table and "paper" in table and len(table.splitlines()) == 6


def test_local_move_puts_the_content_at_the_point_exactly_where_the_shift_says():
    """The detector-response figure's warp: what was at p is at p + s (a dot's pixel moves
    whole), the picture far away stays, and sigma inf shifts everything."""
    img = torch.zeros(2, 1, 32, 32)
    img[:, 0, 10, 12] = 1.0                         # pixel (x 12, y 10): centre (12.5, 10.5)
    p = torch.tensor([[12.5, 10.5], [12.5, 10.5]])
    s = torch.tensor([[3.0, 0.0], [0.0, -2.0]])
    for sigma in (3.0, float("inf")):
        out = landmarks.local_move(img, p, s, sigma)[:, 0]
        assert float(out[0, 10, 15]) == pytest.approx(1.0, abs=1e-5), sigma
        assert float(out[1, 8, 12]) == pytest.approx(1.0, abs=1e-5), sigma
        assert float(out[0, 10, 12]) < 0.5 and float(out[1, 10, 12]) < 0.5
    marked = img.clone()
    marked[:, 0, 30, 1] = 0.5                       # far from the move
    out = landmarks.local_move(marked, p, s, 3.0)
    assert torch.allclose(out[:, 0, 30, 1], torch.tensor([0.5, 0.5]), atol=1e-4)
    assert float(landmarks.local_move(marked, p, s, float("inf"))[0, 0, 30, 1]) < 0.01


def test_moved_points_are_where_local_move_takes_their_content():
    """The labels of the detector's local-move augmentation: the moved point lands at p + s,
    a far one stays, and for any point the warp reads its new place from where it was (an
    image of its own coordinates, warped, gives back q at moved_points(q))."""
    size = 48
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    coords = torch.stack([xs, ys])[None].repeat(2, 1, 1, 1)             # [2, 2, H, W]
    p = torch.tensor([[20.0, 24.0], [30.5, 18.5]])
    s = torch.tensor([[4.0, 1.0], [-3.0, 2.5]])
    sigma = torch.tensor([6.0, 5.0])
    q = torch.tensor([[[20.0, 24.0], [26.0, 22.0], [2.0, 45.0]],
                      [[30.5, 18.5], [27.0, 23.0], [45.0, 2.0]]])
    x = landmarks.moved_points(q, p, s, sigma)
    assert torch.allclose(x[:, 0], p + s, atol=1e-4)
    assert torch.allclose(x[:, 2], q[:, 2], atol=1e-3)
    assert (x[:, 1] - q[:, 1]).norm(dim=-1).min() > 0.5                # it moved, partly
    warped = landmarks.local_move(coords, p, s, sigma)
    grid = (x / size * 2 - 1)[:, :, None, :]                            # [2, 3, 1, 2]
    read = torch.nn.functional.grid_sample(warped, grid, align_corners=False)[..., 0]
    assert torch.allclose(read.permute(0, 2, 1), q, atol=0.05), read.permute(0, 2, 1) - q
