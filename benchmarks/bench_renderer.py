"""Throughput of the procedural portrait renderer (sample_params + render), images per second.

Each configuration renders fresh seeds several times; the best run is reported (the
machine is shared, so the best run is the closest to the renderer's own cost), together
with the median. On CPU both wall-clock and process CPU time are shown: CPU time does not
count the time other processes hold the cores.

    python benchmarks/bench_renderer.py [--batch 64] [--threads 1] [--repeats 7]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from dragd.lab.portraits import render_seeds


def measure(res: int, batch: int, device: str, repeats: int) -> dict[str, float]:
    def run(i: int):
        render_seeds(range(i * batch, (i + 1) * batch), res, device)
        if device == "cuda":
            torch.cuda.synchronize()

    run(0)                                                   # warm-up
    wall, cpu = [], []
    for i in range(1, repeats + 1):
        w0, c0 = time.perf_counter(), time.process_time()
        run(i)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return {"best": batch / min(wall), "median": batch / statistics.median(wall),
            "cpu": batch / min(cpu)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolutions", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"batch={args.batch} threads={args.threads} torch={torch.__version__}")
    print(f"{'device':>6} {'res':>5} {'best img/s':>11} {'median img/s':>13} {'CPU-time img/s':>15}")
    for device in devices:
        for res in args.resolutions:
            r = measure(res, args.batch, device, args.repeats)
            cpu = f"{r['cpu']:15.0f}" if device == "cpu" else f"{'-':>15}"
            print(f"{device:>6} {res:>5} {r['best']:11.0f} {r['median']:13.0f} {cpu}")


if __name__ == "__main__":
    main()
