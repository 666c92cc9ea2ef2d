"""Forward time of our StyleGAN2 on this machine: full image vs. stopping after block 6.

The drag loop only needs the features of block 6, so the saving printed here is the
saving per drag step. Channels follow the FFHQ config (channel_base 32768, max 512);
weights are random, which does not change the cost.

    python benchmarks/bench_generator.py [--resolutions 64 128 256 512] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from dragd.daemon.model.stylegan2 import Generator


def median_ms(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolutions", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--block", type=int, default=6)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"{'res':>5} {'block':>5} {'full ms':>9} {'to-block ms':>12} {'ratio':>6}")
    for res in args.resolutions:
        G = Generator(resolution=res).eval().to(args.device)
        block = min(args.block, G.cfg.num_blocks)
        ws = G.mapping(torch.randn(1, G.cfg.z_dim, device=args.device))
        with torch.no_grad():
            full = median_ms(lambda: G.synthesis(ws), args.repeats, args.device)
            part = median_ms(lambda: G.synthesis(ws, stop_after_block=block), args.repeats, args.device)
        print(f"{res:>5} {block:>5} {full:>9.1f} {part:>12.1f} {full / part:>6.2f}")


if __name__ == "__main__":
    main()
