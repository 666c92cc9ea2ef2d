"""`dragd edit`: drag points in an image file, through a running daemon or one in this process."""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

from ...protocol import DEFAULT_ENDPOINT
from .errors import UserFacingError
from .serve import make_backend


def parse_drag(text: str) -> tuple[float, float, float, float]:
    """'X1,Y1:X2,Y2' → (x1, y1, x2, y2) in layer pixels."""
    try:
        handle, target = text.split(":")
        x1, y1 = (float(v) for v in handle.split(","))
        x2, y2 = (float(v) for v in target.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--drag expects X1,Y1:X2,Y2 (handle:target in pixels), got {text!r}") from None
    return x1, y1, x2, y2



def add_drag_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=300, help="step limit (default 300)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: the model's drag_lr, else 2e-3)")
    p.add_argument("--lambda-mask", type=float, default=20.0, help="weight of the fixed-region term")
    p.add_argument("--space", choices=["w", "w+"], default="w+")
    p.add_argument("--tracking", choices=["l1", "l2"], default="l1")
    p.add_argument("--method", choices=["dragd", "draggan", "freedrag"], default="dragd",
                   help="dragd (default): the paper's loop, arrived handles held in place; draggan: "
                        "the paper's loop; freedrag: FreeDrag's tracking-free line search")


def add_parser(sub) -> None:
    e = sub.add_parser("edit", help="drag points in an image file",
                       description="Talks to a running daemon; when none answers, runs one in this process.")
    e.add_argument("input", type=Path, metavar="IN", help="input image (PNG, JPEG, …)")
    e.add_argument("--drag", type=parse_drag, action="append", required=True, metavar="X1,Y1:X2,Y2",
                   help="handle:target in pixels (continuous: 10.5,20.5 is the centre of pixel "
                   "column 10, row 20); repeat for more points")
    e.add_argument("--mask", type=Path, help="movable region, a grayscale image of the same size "
                   "(white = may move, grey = partly)")
    e.add_argument("--roi", metavar="X,Y,W,H", help="region to invert and edit (default: the mask's "
                   "bounding box, else the whole image)")
    e.add_argument("-o", "--output", type=Path, required=True, help="output image")
    e.add_argument("--gif", type=Path, help="also write the drag as an animated GIF")
    add_drag_options(e)
    e.add_argument("--paste", choices=["resample", "detail"], default="resample",
                   help="detail: warp the original pixels along the edit instead of scaling the "
                   "generated crop back (keeps photo detail; generated pixels fill disocclusions)")
    e.add_argument("--quality", choices=["fast", "balanced", "quality"], default="balanced",
                   help="inversion preset (default balanced)")
    e.add_argument("--model", default=None, help="model name or checkpoint path (default: the daemon's)")
    e.add_argument("--align", choices=["auto", "ffhq", "none"], default="auto",
                   help="face alignment: auto (default) = what the model wants (FFHQ models: ffhq); "
                   "ffhq: detect the face and align it as FFHQ's (needs pip install 'dragd[faces]'); none: off")
    e.add_argument("--connect", default=DEFAULT_ENDPOINT, help="daemon endpoint to try first")
    e.add_argument("--in-process", action="store_true", help="don't look for a daemon")
    e.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"],
                   help="device when running in-process")
    e.set_defaults(handler=cmd_edit)


