"""The report card of a generator on the procedural-portrait domain: what the README quotes.

    python -m dragd.lab.eval_model MODEL [--samples 5000] [--inversions 20] [--pairs 20]
                                         [--parts fid,inversion,landmarks] [--json OUT]
                                         [--detector WEIGHTS]

* **FID** on the landmark CNN's pooled features (`lab/landmarks.py`) between `--samples`
  generated images (z from seeds 0…N−1, ψ = 1) and as many renders of held-out seeds
  (0…N−1: the renderer's training seeds start at 1,000,000, and a distilled model never sees
  a seed render at all). Both sets are seen by the CNN at its own 128 px.
* **Inversion**: `--inversions` held-out renders (seeds 900000…) at the model's resolution,
  PTI with the `fast` preset; PSNR of the tuned reconstruction against the render.
* **Landmarks**: the paper's Table-1 protocol (`lab/bench_landmarks.py`) with 1, 5 and all
  points, at the model's own drag learning rate.

MODEL is anything `dragd models` resolves (a registry name or a file).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from . import landmarks
from .bench_landmarks import frechet_distance, run_benchmark, seeded_ws
from .portraits import render_seeds

INVERSION_SEED0 = 900_000


@torch.no_grad()
def sample_images(G, seeds: range, batch: int = 25, truncation: float = 1.0) -> torch.Tensor:
    """[N, 3, R, R] generated images, z seeded as the landmark benchmark seeds them."""
    device = next(G.parameters()).device
    return torch.cat([G.synthesize(seeded_ws(G, list(seeds[i:i + batch]), truncation, device))
                      .image.float().clamp(-1, 1).cpu() for i in range(0, len(seeds), batch)])


@torch.no_grad()
def features(net, images_fn, n: int, batch: int = 100) -> torch.Tensor:
    """Pooled landmark-CNN features of n images produced batch by batch (bounded memory)."""
    return torch.cat([landmarks.penultimate_features(images_fn(range(i, min(i + batch, n))), net)
                      for i in range(0, n, batch)])


def fid(G, net, n: int) -> float:
    fake = features(net, lambda seeds: sample_images(G, seeds), n)
    real = features(net, lambda seeds: render_seeds(list(seeds), 128)[0], n)
    return frechet_distance(fake, real)


def inversion_psnrs(G, n: int, preset: str = "fast") -> list[float]:
    from ..daemon.edit.inversion import invert
    from ..daemon.edit.perceptual import psnr

    out = []
    for i in range(n):
        target, _ = render_seeds([INVERSION_SEED0 + i], G.resolution)
        result = invert(G, target, settings=preset)
        out.append(float(psnr(result.reconstruction().clamp(-1, 1), target)))
    return out


def main(argv=None) -> int:
    from ..daemon.model.checkpoints import load_checkpoint
    from ..daemon.model.registry import resolve_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--inversions", type=int, default=20)
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--parts", default="fid,inversion,landmarks")
    ap.add_argument("--lr", type=float, help="drag learning rate (default: the model's own)")
    ap.add_argument("--detector", help="landmark CNN for the landmarks part (default: the committed "
                                       "one, which the FID always uses), e.g. "
                                       "lab/assets/landmarks_follow.safetensors")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    unknown = parts - {"fid", "inversion", "landmarks"}
    if unknown:
        ap.error(f"unknown part(s) {sorted(unknown)}; choose from fid, inversion, landmarks")
    loaded = load_checkpoint(resolve_model(args.model))
    G = loaded.G.float().eval()
    net = landmarks.load()
    report: dict = {"model": args.model, "resolution": G.resolution}
    say = lambda m: print(m, flush=True)   # noqa: E731
    if "fid" in parts:
        t0 = time.perf_counter()
        report["fid"] = fid(G, net, args.samples)
        say(f"FID (landmark-CNN features, {args.samples} samples vs {args.samples} renders): "
            f"{report['fid']:.3f} ({time.perf_counter() - t0:.0f} s)")
    if "inversion" in parts:
        t0 = time.perf_counter()
        ps = inversion_psnrs(G, args.inversions)
        report["inversion_psnr"] = ps
        say(f"inversion, fast preset, {len(ps)} held-out renders: PSNR mean {statistics.mean(ps):.2f} dB, "
            f"min {min(ps):.2f}, max {max(ps):.2f} ({time.perf_counter() - t0:.0f} s)")
    if "landmarks" in parts:
        bench = run_benchmark(G, landmarks.load(args.detector), pairs=args.pairs,
                              lr=args.lr or loaded.drag_lr)
        report["landmarks"] = [r.__dict__ for r in bench.rows]
        say(bench.table())
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
