"""The landmark benchmark (the paper's Table-1 protocol) on a tiny model, end to end."""
from __future__ import annotations

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
