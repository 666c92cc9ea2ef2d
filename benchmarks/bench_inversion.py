"""PTI inversion on this machine: wall time and PSNR/SSIM per phase, per preset and resolution,
and what a cache hit saves.

The generators have RANDOM weights (no trained model is available here) with small channel
counts (printed below); the target is an image the same generator renders from a known w
(so the true answer is on the manifold), turned into an 8-bit layer and prepared exactly as a
user's layer would be. Absolute PSNRs of a trained model on real photos will differ; the
timings scale with the generator's cost per step (see bench_generator.py).

    python benchmarks/bench_inversion.py [--resolutions 64 128 256] [--presets fast balanced quality]
                                         [--threads 1] [--device cpu] [--full]

On a shared, loaded CPU, use --threads 1: several intra-op threads spinning against other
processes can be an order of magnitude slower per step.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from dragd.daemon.edit import inversion as inv
from dragd.daemon.edit.image_prep import prepare_target, tensor_to_uint8
from dragd.daemon.edit.inversion_cache import InversionCache, invert_cached
from dragd.daemon.edit.perceptual import psnr
from dragd.daemon.model.stylegan2 import Generator


def make_generator(res: int, channel_max: int, device: str) -> Generator:
    torch.manual_seed(0)
    G = Generator(resolution=res, z_dim=64, w_dim=64, channel_base=32 * res, channel_max=channel_max,
                  mapping_layers=4).eval().to(device)
    with torch.no_grad():             # keep random images mostly inside [-1, 1]
        for name, p in G.named_parameters():
            if "torgb.weight" in name:
                p.mul_(0.4)
    return G


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolutions", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--presets", nargs="+", default=["fast", "balanced", "quality"])
    ap.add_argument("--channel-max", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--full", action="store_true",
                    help="every preset at every resolution (default: 'balanced' ≤ 128 px and 'quality' "
                         "≤ 128 px, to stay within ~5 min on a shared CPU)")
    args = ap.parse_args()
    args.max_res = {} if args.full else {"balanced": 128, "quality": 128}
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} thread(s)")
    print("generator weights: RANDOM (toRGB × 0.4); target: rendered from a known w, via an 8-bit layer")
    for name in args.presets:
        s = inv.PRESETS[name]
        print(f"preset {name:9s}: pivot {s.pivot_steps} steps lr {s.pivot_lr}, tune ≤ {s.tune_steps} steps "
              f"lr {s.tune_lr}, stop at PSNR ≥ {s.stop_psnr} dB  (published PTI: 450 + 350 steps)")
    print()
    header = (f"{'res':>4} {'preset':9} {'pivot s':>8} {'PSNR':>6} {'SSIM':>6} | {'tune s':>7} {'steps':>5} "
              f"{'PSNR':>6} {'SSIM':>6} | {'total s':>7}")
    for res in args.resolutions:
        G = make_generator(res, args.channel_max, args.device)
        n_params = sum(p.numel() for p in G.synthesis.parameters())
        print(f"— {res} px: {G.cfg.to_json()}")
        print(f"  synthesis parameters: {n_params / 1e6:.2f} M, num_ws {G.num_ws}")
        with torch.no_grad():
            w = G.mapping(torch.randn(1, G.cfg.z_dim, generator=torch.Generator().manual_seed(5)).to(args.device))
            layer = tensor_to_uint8(G.synthesis(w).image)
        prep = prepare_target(layer, res, device=args.device)
        inv.w_statistics(G)            # once per model, not part of an inversion
        print(header)
        with tempfile.TemporaryDirectory() as tmp:
            cache = InversionCache(tmp)
            for name in args.presets:
                if res > args.max_res.get(name, 1 << 30):
                    continue
                t0 = time.perf_counter()
                r = invert_cached(G, prep, model_id=f"bench{res}", cache=cache, settings=name)
                miss = time.perf_counter() - t0            # inversion + writing the cache entry
                t = r.tuning
                print(f"{res:>4} {name:9} {r.pivot.seconds:8.1f} {r.pivot.psnr:6.2f} {r.pivot.ssim:6.3f} | "
                      f"{t.seconds:7.1f} {t.steps:5d} {t.psnr:6.2f} {t.ssim:6.3f} | {r.seconds:7.1f}"
                      f"   ({r.perceptual_backend})")
                if name != args.presets[0]:
                    continue
                # Cache hits for the same layer: same process (memory), restarted daemon (disk).
                t0 = time.perf_counter()
                hit = invert_cached(G, prepare_target(layer, res, device=args.device), model_id=f"bench{res}",
                                    cache=cache, settings=name)
                mem = time.perf_counter() - t0
                t0 = time.perf_counter()
                hit2 = invert_cached(G, prepare_target(layer, res, device=args.device),
                                     model_id=f"bench{res}", cache=InversionCache(tmp), settings=name)
                disk = time.perf_counter() - t0
                assert hit.from_cache and hit2.from_cache
                with torch.no_grad():
                    p_disk = float(psnr(hit2.reconstruction(), prep.target, prep.weight))
                cache_line = (f"  cache ({name}): miss {miss:.2f} s, memory hit {mem * 1000:.1f} ms "
                              f"(×{miss / mem:.0f}), disk hit {disk * 1000:.1f} ms (×{miss / disk:.0f}; "
                              f"both include preparing the layer); file {cache.disk_bytes / 1e6:.2f} MB "
                              f"(fp16 deltas), PSNR after reload {p_disk:.2f} dB vs {t.psnr:.2f} dB")
            print(cache_line)
        print()


if __name__ == "__main__":
    main()