def cmd_edit(args) -> int:
    import numpy as np

    from ...protocol import Client, DaemonRefused, DaemonUnavailable, Image, RemoteError

    arr = _layer_pixels(_read_image(args.input, "input image"))
    h, w, c = arr.shape
    layer = Image(arr.data, w, h, c)
    out_format = _check_output(args.output, "output", "RGBA" if c == 4 else "RGB")
    gif_format = _check_output(args.gif, "--gif", "RGB") if args.gif is not None else None
    mask = None
    mask_arr = None
    if args.mask is not None:
        m = _read_image(args.mask, "mask").convert("L")
        if m.size != (w, h):
            raise UserFacingError(f"the mask {args.mask} is {m.size[0]}×{m.size[1]} but the image is {w}×{h}")
        mask_arr = np.ascontiguousarray(np.asarray(m, dtype=np.uint8))
        if not mask_arr.any():
            raise UserFacingError(f"the mask {args.mask} is empty (all black): nothing may move")
        mask = Image(mask_arr.data, w, h, 1)
    for i, (x1, y1, x2, y2) in enumerate(args.drag):
        for what, x, y in (("handle", x1, y1), ("target", x2, y2)):
            if not (0 <= x <= w and 0 <= y <= h):
                raise UserFacingError(f"--drag {i + 1}: {what} ({x:g}, {y:g}) is outside the {w}×{h} image")
    roi = _parse_roi(args.roi, w, h) if args.roi else _mask_roi(mask_arr, args.drag)

    server = None
    client = None
    if not args.in_process:
        client = Client(args.connect, timeout=1.5, curve=_curve_for(args.connect))
        try:
            hello = client.hello()
            print(f"daemon at {args.connect}: {hello['device']}", file=sys.stderr)
        except DaemonRefused as exc:           # it is there: running another here would hide that
            client.close()
            raise UserFacingError(exc.message) from None
        except DaemonUnavailable:
            client.close()
            client = None
            print(f"no daemon at {args.connect}; running in this process", file=sys.stderr)
    if client is None:
        server = _in_process_server(args)
        client = Client(server.endpoint, timeout=30.0)
    frames = []
    try:
        t0 = time.perf_counter()
        session = client.open_session(layer, roi=roi, model=args.model,
                                      invert={"method": "pti", "quality": args.quality},
                                      progress=_print_progress, align=args.align)
        print(f"\ninverted in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        _print_domain(session.info.get("info") or {})

        def on_event(ev):
            _print_progress(ev)
            if args.gif is not None and "preview" in ev.images:
                frames.append(_to_pil(ev.images["preview"]))

        points = [((x1, y1), (x2, y2)) for x1, y1, x2, y2 in args.drag]
        t1 = time.perf_counter()
        result = client.drag(session, points, mask=mask, progress=on_event, max_steps=args.steps,
                             lr=args.lr, lambda_mask=args.lambda_mask, space=args.space,
                             tracking=args.tracking, method=args.method, preview_every=2 if args.gif else 0,
                             preview_max_size=512, paste=args.paste)
        print(f"\n{result['stop']} after {result['steps']} steps in {time.perf_counter() - t1:.1f} s; "
              f"mean distance to targets {result.get('distance') or 0:.2f} px", file=sys.stderr)
        if result["stop"] == "converged" and result["steps"] == 0 and (result.get("distance") or 0) > 0:
            print(f"nothing moved: every handle already lies within the stop distance of its target in "
                  f"the model's {session.info.get('resolution', '?')}-px working image; draw longer arrows, or give a "
                  "smaller --roi or --mask so that a layer pixel is more of the working image",
                  file=sys.stderr)
    except RemoteError as exc:
        raise UserFacingError(exc.message) from None
    finally:
        client.close()
        if server is not None:
            server.stop()
    out = _to_pil(result.images["image"])
    _save(args.output, lambda f: out.save(f, format=out_format))
    print(f"wrote {args.output}", file=sys.stderr)
    if args.gif is not None:
        frames.append(out.convert("RGB").resize(frames[0].size) if frames else out.convert("RGB"))
        _save(args.gif, lambda f: frames[0].save(f, format=gif_format, save_all=True, append_images=frames[1:],
                                                 duration=80, loop=0))
        print(f"wrote {args.gif} ({len(frames)} frames)", file=sys.stderr)
    return 0


# Modes Pillow turns into 8-bit L/RGB/RGBA keeping what the pixels mean (RGBa is un-premultiplied).
_EIGHT_BIT_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "YCbCr", "HSV"}


def _read_image(path: Path, what: str):
    """The file as an 8-bit Pillow image in one of _EIGHT_BIT_MODES, or a UserFacingError saying why not."""
    from PIL import Image as PILImage

    if not path.is_file():
        raise UserFacingError(f"{what} {path} does not exist")
    try:
        img = PILImage.open(path)
        img.load()
    except Exception as exc:
        raise UserFacingError(f"cannot read {what} {path} as an image: {exc}") from None
    if img.mode in _EIGHT_BIT_MODES:
        return img
    if img.mode == "CMYK":
        return img.convert("RGB")         # Pillow's plain formula: an embedded ICC profile is not applied
    # Pillow opens 16-bit grayscale as I;16*, and as I from 16-bit PGM: its own conversion to
    # L clips at 255 instead of scaling.
    if img.mode.startswith("I;16") or (img.mode == "I" and img.format in ("PNG", "PPM")):
        return _sixteen_to_eight(img, path, what)
    raise UserFacingError(f"{what} {path} {_why_not(img.mode)}; save it as an 8- or 16-bit PNG "
                          "(grayscale, RGB or RGBA)")


def _layer_pixels(img):
    """An image from _read_image as the (h, w, 3 or 4) uint8 array the daemon edits."""
    import numpy as np

    alpha = "A" in img.getbands() or img.mode == "P" and "transparency" in img.info
    return np.ascontiguousarray(np.asarray(img.convert("RGBA" if alpha else "RGB"), dtype=np.uint8))


def _sixteen_to_eight(img, path: Path, what: str):
    import numpy as np
    from PIL import Image as PILImage

    a = np.asarray(img).astype(np.int64)
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise UserFacingError(f"{what} {path} {_why_not('I')}; save it as an 8- or 16-bit PNG")
    return PILImage.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8))


def _why_not(mode: str) -> str:
    reasons = {"I": "holds 32-bit integers (mode I), which have no fixed black and white level",
               "F": "holds 32-bit floating-point values (mode F), which have no fixed black and white level",
               "LAB": "is in CIELab colour (mode LAB), which dragd does not convert to RGB"}
    return reasons.get(mode, f"has pixel mode {mode}, which has no faithful conversion to RGB")


