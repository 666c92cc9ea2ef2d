"""The `dragd` subcommands: serve, edit, demo, status, keys, install-plugins, models."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .cli import UserFacingError, parse_drag

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5557"
log = logging.getLogger("dragd.cli")


def add_parsers(sub) -> None:
    s = sub.add_parser("serve", help="run the daemon (owns the GPU; plug-ins and `dragd edit` connect to it)")
    s.add_argument("--bind", default=DEFAULT_ENDPOINT, help=f"ZeroMQ endpoint (default {DEFAULT_ENDPOINT}; "
                   "a non-loopback address needs CurveZMQ keys, see `dragd keys`)")
    s.add_argument("--model", default="default", help="model name or checkpoint path (default: embedded model)")
    s.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    s.add_argument("--keys-dir", help="CurveZMQ keys folder (server.key_secret, clients/*.key)")
    s.add_argument("--insecure", action="store_true", help="allow a non-loopback bind WITHOUT encryption "
                   "or authentication (anyone on the network can use the daemon)")
    s.add_argument("--session-budget-gb", type=float, default=4.0,
                   help="memory for open sessions before the least recently used are evicted")
    s.add_argument("--cache-dir", type=Path, help="inversion cache folder (default ~/.cache/dragd/inversions)")
    s.set_defaults(handler=cmd_serve)

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
    _add_drag_options(e)
    e.add_argument("--paste", choices=["resample", "detail"], default="resample",
                   help="detail: warp the original pixels along the edit instead of scaling the "
                   "generated crop back (keeps photo detail; generated pixels fill disocclusions)")
    e.add_argument("--quality", choices=["fast", "balanced", "quality"], default="balanced",
                   help="inversion preset (default balanced)")
    e.add_argument("--model", default=None, help="model name or checkpoint path (default: the daemon's)")
    e.add_argument("--connect", default=DEFAULT_ENDPOINT, help="daemon endpoint to try first")
    e.add_argument("--in-process", action="store_true", help="don't look for a daemon")
    e.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"],
                   help="device when running in-process")
    e.set_defaults(handler=cmd_edit)

    d = sub.add_parser("demo", help="drag a generated portrait with the embedded model; writes before/after")
    d.add_argument("-o", "--output", type=Path, default=Path("demo.png"))
    d.add_argument("--seed", type=int, default=3)
    d.add_argument("--model", default="default")
    d.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    _add_drag_options(d)
    d.set_defaults(handler=cmd_demo)

    st = sub.add_parser("status", help="what the daemon is doing")
    st.add_argument("--connect", default=DEFAULT_ENDPOINT)
    st.set_defaults(handler=cmd_status)

    k = sub.add_parser("keys", help="CurveZMQ keys for a daemon on a non-loopback address")
    k.add_argument("action", choices=["init", "allow", "show"],
                   help="init: create the server keypair; allow FILE: trust a client public key; show: print keys")
    k.add_argument("file", nargs="?", type=Path, help="client public key file (for allow)")
    k.add_argument("--keys-dir", type=Path)
    k.set_defaults(handler=cmd_keys)

    ip = sub.add_parser("install-plugins", help="install the GIMP 3 / Krita 5 plug-ins")
    ip.add_argument("--gimp", action="store_true")
    ip.add_argument("--krita", action="store_true")
    ip.add_argument("--krita-zip", type=Path, metavar="OUT.zip",
                    help="build a zip for Krita's Tools ▸ Scripts ▸ Import Python Plugin from File…")
    ip.add_argument("--uninstall", action="store_true")
    ip.add_argument("--dest", type=Path, help="plug-ins folder (GIMP) or pykrita folder (Krita) "
                    "instead of the user's default")
    ip.set_defaults(handler=cmd_install_plugins)

    from . import cli_models
    cli_models.add_parser(sub)


def _add_drag_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=300, help="step limit (default 300)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: the model's drag_lr, else 2e-3)")
    p.add_argument("--lambda-mask", type=float, default=20.0, help="weight of the fixed-region term")
    p.add_argument("--space", choices=["w", "w+"], default="w+")
    p.add_argument("--tracking", choices=["l1", "l2"], default="l1")


# -- serve ------------------------------------------------------------------------------------


def cmd_serve(args) -> int:
    from .server import ConfigError, ServerConfig, serve

    backend = _make_backend(args.model, args.device, args.cache_dir)
    cfg = ServerConfig(endpoint=args.bind, keys_dir=args.keys_dir, insecure=args.insecure,
                       session_budget_bytes=int(args.session_budget_gb * (1 << 30)))
    try:
        srv = serve(backend, cfg)
    except ConfigError as exc:
        raise UserFacingError(str(exc)) from None
    except Exception as exc:  # zmq.ZMQError: address in use etc.
        if type(exc).__name__ == "ZMQError":
            raise UserFacingError(f"cannot bind {args.bind}: {exc} (is another dragd serve running?)") from None
        raise
    del srv
    return 0


def _make_backend(model: str, device: str, cache_dir=None):
    from .backend import BackendError
    from .torch_backend import TorchBackend

    try:
        return TorchBackend(model=model, device=device, cache_dir=cache_dir)
    except BackendError as exc:
        raise UserFacingError(exc.message) from None


# -- edit -------------------------------------------------------------------------------------


def cmd_edit(args) -> int:
    import numpy as np
    from PIL import Image as PILImage

    from ..protocol.client import Client, DaemonUnavailable, RemoteError
    from ..protocol.schema import Image

    if not args.input.is_file():
        raise UserFacingError(f"input image {args.input} does not exist")
    try:
        src = PILImage.open(args.input)
        src.load()
    except Exception as exc:
        raise UserFacingError(f"cannot read {args.input} as an image: {exc}") from None
    mode = "RGBA" if ("A" in src.getbands() or src.mode == "P" and "transparency" in src.info) else "RGB"
    arr = np.ascontiguousarray(np.asarray(src.convert(mode), dtype=np.uint8))
    h, w, c = arr.shape
    layer = Image(arr.data, w, h, c)
    mask = None
    mask_arr = None
    if args.mask is not None:
        m = PILImage.open(args.mask).convert("L")
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
        client = Client(args.connect, timeout=1.5)
        try:
            hello = client.hello()
            print(f"daemon at {args.connect}: {hello['device']}", file=sys.stderr)
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
                                      progress=_print_progress)
        print(f"\ninverted in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

        def on_event(ev):
            _print_progress(ev)
            if args.gif is not None and "preview" in ev.images:
                frames.append(_to_pil(ev.images["preview"]))

        points = [((x1, y1), (x2, y2)) for x1, y1, x2, y2 in args.drag]
        t1 = time.perf_counter()
        result = client.drag(session, points, mask=mask, progress=on_event, max_steps=args.steps,
                             lr=args.lr, lambda_mask=args.lambda_mask, space=args.space,
                             tracking=args.tracking, preview_every=2 if args.gif else 0,
                             preview_max_size=512, paste=args.paste)
        print(f"\n{result['stop']} after {result['steps']} steps in {time.perf_counter() - t1:.1f} s; "
              f"mean distance to targets {result.get('distance') or 0:.2f} px", file=sys.stderr)
    except RemoteError as exc:
        raise UserFacingError(exc.message) from None
    finally:
        client.close()
        if server is not None:
            server.stop()
    out = _to_pil(result.images["image"])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    out.save(args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    if args.gif is not None:
        frames.append(out.convert("RGB").resize(frames[0].size) if frames else out.convert("RGB"))
        frames[0].save(args.gif, save_all=True, append_images=frames[1:], duration=80, loop=0)
        print(f"wrote {args.gif} ({len(frames)} frames)", file=sys.stderr)
    return 0


def _in_process_server(args):
    from .server import Server, ServerConfig

    backend = _make_backend(args.model or "default", args.device)
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


# -- demo -------------------------------------------------------------------------------------


def cmd_demo(args) -> int:
    from . import demo

    try:
        report = demo.run_demo(args.output, seed=args.seed, model=args.model, device=args.device,
                               max_steps=args.steps, lr=args.lr, lambda_mask=args.lambda_mask,
                               space=args.space, tracking=args.tracking)
    except demo.DemoError as exc:
        raise UserFacingError(str(exc)) from None
    print(report)
    return 0


# -- status, keys, install-plugins ------------------------------------------------------------


def cmd_status(args) -> int:
    from ..protocol.client import Client, DaemonUnavailable

    with Client(args.connect, timeout=2.0) as client:
        try:
            hello = client.hello()
            st = client.status()
        except DaemonUnavailable as exc:
            raise UserFacingError(exc.message) from None
    print(f"dragd {hello['daemon_version']} (protocol {hello['protocol']}) at {args.connect}")
    print(f"device: {hello['device']}; model: {hello.get('loaded_model')}; uptime {st.get('uptime', 0):.0f} s")
    running = st.get("running")
    print(f"running: {running['type'] + ' ' + running['job'] if running else 'nothing'}; "
          f"queued: {len(st['queue'])}")
    mem = st["memory"]
    print(f"sessions: {len(st['sessions'])} using {mem['used'] / 2**20:.0f} of {mem['budget'] / 2**20:.0f} MiB")
    return 0


def cmd_keys(args) -> int:
    from . import keys

    d = args.keys_dir or keys.default_keys_dir()
    if args.action == "init":
        kp = keys.ensure_keypair(d)
        print(f"server keypair in {d} (public key: {kp.public.decode()})")
        print("give clients the public key file server.key; trust a client with: dragd keys allow CLIENT.key")
    elif args.action == "allow":
        if args.file is None or not args.file.is_file():
            raise UserFacingError("dragd keys allow FILE: give the client's public key file")
        path = keys.allow_client(d, keys.load_public_key(args.file), args.file.stem)
        print(f"allowed client key {path}")
    else:
        kp = keys.load_keypair(d)
        print(f"server public key: {kp.public.decode()}")
        for k in keys.load_allowed_clients(d):
            print(f"allowed client: {k.decode()}")
    return 0


def cmd_install_plugins(args) -> int:
    from . import plugin_install as pi

    if not (args.gimp or args.krita or args.krita_zip):
        raise UserFacingError("say which: --gimp, --krita and/or --krita-zip OUT.zip")
    if args.gimp:
        if args.uninstall:
            print(f"removed the GIMP plug-in from {pi.uninstall_gimp(args.dest)}")
        else:
            where = pi.install_gimp(args.dest)
            print(f"installed the GIMP plug-in in {where}; restart GIMP, then use "
                  "Filters ▸ Generative ▸ Drag (DragGAN)… (GIMP's Python needs pyzmq and msgpack: see docs/GIMP.md)")
    if args.krita:
        if args.uninstall:
            print(f"removed the Krita plug-in from {pi.uninstall_krita(args.dest)}")
        else:
            where = pi.install_krita(args.dest)
            print(f"installed and enabled the Krita plug-in in {where}; restart Krita "
                  "(Krita's Python needs pyzmq and msgpack: see docs/KRITA.md)")
    if args.krita_zip:
        print(f"wrote {pi.build_krita_zip(args.krita_zip)}")
    return 0
