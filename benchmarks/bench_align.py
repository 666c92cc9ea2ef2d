"""Face detection + landmarks + FFHQ alignment time for a 6000×4000 photo on CPU (target
≤ 1.5 s), and the invariance check's PSNR: the aligned crop of the photo against the aligned
crop of the same portrait enlarged, rotated and placed off-centre in the big frame.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_align.py [--size 1024] [--repeat 3]

Needs the faces extra and scikit-image (the astronaut portrait).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image

from dragd.daemon.edit import align, faces


def psnr(a, b) -> float:
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return float(10 * np.log10(255.0 ** 2 / max(np.mean(d ** 2), 1e-12)))


def big_photo(portrait: np.ndarray, angle: float) -> np.ndarray:
    """6000×4000: the portrait enlarged to 2400 px, rotated, on a noisy backdrop, off-centre."""
    rng = np.random.default_rng(0)
    canvas = rng.integers(60, 120, size=(4000, 6000, 3), dtype=np.uint8)
    face = Image.fromarray(portrait).resize((2400, 2400), Image.Resampling.LANCZOS)
    face = face.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=(90, 90, 90))
    out = Image.fromarray(canvas)
    out.paste(face, (3200, 600))
    return np.asarray(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024, help="aligned resolution (the model's)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--angle", type=float, default=12.0)
    args = ap.parse_args()
    import skimage.data

    portrait = skimage.data.astronaut()
    t0 = time.perf_counter()
    faces._models()
    print(f"loading the detector and the 68-point predictor: {time.perf_counter() - t0:.2f} s (once per daemon)")
    ref = align.align_image(portrait, align.locate(portrait, args.size))
    photo = big_photo(portrait, args.angle)
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        found = faces.detect_faces(photo)
        t1 = time.perf_counter()
        geo = align.locate(photo, args.size)
        t2 = time.perf_counter()
        crop = align.align_image(photo, geo)
        t3 = time.perf_counter()
        times.append((t1 - t0, t2 - t1, t3 - t2))
    det, loc, al = np.median(np.array(times), axis=0)
    print(f"{photo.shape[1]}×{photo.shape[0]} photo, {len(found)} face(s), aligned to {args.size} px "
          f"(median of {args.repeat}):")
    print(f"  detection + landmarks       {det:.3f} s")
    print(f"  locate (that + refinement)  {loc:.3f} s")
    print(f"  alignment (the recipe)      {al:.3f} s")
    print(f"  total (locate + alignment)  {loc + al:.3f} s   target ≤ 1.5 s")
    print(f"invariance: aligned crop of the 512-px portrait vs of the enlarged, rotated ({args.angle:g}°), "
          f"off-centre copy: {psnr(crop, ref):.2f} dB (target ≥ 30)")


if __name__ == "__main__":
    main()