def _check_output(path: Path, what: str, mode: str) -> str:
    """Before any work: the Pillow format for path's extension, able to hold a `mode` image, and
    a folder we can write in (created if missing)."""
    from PIL import Image as PILImage

    PILImage.init()
    fmt = PILImage.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in PILImage.SAVE:
        kind = f"{path.suffix} files" if path.suffix else "a file without an extension"
        raise UserFacingError(f"{what} {path}: cannot write {kind}; use .png, .jpg, .tif or .webp")
    try:
        PILImage.new(mode, (4, 4)).save(io.BytesIO(), format=fmt)
    except Exception as exc:
        raise UserFacingError(f"{what} {path}: {fmt} cannot hold this image ({exc}); use .png") from None
    if path.is_dir():
        raise UserFacingError(f"{what} {path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is read-only")
    except OSError as exc:
        raise UserFacingError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    return fmt


def _save(path: Path, write) -> None:
    try:
        write(path)
    except OSError as exc:
        raise UserFacingError(f"the edit ran but {path} could not be written: {exc.strerror or exc}") from None


def _curve_for(endpoint: str):
    """The CurveZMQ keys for a daemon on another machine, from the keys folder `dragd keys
    client` fills (this machine's client.key_secret and the daemon's server.key), if there."""
    from ...protocol import CurveConfig
    from ...protocol.endpoint import is_loopback_endpoint
    from ..service.keys import default_keys_dir

    d = default_keys_dir()
    server, client = d / "server.key", d / "client.key_secret"
    if is_loopback_endpoint(endpoint) or not (server.is_file() and client.is_file()):
        return None
    try:
        return CurveConfig.from_files(server, client)
    except (OSError, ValueError) as exc:
        raise UserFacingError(f"cannot read the CurveZMQ keys in {d}: {exc}") from None


def _in_process_server(args):
    from ..service.server import Server, ServerConfig

    backend = make_backend(args.model or "default", args.device)
    return Server(backend, ServerConfig(endpoint="tcp://127.0.0.1:0")).start()


def _parse_roi(text: str, w: int, h: int) -> dict:
    try:
        x, y, rw, rh = (int(v) for v in text.split(","))
    except ValueError:
        raise UserFacingError(f"--roi expects X,Y,W,H in pixels, got {text!r}") from None
    if rw < 1 or rh < 1 or x < 0 or y < 0 or x + rw > w or y + rh > h:
        raise UserFacingError(f"--roi {text} does not fit inside the {w}×{h} image")
    return {"x": x, "y": y, "width": rw, "height": rh}


def _mask_roi(mask_arr, drags) -> dict | None:
    """The bounding box of the mask and all points: the region worth inverting."""
    if mask_arr is None:
        return None
    import numpy as np

    ys, xs = np.nonzero(mask_arr)
    x0, x1 = int(xs.min()), int(xs.max()) + 1
    y0, y1 = int(ys.min()), int(ys.max()) + 1
    for px1, py1, px2, py2 in drags:
        x0, y0 = min(x0, int(min(px1, px2))), min(y0, int(min(py1, py2)))
        x1, y1 = max(x1, int(max(px1, px2)) + 1), max(y1, int(max(py1, py2)) + 1)
    h, w = mask_arr.shape
    x1, y1 = min(x1, w), min(y1, h)
    return {"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0}


def _to_pil(img):
    from PIL import Image as PILImage

    mode = {1: "L", 3: "RGB", 4: "RGBA"}[img.channels]
    return PILImage.frombuffer(mode, (img.width, img.height), bytes(img.data), "raw", mode, 0, 1)


def _print_domain(info: dict) -> None:
    """How well the model could reconstruct the picture, before the drag is waited for."""
    if info.get("align") == "ffhq":
        print("face found, aligned (FFHQ)", file=sys.stderr)
    d = info.get("domain")
    if not isinstance(d, dict) or "verdict" not in d:
        return
    print(f"reconstruction: {d['verdict']} (PSNR {d.get('psnr', 0):.1f} dB; contrast SNR "
          f"{d.get('contrast_snr', 0):.1f} dB, threshold {d.get('threshold_snr', 0):.1f} dB; "
          f"{d.get('perceptual_backend', 'perceptual')} distance {d.get('perceptual', 0):.3f})", file=sys.stderr)
    if d.get("message"):
        print(f"warning: {d['message']}", file=sys.stderr)


def _print_progress(ev) -> None:
    """A one-line progress bar on a terminal; every 10 % as plain lines in a log."""
    if ev.kind != "progress":
        if ev.kind == "notice":
            print(f"\n{ev.get('message')}", file=sys.stderr)
        return
    stage, step, total = ev.get("stage"), ev.get("step"), ev.get("total")
    width = 24
    frac = 0.0 if not total else min(1.0, step / total)
    extra = f" distance {ev.get('distance'):.2f} px" if ev.get("distance") is not None else ""
    if sys.stderr.isatty():
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        print(f"\r{stage:>6} [{bar}] {step}/{total or '?'}{extra}   ", end="", file=sys.stderr, flush=True)
    elif not total or step % max(1, total // 10) == 0:
        print(f"{stage} {step}/{total or '?'}{extra}", file=sys.stderr, flush=True)
