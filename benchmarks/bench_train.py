"""Training throughput of lab/train.py and what the default128 model costs at edit time.

Prints, per preset and device: kimg/s (and kimg/h) of full training iterations (renderer +
Gmain + Dmain + the amortised lazy R1), then for default128: the size of the exported
native fp16 safetensors (G alone and G + D) and the time of one CPU drag step
(DragSession.step(): forward to the feature block, tracking, motion loss, backward, Adam)
for feature blocks 4, 5 (64×64, the one we recommend for 128 px) and 6.

    python benchmarks/bench_train.py [--presets tiny default128] [--devices cpu cuda]
                                     [--steps 3] [--threads 0] [--drag-steps 10] [--no-train]

Weights are freshly initialised: cost does not depend on them. On a shared 2-core machine
run it while nothing else is running, otherwise the wall figures only give an upper bound;
the process-CPU column (summed over threads) is what a step costs on an idle machine when
run with --threads 1, and is much less sensitive to other load.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dragd.lab.train import PRESETS, Trainer, get_preset, state_bytes

DRAG_BLOCKS = (4, 5, 6)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_training(preset: str, device: str, steps: int, warmup: int = 2, batch: int | None = None) -> dict:
    overrides = {"batch": batch} if batch else {}
    cfg = get_preset(preset, **overrides)
    trainer = Trainer(cfg, device=device)
    dev = trainer.device
    for _ in range(warmup):
        trainer.step()
    # Time whole lazy-R1 periods where that is cheap; otherwise add R1 at its amortised share.
    sync(dev)
    times, cpu = [], []
    for _ in range(steps):
        trainer.step_idx = 1            # a step without R1 (R1 runs when step % interval == 0)
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.step()
        sync(dev)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    trainer.step_idx = 0                # a step with R1
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.step()
    sync(dev)
    with_r1, with_r1_cpu = time.perf_counter() - t0, time.process_time() - c0
    plain, plain_cpu = statistics.median(times), statistics.median(cpu)
    per_step = plain + (with_r1 - plain) / cfg.r1_interval
    per_step_cpu = plain_cpu + (with_r1_cpu - plain_cpu) / cfg.r1_interval
    return {"preset": preset, "device": str(dev), "batch": cfg.batch, "s_per_step": per_step,
            "kimg_s": cfg.batch / per_step / 1000, "cpu_s_per_step": per_step_cpu}


def exported_sizes(preset: str) -> dict:
    from dragd.daemon.model.checkpoints import save_native
    from dragd.daemon.model.stylegan2 import Discriminator, Generator

    cfg = get_preset(preset)
    G, D = Generator(cfg.generator_config()), Discriminator(cfg.discriminator_config())
    out = {"G_state_MiB": state_bytes(G) / 2**20}
    with tempfile.TemporaryDirectory() as tmp:
        for name, d in (("G", None), ("G+D", D)):
            path = Path(tmp) / f"{name}.safetensors"
            save_native(path, G, d, info={"preset": preset})
            out[name] = path.stat().st_size
    return out


def drag_step_ms(preset: str, blocks=DRAG_BLOCKS, steps: int = 10, **overrides) -> dict:
    from dragd.daemon.edit.drag import DragSession
    from dragd.daemon.model.stylegan2 import Generator

    cfg = get_preset(preset, **overrides)
    torch.manual_seed(0)
    G = Generator(cfg.generator_config()).eval().requires_grad_(False)
    res = cfg.resolution
    w = G.mapping(torch.randn(1, cfg.z_dim))[:, 0]
    handles = [[0.30 * res, 0.40 * res], [0.70 * res, 0.60 * res]]
    targets = [[0.30 * res, 0.20 * res], [0.75 * res, 0.80 * res]]
    out = {}
    for k in blocks:
        if k > G.cfg.num_blocks:
            continue
        s = DragSession(G, w, handles, targets, feature_block=k, max_steps=10_000, stop_distance=0.01)
        s.step(), s.step()
        times, cpu = [], []
        for _ in range(steps):
            t0, c0 = time.perf_counter(), time.process_time()
            s.step()
            times.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
        out[k] = (statistics.median(times), statistics.median(cpu))
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, cfg.z_dim))
        G.synthesis(ws)
        t = []
        for _ in range(steps):
            t0 = time.perf_counter()
            G.synthesis(ws)
            t.append((time.perf_counter() - t0) * 1000)
    out["full_image_forward"] = statistics.median(t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "default128"], choices=sorted(PRESETS))
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda if present")
    ap.add_argument("--steps", type=int, default=3, help="timed training iterations per preset")
    ap.add_argument("--cpu-batch", type=int, default=None,
                    help="override the batch on CPU (default128's 32 takes a while there)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--drag-steps", type=int, default=10)
    ap.add_argument("--no-train", action="store_true", help="skip the training throughput part")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}"
          + (f", CUDA {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA"))

    print("\ntraining throughput (renderer + G + D + amortised lazy R1)")
    print(f"{'preset':<12} {'device':<6} {'batch':>5} {'s/step':>8} {'kimg/s':>8} {'kimg/h':>8} {'CPU s/step':>10}")
    for preset in ([] if args.no_train else args.presets):
        for device in devices:
            batch = args.cpu_batch if device == "cpu" else None
            r = bench_training(preset, device, args.steps, batch=batch)
            print(f"{preset:<12} {device:<6} {r['batch']:>5} {r['s_per_step']:>8.3f} "
                  f"{r['kimg_s']:>8.4f} {r['kimg_s'] * 3600:>8.1f} {r['cpu_s_per_step']:>10.3f}", flush=True)

    if "default128" in args.presets:
        sizes = exported_sizes("default128")
        print(f"\ndefault128 exported fp16 safetensors: G {sizes['G'] / 2**20:.2f} MiB ({sizes['G']} B), "
              f"G+D {sizes['G+D'] / 2**20:.2f} MiB ({sizes['G+D']} B); budget 16 MB for G")
        ms = drag_step_ms("default128", steps=args.drag_steps)
        print(f"default128 CPU drag step (DragSession.step, {torch.get_num_threads()} threads), median "
              f"wall ms / process CPU ms:")
        for k in DRAG_BLOCKS:
            if k in ms:
                side = 2 ** (k + 1)
                note = "  <- recommended for 128 px" if k == 5 else ""
                print(f"  feature block {k} ({side}x{side}): {ms[k][0]:7.1f} / {ms[k][1]:7.1f} ms{note}")
        print(f"  (full image forward, no grad: {ms['full_image_forward']:.1f} ms)")


if __name__ == "__main__":
    main()
