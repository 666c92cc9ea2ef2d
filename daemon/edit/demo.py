"""`dragd demo`: generate a portrait with a model, drag points on it, write before | after.

No inversion is involved (the image comes from the generator itself), so this shows the
drag loop alone, end to end, on whatever device is available.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from ..model.checkpoints import CheckpointError, load_checkpoint
from ..model.device import DeviceError, describe_device, pick_device
from ..model.registry import ModelError, resolve_model
from .drag import DragConfig, DragSession
from .image_prep import tensor_to_uint8

# Handle → target pairs in fractions of the image side: widen the face at cheek height, an
# edit that needs the generator to re-synthesise geometry rather than shift pixels.
DEMO_POINTS = (((0.30, 0.55), (0.22, 0.55)),
               ((0.70, 0.55), (0.78, 0.55)))
PANEL = 384


class DemoError(Exception):
    pass


def run_demo(output: Path, seed: int = 3, model: str = "default", device: str = "auto",
             max_steps: int = 300, lr: float | None = None, lambda_mask: float = 20.0,
             space: str = "w+", tracking: str = "l1", points=DEMO_POINTS) -> str:
    try:
        dev = pick_device(device)
        loaded = load_checkpoint(resolve_model(model), device=dev)
    except (DeviceError, ModelError, CheckpointError) as exc:
        raise DemoError(str(exc)) from None
    G = loaded.G
    res = G.resolution
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn([1, G.cfg.z_dim], generator=gen).to(dev)
    with torch.no_grad():
        w = G.mapping(z, truncation_psi=0.7)[:, 0]
    handles = [(hx * res, hy * res) for (hx, hy), _ in points]
    targets = [(tx * res, ty * res) for _, (tx, ty) in points]
    lr = lr if lr is not None else loaded.drag_lr
    cfg = DragConfig(max_steps=max_steps, lambda_mask=lambda_mask, latent_space=space,
                     tracking_norm=tracking, **({"lr": lr} if lr is not None else {}))
    session = DragSession(G, w, handles, targets, config=cfg)
    before = session.render()
    t0 = time.perf_counter()
    last = None
    for last in session.run():
        pass
    seconds = time.perf_counter() - t0
    after = last.image if last.image is not None else session.render()
    final = last.handles.tolist()
    _write_panels(output, before, after, handles, targets, final, res)
    dist = last.distances.tolist()
    placeholder = str(loaded.info.get("placeholder", "")).lower() == "true"
    lines = [f"model {model} ({res}×{res}{', placeholder' if placeholder else ''}) on {describe_device(dev)}, "
             f"lr {cfg.lr:g}, features of block {session.feature_block}",
             f"{last.reason} after {last.step} steps in {seconds:.1f} s ({1000 * seconds / max(1, last.step):.0f} ms/step)",
             "distance to target per handle: " + ", ".join(f"{d:.2f} px" for d in dist),
             f"wrote {output} (left: before, red handles → blue targets; right: after, green = where the handles went)"]
    return "\n".join(lines)


def _write_panels(output: Path, before, after, handles, targets, final, res: int) -> None:
    s = PANEL / res
    left = Image.fromarray(tensor_to_uint8(before)).resize((PANEL, PANEL), Image.Resampling.LANCZOS)
    right = Image.fromarray(tensor_to_uint8(after)).resize((PANEL, PANEL), Image.Resampling.LANCZOS)
    dl, dr = ImageDraw.Draw(left), ImageDraw.Draw(right)
    for (hx, hy), (tx, ty), (fx, fy) in zip(handles, targets, final):
        h, t, f = ((hx + .5) * s, (hy + .5) * s), ((tx + .5) * s, (ty + .5) * s), ((fx + .5) * s, (fy + .5) * s)
        dl.line([h, t], fill=(255, 255, 255), width=2)
        _dot(dl, h, (230, 40, 40))
        _dot(dl, t, (40, 90, 230))
        _dot(dr, t, (40, 90, 230))
        _dot(dr, f, (40, 200, 60))
    sheet = Image.new("RGB", (2 * PANEL + 8, PANEL), (255, 255, 255))
    sheet.paste(left, (0, 0))
    sheet.paste(right, (PANEL + 8, 0))
    output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(output)


def _dot(draw: ImageDraw.ImageDraw, xy, colour, r: int = 5) -> None:
    x, y = xy
    draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=(255, 255, 255))
