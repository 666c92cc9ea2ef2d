#!/usr/bin/env python
"""dragd's drag loop side by side with the authors' (XingangPan/DragGAN, viz/renderer.py).

Needs a checkout of the authors' repository (never part of this one):

    git clone https://github.com/XingangPan/DragGAN /tmp/DragGAN
    OMP_NUM_THREADS=1 nice python benchmarks/bench_peer.py --draggan /tmp/DragGAN [--res 256]

With their code it writes an NVIDIA-format network pickle (their Generator with random
weights, pickled as their training loop does), loads it with their legacy.py and with our
restricted loader, and takes the start latents from their renderer (`init_network`: seed →
z → mapping, ψ 0.7); ours start from the same tensors. The task set: seeds 0–7, 1 or 3 handles
each 10–25 px from its target, step limit 300, lr 2e-3, no mask. Each step of their loop is
one call of the renderer's drag step (`_render_drag_impl` with is_drag: a full synthesis, their
point tracking and motion supervision, one Adam update); `render()` around it only adds a
watermark and GUI timing. Every side of a task advances one step in turn, in one process, on
one thread, so load on the machine hits all sides alike.

Printed per side: median s/step, steps, s/edit, mean final handle→target distance, stop
reasons and convergence rate (each side by its own stop rule: theirs max(2·res/512, 2) px,
ours `stop_distance`), the same distance for where the handles' content is found by one
common tracker (`content_positions`), plus the ratios against the authors' loop. `--ours NAME:key=value,...`
(repeatable) adds variants of our DragConfig, e.g. `--ours paper:method=draggan,stall_steps=0`.

Modules their code imports but this never uses (PIL for the watermark, matplotlib colour maps,
requests, click) are stubbed when missing. Exit status 2 without a checkout.
"""
from __future__ import annotations

import argparse
import ast
import functools
import importlib.util
import os
import pickle
import statistics
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOW_TO_GET = ("bench_peer.py needs a checkout of the authors' code:\n"
              "    git clone https://github.com/XingangPan/DragGAN /tmp/DragGAN\n"
              "    python benchmarks/bench_peer.py --draggan /tmp/DragGAN")


@dataclass
class Side:
    name: str
    step_s: list = field(default_factory=list)      # every step of every task
    edits: list = field(default_factory=list)       # (seconds, steps, final distance, reason)


def _stub_modules() -> None:
    """Stand-ins for what their renderer imports for the GUI only."""
    spec = importlib.util.spec_from_file_location("verify_reference", REPO / "benchmarks" / "verify_reference.py")
    vr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vr)
    vr._stub_missing_modules()                                  # requests, click, pkg_resources, scipy
    if importlib.util.find_spec("PIL") is None:                 # watermark and to_pil only
        pil = types.ModuleType("PIL")
        for sub in ("Image", "ImageDraw", "ImageFont"):
            setattr(pil, sub, types.ModuleType(f"PIL.{sub}"))
            sys.modules[f"PIL.{sub}"] = getattr(pil, sub)
        sys.modules["PIL"] = pil
    if importlib.util.find_spec("matplotlib") is None:          # colour maps of feature views only
        mpl = types.ModuleType("matplotlib")
        mpl.cm = types.ModuleType("matplotlib.cm")
        sys.modules["matplotlib"], sys.modules["matplotlib.cm"] = mpl, mpl.cm


def write_their_pickle(path: Path, res: int, seed: int) -> None:
    """Their Generator and Discriminator with random weights, pickled as their training loop does
    (persistent classes: the pickle carries their source)."""
    import torch
    from training.networks_stylegan2 import Discriminator, Generator

    torch.manual_seed(seed)
    common = dict(c_dim=0, img_resolution=res, img_channels=3)
    synth = dict(channel_base=16384, channel_max=512, num_fp16_res=0, conv_clamp=None)
    G = Generator(z_dim=512, w_dim=512, mapping_kwargs=dict(num_layers=8), **common, **synth).eval()
    D = Discriminator(**common, channel_base=16384, channel_max=512).eval()
    with torch.no_grad():                         # a trained model's average w is not 0
        G.mapping.w_avg.copy_(torch.randn(512) * 0.5)
    data = dict(G=G, D=D, G_ema=G, augment_pipe=None, training_set_kwargs=None)
    with open(path, "wb") as f:
        pickle.dump({k: v.requires_grad_(False) if v is not None else v for k, v in data.items()}, f)


