"""The paper's face-landmark benchmark (Table 1), on our procedural-portrait domain.

For N seeded pairs of generated images A, B: detect landmarks in both; A's landmarks are the
handles, B's the targets; drag A with 1, 5 and all landmarks (step limit 300); detect the
landmarks of the result and report the mean distance to the targets (MD), next to the MD of
doing nothing. Also: time per edit, an FID computed on the landmark CNN's penultimate
features between edited and unedited generated images, and the point tracker's accuracy on
its own (tracked handle positions vs. the detector's landmarks on intermediate images).

    python -m dragd.lab.bench_landmarks --pairs 20 [--model default] [--device cpu]

Distances are reported in pixels of the model's resolution and, for comparison with the
paper's 512-px figures, scaled to 512 px. The subsets of 1 and 5 landmarks are drawn per pair
from a seeded generator, so every run uses the same points.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from ..daemon.edit.drag import DragConfig, DragSession
from . import landmarks


@dataclass
class Row:
    points: str                      # "1", "5" or "all (L)"
    md: float                        # mean distance to targets after the drag, model px
    md_no_edit: float                # before the drag
    md_512: float
    md_no_edit_512: float
    seconds_per_edit: float
    steps_per_edit: float
    fid: float                       # edited vs unedited, landmark-CNN features
    tracking_error: float            # tracker vs detector on intermediate images, model px
    converged: float                 # fraction of edits that reached the stop distance


@dataclass
class Report:
    resolution: int
    pairs: int
    max_steps: int
    device: str
    method: str = DragConfig.method
    lr: float = DragConfig.lr
    rows: list[Row] = field(default_factory=list)

    def table(self) -> str:
        lines = [f"landmark benchmark: {self.pairs} pairs, {self.resolution}-px model, method {self.method}, "
                 f"lr {self.lr:g}, step limit {self.max_steps}, {self.device}",
                 f"{'points':>8} | {'MD no edit':>10} {'MD drag':>8} | {'@512 no edit':>12} {'@512 drag':>9} | "
                 f"{'reduction':>9} | {'s/edit':>7} {'steps':>6} {'conv':>5} | {'FID':>7} | {'track err':>9}"]
        for r in self.rows:
            red = 1 - r.md / r.md_no_edit if r.md_no_edit > 0 else float("nan")
            lines.append(f"{r.points:>8} | {r.md_no_edit:>10.2f} {r.md:>8.2f} | {r.md_no_edit_512:>12.2f} "
                         f"{r.md_512:>9.2f} | {100 * red:>8.1f}% | {r.seconds_per_edit:>7.2f} "
                         f"{r.steps_per_edit:>6.1f} {100 * r.converged:>4.0f}% | {r.fid:>7.3f} | "
                         f"{r.tracking_error:>9.2f}")
        lines.append("paper (FFHQ 512, DragGAN): MD 2.44 / 3.18 / 4.73 for 1 / 5 / 68 points; "
                     "no edit 12.93 / 11.66 / 16.02")
        return "\n".join(lines)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a [N, D] and b [M, D]."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca = torch.cov(a.T) if a.shape[0] > 1 else torch.zeros(a.shape[1], a.shape[1], dtype=a.dtype)
    cb = torch.cov(b.T) if b.shape[0] > 1 else torch.zeros(b.shape[1], b.shape[1], dtype=b.dtype)
    # tr sqrt(ca cb) = tr sqrt(sa cb sa) with sa = ca^½, which is symmetric PSD.
    ea, va = torch.linalg.eigh(ca)
    sa = (va * ea.clamp(min=0).sqrt()) @ va.T
    cross = torch.linalg.eigvalsh(sa @ cb @ sa).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + ca.trace() + cb.trace() - 2 * cross)


class Detector:
    """The landmark CNN, giving coordinates in the drag engine's convention (pixel centres on
    integers; the CNN's are at integer + 0.5) at the resolution of the images it is given."""

    def __init__(self, net):
        self.net = net
        self.device = next(net.parameters()).device

    def landmarks(self, images: torch.Tensor) -> torch.Tensor:
        return landmarks.detect(images.to(self.device), self.net).cpu() - 0.5

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return landmarks.penultimate_features(images.to(self.device), self.net).cpu()


