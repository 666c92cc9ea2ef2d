"""Drag-step time on this machine: our DragSession.step vs. a naive step, and steps to converge.

(a) ours: the generator runs to the feature block only (no toRGB, nothing after it) and, with
    no mask, its last blocks only in windows around the handles; features are sampled at
    feature resolution, tracking is one batched gather, one host sync per step.
(b) naive: what a straightforward port does — the full image is rendered every step, the
    features are resized to image resolution, tracking and the motion loss loop over points
    in Python (with a host sync per point). To compare like with like, both take gradients
    for the latent only (no generator parameter gradients) and both use the same Adam.

Generators are StyleGAN2 with FFHQ-like channels (channel_base 32768, channel_max 512 unless
overridden) and random weights, which do not change the cost. Then the toy generator of the
tests reports steps to convergence.

    python benchmarks/bench_drag.py [--resolutions 128 256 512] [--repeats 3] [--threads 1]
                                    [--mask] [--channel-base 32768] [--skip-toy]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from dragd.daemon.edit.drag import DragSession
from dragd.daemon.model.stylegan2 import Generator

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


class NaiveDrag:
    """The straightforward step: render everything, resize, loop over points."""

    def __init__(self, G, ws, handles, targets, block=6, lr=2e-3, n_opt=6, mask=None, lambda_mask=20.0):
        self.G, self.block, self.n_opt = G, block, n_opt
        self.res = G.resolution
        self.w0 = ws.detach().clone()
        self.w = ws[:, :n_opt].detach().clone().requires_grad_(True)
        self.opt = torch.optim.Adam([self.w], lr=lr)
        self.handles = [list(map(int, p)) for p in handles]          # (x, y)
        self.targets = [list(map(float, p)) for p in targets]
        self.r1 = max(1, round(3 / 512 * self.res))
        self.r2 = max(1, round(12 / 512 * self.res))
        with torch.no_grad():
            f0 = self._resized(self.G.synthesize(self._ws()).features[block - 1])
        self.f0 = f0
        self.fixed = None if mask is None else (1 - mask.float())[None, None]
        self.lambda_mask = lambda_mask
        self.refs = [f0[0, :, y, x].clone() for x, y in self.handles]
        ax = torch.arange(self.res, dtype=torch.float32)
        self.yy, self.xx = torch.meshgrid(ax, ax, indexing="ij")

    def _ws(self):
        return torch.cat([self.w, self.w0[:, self.n_opt:]], dim=1)

    def _resized(self, feat):
        return F.interpolate(feat, size=(self.res, self.res), mode="bilinear", align_corners=False)

    def step(self):
        out = self.G.synthesize(self._ws())                           # full render, with grad
        feat = self._resized(out.features[self.block - 1])
        res, r1, r2 = self.res, self.r1, self.r2
        with torch.no_grad():                                         # tracking, one point at a time
            for j, (x, y) in enumerate(self.handles):
                x0, x1, y0, y1 = max(x - r2, 0), min(x + r2 + 1, res), max(y - r2, 0), min(y + r2 + 1, res)
                patch = feat[0, :, y0:y1, x0:x1]
                dist = (patch - self.refs[j][:, None, None]).abs().sum(0)
                idx = int(dist.reshape(-1).argmin().item())
                self.handles[j] = [x0 + idx % (x1 - x0), y0 + idx // (x1 - x0)]
        loss = feat.new_zeros(())
        for (x, y), (tx, ty) in zip(self.handles, self.targets):     # motion loss, per point
            d = torch.tensor([tx - x, ty - y])
            if float(d.norm()) <= 1:
                continue
            d = d / d.norm()
            ys, xs = torch.where((self.xx - x) ** 2 + (self.yy - y) ** 2 <= r1 * r1)
            gx = (xs + d[0]) / (res - 1) * 2 - 1
            gy = (ys + d[1]) / (res - 1) * 2 - 1
            grid = torch.stack([gx, gy], -1)[None, None]
            shifted = F.grid_sample(feat, grid, align_corners=True, padding_mode="border")[0, :, 0]
            loss = loss + F.l1_loss(shifted, feat[0, :, ys, xs].detach())
        if self.fixed is not None:                                    # mask term at image size
            loss = loss + self.lambda_mask * F.l1_loss(feat * self.fixed, self.f0 * self.fixed)
        (g,) = torch.autograd.grad(loss, [self.w])
        self.w.grad = g
        self.opt.step()
        return out.image


def timed(fn, warmup: int, repeats: int) -> tuple[float, float]:
    """Median (CPU-time ms, wall ms) of `repeats` calls after `warmup` calls.

    CPU time of this process is what a step costs; wall time also counts waiting for the
    cores when the machine is shared (both are printed; compare CPU times across runs).
    """
    for _ in range(warmup):
        fn()
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append((time.process_time() - c0) * 1000)
        wall.append((time.perf_counter() - w0) * 1000)
    return statistics.median(cpu), statistics.median(wall)


def bench_speed(args) -> None:
    from toy_generator import unsplit_generator

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device cpu, "
          f"median of {args.repeats} steps after {args.warmup} warm-up; 2 handles"
          f"{', movable mask' if args.mask else ''}")
    print("ours = DragSession.step on our Generator (feature windows around the handles unless a "
          "mask term needs the whole map; split latents);\nwhole = the same with windows=False; "
          "unsplit = whole, given one W+ tensor (no split latents); "
          "naive = render + resize + Python loops\n")
    print(f"{'res':>4} {'ch base/max':>11} {'blk':>3} {'C':>4} | {'ours ms':>13} {'whole ms':>13} "
          f"{'unsplit ms':>13} {'naive ms':>13} | {'naive/ours':>10} {'naive/whole':>11}")
    print(f"{'':>25} | {'cpu / wall':>13} {'cpu / wall':>13} {'cpu / wall':>13} {'cpu / wall':>13} | "
          f"{'(cpu)':>10} {'(cpu)':>11}")
    for res in args.resolutions:
        torch.manual_seed(0)
        S = Generator(resolution=res, channel_base=args.channel_base, channel_max=args.channel_max).eval()
        G = unsplit_generator(S)
        ws = G.mapping(torch.randn(1, G.cfg.z_dim)).detach()
        k = res / 512
        handles = [[round(200 * k), round(220 * k)], [round(300 * k), round(310 * k)]]
        targets = [[round(240 * k), round(200 * k)], [round(330 * k), round(350 * k)]]
        mask = None
        if args.mask:
            mask = torch.zeros(res, res, dtype=torch.bool)
            mask[round(150 * k):round(400 * k), round(150 * k):round(400 * k)] = True
        ours = DragSession(S, ws, handles, targets, mask=mask, max_steps=10 ** 6)
        whole = DragSession(S, ws, handles, targets, mask=mask, max_steps=10 ** 6, windows=False)
        unsplit = DragSession(G, ws, handles, targets, mask=mask, max_steps=10 ** 6, windows=False)
        naive = NaiveDrag(G, ws, handles, targets, block=ours.feature_block, mask=mask)
        t_ours = timed(ours.step, args.warmup, args.repeats)
        t_whole = timed(whole.step, args.warmup, args.repeats)
        t_unsplit = timed(unsplit.step, args.warmup, args.repeats)
        t_naive = timed(naive.step, args.warmup, args.repeats)
        # Adam moves every coordinate by about lr, so float-order noise on coordinates whose gradient
        # is ~0 reaches a fraction of lr (measured at 512 px: 3e-5 on 23 of 3072 after 6 steps)
        same = all(torch.allclose(ours.latent, s.latent, atol=0.05 * ours.config.lr) for s in (whole, unsplit))
        C = G.cfg.channels(G.block_resolution(ours.feature_block))
        fmt = lambda t: f"{t[0]:>6.0f} /{t[1]:>6.0f}"          # noqa: E731
        print(f"{res:>4} {f'{args.channel_base}/{args.channel_max}':>11} {ours.feature_block:>3} {C:>4} | "
              f"{fmt(t_ours)} {fmt(t_whole)} {fmt(t_unsplit)} {fmt(t_naive)} | "
              f"{t_naive[0] / t_ours[0]:>10.2f} {t_naive[0] / t_whole[0]:>11.2f}"
              f"{'' if same else '  (latents differ!)'}", flush=True)


def bench_toy() -> None:
    from toy_generator import ToyBlobGenerator

    G = ToyBlobGenerator(resolution=64)
    w = torch.zeros(1, G.w_dim)
    c0 = G.centres(w)[0]
    h = c0[0].round()
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    print("\ntoy generator (64 px, 2 blobs, stop distance 1 px): steps to convergence")
    print(f"{'drag (px)':>10} {'mask':>5} {'space':>5} {'steps':>5} {'reason':>10} {'miss px':>7} "
          f"{'other blob moved px':>19}")
    for offset in [(8.0, 5.0), (-6.0, 6.0), (12.0, 0.0)]:
        t = h + torch.tensor(offset)
        mid = (h + t) / 2
        mask = (xx - mid[0]) ** 2 + (yy - mid[1]) ** 2 <= (16 + 0.5 * float((t - h).norm())) ** 2
        for use_mask in (False, True):
            for space in ("w+", "w"):
                s = DragSession(G, w, [h.tolist()], [t.tolist()], mask=mask if use_mask else None,
                                latent_space=space)
                *_, last = s.run()
                c = G.centres(s.latent)[0]
                miss = float((h - c0[0] + c[0] - t).norm())
                other = float((c[1] - c0[1]).norm())
                print(f"{str(tuple(int(v) for v in offset)):>10} {'yes' if use_mask else 'no':>5} "
                      f"{space:>5} {last.step:>5} {last.reason:>10} {miss:>7.2f} {other:>19.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolutions", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--channel-base", type=int, default=32768)
    ap.add_argument("--channel-max", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mask", action="store_true", help="time with a movable mask (mask term on)")
    ap.add_argument("--skip-toy", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    bench_speed(args)
    if not args.skip_toy:
        torch.set_num_threads(1)
        bench_toy()
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