def make_tasks(res: int, seeds, counts, lo: float, hi: float):
    """[(seed, handles [(x, y)], targets)] with integer pixels, handles ≥ 16·res/256 from the
    border, targets lo…hi px away and on the image, no two handles on one pixel."""
    import torch

    margin = max(4, round(16 * res / 256))
    tasks = []
    for seed in seeds:
        for n in counts:
            g = torch.Generator().manual_seed(1000 * seed + n)
            handles, targets = [], []
            while len(handles) < n:
                h = torch.randint(margin, res - margin, (2,), generator=g).float()
                ang = float(torch.rand((), generator=g)) * 2 * torch.pi
                dist = lo + (hi - lo) * float(torch.rand((), generator=g))
                t = (h + dist * torch.tensor([torch.cos(torch.tensor(ang)), torch.sin(torch.tensor(ang))])).round()
                if not ((t >= margin) & (t <= res - 1 - margin)).all() or tuple(h.tolist()) in map(tuple, handles):
                    continue
                handles.append(h.tolist())
                targets.append(t.tolist())
            tasks.append((seed, handles, targets))
    return tasks


class TheirLoop:
    """One drag of the authors' renderer; points in their (row, col) order."""

    def __init__(self, renderer, pkl: str, seed: int, handles, targets, lr: float):
        import dnnlib

        self.r = renderer            # one for all drags: it caches the loaded network
        self.args = dict(pkl=pkl, w0_seed=seed, w_load=None, w_plus=True, reset_w=True, lr=lr,
                         trunc_psi=0.7, trunc_cutoff=None, noise_mode="const", input_transform=None)
        self.r.init_network(dnnlib.EasyDict(), **self.args)
        self.points = [[int(y), int(x)] for x, y in handles]
        self.targets = [[int(y), int(x)] for x, y in targets]
        self.updates = 0

    @property
    def w0(self):
        return self.r.w0

    def step(self):
        """One drag step; (stopped, tracked handles as (x, y))."""
        import dnnlib

        res = dnnlib.EasyDict()
        self.r._render_drag_impl(res, points=self.points, targets=self.targets, mask=None,
                                 lambda_mask=20, feature_idx=5, r1=3, r2=12, is_drag=True,
                                 trunc_psi=0.7, noise_mode="const")
        if not res.stop:
            self.updates += 1
        return res.stop, [(p[1], p[0]) for p in res.points]


@functools.lru_cache(maxsize=1)
def _start_features(G, w0_bytes: bytes, block: int):
    import torch
    w0 = torch.frombuffer(bytearray(w0_bytes), dtype=torch.float32).reshape(1, G.num_ws, G.w_dim)
    with torch.no_grad():
        return G.synthesize(w0, stop_after_block=block, render=False).features[block - 1]


def content_positions(G, w0, w, handles, reported):
    """Where the handles' starting content is in the image of latent w, found the same way for
    every side: L2 nearest neighbour of each handle's starting feature (our feature block)
    within the paper's tracking radius of the position the side reports. FreeDrag's reported
    point is where it searched, not where the content went: this checks it."""
    import torch
    from dragd.daemon.edit.drag import default_feature_block, sample_features, track_points

    block = default_feature_block(G.num_blocks)
    f0 = _start_features(G, w0.contiguous().numpy().tobytes(), block)
    with torch.no_grad():
        f1 = G.synthesize(w, stop_after_block=block, render=False).features[block - 1]
        refs = sample_features(f0, torch.tensor(handles, dtype=torch.float32), G.resolution)
        r2 = max(1, round(12 / 512 * G.resolution))
        found = track_points(f1, torch.tensor(reported, dtype=torch.float32), refs, r2, G.resolution, "l2")
    return found.tolist()


def _distance(handles, targets) -> float:
    return statistics.mean(((hx - tx) ** 2 + (hy - ty) ** 2) ** 0.5
                           for (hx, hy), (tx, ty) in zip(handles, targets))


def run_task(task, pkl, G, renderer, variants, max_steps, lr, sides, log):
    import numpy as np
    import torch
    from dragd.daemon.edit.drag import DragSession

    seed, handles, targets = task
    theirs = TheirLoop(renderer, pkl, seed, handles, targets, lr)
    w0 = theirs.w0.detach().clone().float()
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, 512)).float()
    with torch.no_grad():
        mapping_diff = float((G.mapping(z, truncation_psi=0.7) - w0).abs().max())
    ours = [DragSession(G, w0, handles, targets, lr=lr, max_steps=max_steps, **kw) for _, kw in variants]
    live = [True] * (1 + len(ours))
    secs = [0.0] * len(live)
    last = [None] * len(live)
    while any(live):
        if live[0]:
            t0 = time.perf_counter()
            stop, pts = theirs.step()
            dt = time.perf_counter() - t0
            sides[0].step_s.append(dt)
            secs[0] += dt
            # the call after the last allowed update only tracks it (its own update is discarded)
            if stop or theirs.updates > max_steps:
                live[0] = False
                last[0] = (pts, min(theirs.updates, max_steps), "converged" if stop else "max_steps")
        for i, s in enumerate(ours, start=1):
            if not live[i]:
                continue
            t0 = time.perf_counter()
            r = s.step()
            dt = time.perf_counter() - t0
            sides[i].step_s.append(dt)
            secs[i] += dt
            if r.done:
                live[i] = False
                last[i] = (r.handles.tolist(), r.step, r.reason)
    finals = [torch.cat([theirs.r.w.detach()[:, :6], theirs.w0[:, 6:]], dim=1).float()] + [s.latent for s in ours]
    line = []
    for side, sec, (pts, steps, reason), w in zip(sides, secs, last, finals):
        d = _distance(pts, targets)
        c = _distance(content_positions(G, w0, w, handles, pts), targets)
        side.edits.append((sec, steps, d, reason, c))
        line.append(f"{side.name}: {steps} steps {sec:.1f} s {d:.2f} px (content {c:.2f}) {reason}")
    log(f"seed {seed}, {len(handles)} handle(s) (our mapping vs theirs {mapping_diff:.1e}): " + "; ".join(line))