def _dedupe(handles: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Drop landmarks that share a pixel with an earlier one (the engine refuses duplicates)."""
    seen, keep = set(), []
    for j, p in zip(idx.tolist(), handles[idx].round().int().tolist()):
        if tuple(p) not in seen:
            seen.add(tuple(p))
            keep.append(j)
    return torch.tensor(keep, dtype=torch.long)


@torch.no_grad()
def seeded_ws(G, seeds: list[int], truncation: float, device) -> torch.Tensor:
    z = torch.stack([torch.randn(G.cfg.z_dim, generator=torch.Generator().manual_seed(s)) for s in seeds])
    return G.mapping(z.to(device), truncation_psi=truncation)            # [N, num_ws, w_dim]


def run_benchmark(G, detector_net, pairs: int = 20, point_counts=(1, 5, None), max_steps: int = 300,
                  seed: int = 0, truncation: float = 0.7, track_every: int = 10, device="cpu",
                  log=None, method: str = DragConfig.method, lr: float | None = None) -> Report:
    """`lr`: the drag's Adam learning rate; None = DragConfig's (the CLI passes the model's own)."""
    res = G.resolution
    det = Detector(detector_net)
    lr = DragConfig.lr if lr is None else lr
    report = Report(res, pairs, max_steps, str(device), method, lr)
    ws = seeded_ws(G, [seed * 100003 + i for i in range(2 * pairs)], truncation, device)
    with torch.no_grad():
        images = torch.cat([G.synthesize(ws[i:i + 1]).image.cpu() for i in range(2 * pairs)])
    lms = det.landmarks(images)                                           # [2N, L, 2]
    n_lm = lms.shape[1]
    unedited_feats = det.features(images[0::2])
    for count in point_counts:
        k = n_lm if count is None else count
        md, md0, secs, steps, track, conv, edited = [], [], [], [], [], [], []
        for i in range(pairs):
            a, b = 2 * i, 2 * i + 1
            gen = torch.Generator().manual_seed(seed * 7919 + i * 31 + k)
            idx = torch.randperm(n_lm, generator=gen)[:k] if count is not None else torch.arange(n_lm)
            handles = lms[a].clamp(0, res - 1)
            idx = _dedupe(handles, idx)
            targets = lms[b].clamp(0, res - 1)[idx]
            # the paper's protocol: only the step limit ends a drag (no "stalled" stop)
            cfg = DragConfig(max_steps=max_steps, stall_steps=0, method=method, lr=lr)
            session = DragSession(G, ws[a:a + 1], handles[idx], targets, config=cfg)
            t0 = time.perf_counter()
            last = None
            for r in session.run(preview_every=track_every):
                last = r
                if r.image is not None and not r.done:
                    seen = det.landmarks(r.image.cpu())[0, idx]
                    track.append(float((seen - r.handles).norm(dim=1).mean()))
            secs.append(time.perf_counter() - t0)
            steps.append(last.step)
            conv.append(1.0 if last.reason == "converged" else 0.0)
            final = last.image.cpu()
            edited.append(final)
            found = det.landmarks(final)[0, idx]
            md.append(float((found - targets).norm(dim=1).mean()))
            md0.append(float((lms[a, idx] - lms[b, idx]).norm(dim=1).mean()))
            if log:
                log(f"  {k} point(s), pair {i + 1}/{pairs}: MD {md0[-1]:.2f} → {md[-1]:.2f} px in "
                    f"{last.step} steps ({secs[-1]:.1f} s)")
        fid = frechet_distance(det.features(torch.cat(edited)), unedited_feats)
        s = 512 / res
        report.rows.append(Row(points=str(k) if count is not None else f"all ({n_lm})",
                               md=statistics.mean(md), md_no_edit=statistics.mean(md0),
                               md_512=statistics.mean(md) * s, md_no_edit_512=statistics.mean(md0) * s,
                               seconds_per_edit=statistics.mean(secs), steps_per_edit=statistics.mean(steps),
                               fid=fid, tracking_error=statistics.mean(track) if track else math.nan,
                               converged=statistics.mean(conv)))
    return report


def main(argv=None) -> int:
    from ..daemon.model.checkpoints import load_checkpoint
    from ..daemon.model.registry import resolve_model
    from ..daemon.model.device import describe_device, pick_device

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--detector", default=None, help="landmark CNN weights (default: the committed one)")
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--points", default="1,5,all", help="comma-separated counts, 'all' for every landmark")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--method", default=DragConfig.method, help="the drag method (dragd, draggan, freedrag)")
    ap.add_argument("--lr", type=float, help="drag learning rate (default: the model's own)")
    ap.add_argument("--json", help="also write the report as JSON here")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    device = pick_device(args.device)
    loaded = load_checkpoint(resolve_model(args.model), device=device)
    G = loaded.G
    net = landmarks.load(args.detector, device=device)
    counts = [None if p == "all" else int(p) for p in args.points.split(",")]
    log = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    report = run_benchmark(G, net, args.pairs, counts, args.max_steps, args.seed, device=device, log=log,
                           method=args.method, lr=args.lr or loaded.drag_lr)
    report.device = describe_device(device)
    print(report.table())
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(asdict(report), fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
