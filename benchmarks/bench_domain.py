"""The domain check's threshold: how well the embedded default model reconstructs pictures of
its own domain (lab/portraits.py renders, seeds it never trained on) and foreign photos
(the ones scikit-image ships), by the pivot inversion that open_session runs before tuning.

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/bench_domain.py [--n 20] [--preset balanced]

Prints per picture the PSNR, the contrast SNR and the perceptual distance with the verdict
daemon/edit/domain.py gives, then both distributions and how many pictures of each group the
verdict gets right (the thresholds in use are domain.py's).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dragd.daemon.edit import domain
from dragd.daemon.edit.image_prep import prepare_target, tensor_to_uint8
from dragd.daemon.edit.inversion import invert, preset
from dragd.daemon.model.checkpoints import load_checkpoint
from dragd.daemon.model.registry import resolve_model
from dragd.lab.portraits import render_seeds

# Distinct photos, then crops of the larger ones (a face crop among them: the real use case).
PHOTOS = ["astronaut", "brick", "camera", "chelsea", "cell", "clock", "coffee", "coins", "grass", "gravel",
          "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text"]
CROPS = [("astronaut", (120, 0, 380, 260)), ("coffee", (200, 0, 600, 400)), ("rocket", (0, 0, 427, 427)),
         ("retina", (300, 300, 1100, 1100)), ("hubble_deep_field", (0, 0, 600, 600))]


def photos() -> list[tuple[str, np.ndarray]]:
    import skimage.data as data
    out = []
    for name in PHOTOS:
        out.append((name, np.asarray(getattr(data, name)())))
    for name, (x0, y0, x1, y1) in CROPS:
        out.append((f"{name}[{x0}:{x1},{y0}:{y1}]", np.asarray(getattr(data, name)())[y0:y1, x0:x1]))
    return out


def renders(n: int, resolution: int) -> list[tuple[str, np.ndarray]]:
    images, _ = render_seeds(range(n), resolution=resolution)
    return [(f"render seed {i}", tensor_to_uint8(images[i])) for i in range(n)]


def pivot_fit(G, D, layer: np.ndarray, settings, info: dict) -> dict:
    prepared = prepare_target(layer, G.resolution)
    inv = invert(G, prepared.target, prepared.weight, settings=settings, D=D)
    return domain.assess(inv, prepared, info, "default")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20, help="renders (photos: all %d)" % (len(PHOTOS) + len(CROPS)))
    ap.add_argument("--preset", default="balanced")
    args = ap.parse_args()
    torch.set_num_threads(1)
    loaded = load_checkpoint(resolve_model("default"))
    G, D = loaded.G, loaded.D
    settings = preset(args.preset, tune_steps=0)
    groups = {"renders": renders(args.n, G.resolution), "photos": photos()}
    results: dict[str, list[dict]] = {}
    for group, pictures in groups.items():
        results[group] = []
        for name, img in pictures:
            t0 = time.perf_counter()
            d = pivot_fit(G, D, img, settings, loaded.info)
            results[group].append(d)
            print(f"{group:8s} {name:34s} psnr {d['psnr']:6.2f} dB  contrast snr {d['contrast_snr']:6.2f} dB  "
                  f"perceptual {d['perceptual']:.4f}  {d['verdict']:4s}  ({time.perf_counter() - t0:.1f} s)",
                  flush=True)
    for group, vals in results.items():
        print(f"{group}: n={len(vals)}", end="")
        for key in ("psnr", "contrast_snr", "perceptual"):
            v = np.array([d[key] for d in vals])
            print(f"; {key} min {v.min():.3f} median {np.median(v):.3f} max {v.max():.3f}", end="")
        print()
    right = {"renders": "good", "photos": "poor"}
    for group, vals in results.items():
        n = sum(d["verdict"] == right[group] for d in vals)
        print(f"verdict right on {n}/{len(vals)} {group} (thresholds: contrast snr ≥ "
              f"{domain.DEFAULT_THRESHOLD_SNR} dB, perceptual ≤ {domain.DEFAULT_THRESHOLD_PERCEPTUAL})")


if __name__ == "__main__":
    main()