def _parse_variant(text: str):
    name, _, spec = text.partition(":")
    kw = {}
    for item in filter(None, spec.split(",")):
        k, _, v = item.partition("=")
        try:
            kw[k.strip()] = ast.literal_eval(v.strip())
        except (ValueError, SyntaxError):
            kw[k.strip()] = v.strip()
    return name or "ours", kw


def summary(sides: list[Side], res: int) -> str:
    ref = sides[0]
    out = [f"peer benchmark, {res} px, {len(ref.edits)} drags, 1 thread"]
    out.append(f"{'side':<16} {'s/step':>7} {'steps med':>9} {'s/edit med':>10} {'s/edit mean':>11} "
               f"{'final px':>8} {'content px':>10} {'conv':>6} {'≤2 px':>6} | stop reasons")
    for s in sides:
        secs, steps, dist, reasons, content = zip(*s.edits)
        counts = {r: reasons.count(r) for r in sorted(set(reasons))}
        conv = reasons.count("converged")
        near = sum(d <= max(2, 2 * res / 512) for d in dist)
        out.append(f"{s.name:<16} {statistics.median(s.step_s):>7.3f} {statistics.median(steps):>9.0f} "
                   f"{statistics.median(secs):>10.2f} {statistics.mean(secs):>11.2f} {statistics.mean(dist):>8.2f} "
                   f"{statistics.mean(content):>10.2f} "
                   f"{conv:>3}/{len(reasons):<2} {near:>3}/{len(reasons):<2} | {counts}")
    for s in sides[1:]:
        per_task = [a[0] / b[0] for a, b in zip(ref.edits, s.edits)]
        out.append(f"{s.name}: authors' / ours: s/step {statistics.median(ref.step_s) / statistics.median(s.step_s):.2f}×, "
                   f"s/edit median of per-drag ratios {statistics.median(per_task):.2f}×, "
                   f"total time {sum(e[0] for e in ref.edits) / sum(e[0] for e in s.edits):.2f}×")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draggan", metavar="DIR", help="checkout of XingangPan/DragGAN")
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--seeds", default="0-7", help="a range a-b or a comma list")
    ap.add_argument("--handles", default="1,3")
    ap.add_argument("--distance", default="10,25", help="handle→target distance range, px")
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--ours", action="append", metavar="NAME:k=v,...",
                    help="a variant of our DragConfig (repeatable); default: our defaults")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    ref = Path(args.draggan) if args.draggan else None
    if ref is None or not (ref / "viz" / "renderer.py").is_file():
        print(("no DragGAN checkout at " + str(ref) + "\n" if ref else "") + HOW_TO_GET, file=sys.stderr)
        return 2
    sys.path.insert(0, str(ref.resolve()))
    _stub_modules()
    import warnings

    import torch

    warnings.filterwarnings("ignore", message="torch.meshgrid")     # their renderer's meshgrid call
    torch.set_num_threads(args.threads)
    from viz.renderer import Renderer
    from dragd.daemon.model.checkpoints import load_checkpoint

    a, _, b = args.seeds.partition("-")
    seeds = range(int(a), int(b) + 1) if b else [int(s) for s in args.seeds.split(",")]
    lo, hi = (float(x) for x in args.distance.split(","))
    variants = [_parse_variant(v) for v in (args.ours or ["ours"])]
    with tempfile.TemporaryDirectory(prefix="dragd-peer-") as tmp:
        pkl = str(Path(tmp) / f"stylegan2-random-{args.res}.pkl")   # their renderer picks the class by name
        write_their_pickle(Path(pkl), args.res, seed=0)
        G = load_checkpoint(pkl).G.eval()
        sides = [Side("authors")] + [Side(n) for n, _ in variants]
        log = lambda m: print(m, flush=True)                         # noqa: E731
        renderer = Renderer(disable_timing=True)
        for task in make_tasks(args.res, seeds, [int(n) for n in args.handles.split(",")], lo, hi):
            run_task(task, pkl, G, renderer, variants, args.max_steps, args.lr, sides, log)
    print(summary(sides, args.res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
