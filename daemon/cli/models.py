"""`dragd models …`: list the known checkpoints, fetch one, convert any checkpoint to native.

Hook into the main CLI with `add_parser(subparsers)`; every handler takes the parsed
arguments and returns an exit code. Torch is imported only by `convert`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import UserFacingError


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("models", help="list, download and convert StyleGAN2 checkpoints",
                              description="Known public StyleGAN2 checkpoints and checkpoint conversion. "
                                          "Cache: $DRAGD_CACHE or ~/.cache/dragd/models.")
    sub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    ls = sub.add_parser("list", help="show known models and which are downloaded")
    ls.set_defaults(handler=cmd_list)

    f = sub.add_parser("fetch", help="download a known model into the cache")
    f.add_argument("name", help="model name (see `dragd models list`)")
    f.add_argument("--force", action="store_true", help="download again even if present")
    f.add_argument("--timeout", type=float, default=10.0, help="network timeout in seconds (default 10)")
    f.set_defaults(handler=cmd_fetch)

    c = sub.add_parser("convert", help="any supported checkpoint → dragd .safetensors",
                       description="Read IN (NVIDIA StyleGAN2/StyleGAN2-ADA pickle, original TensorFlow StyleGAN2 "
                                   "pickle, rosinality .pt, or dragd .safetensors) without executing anything in "
                                   "it, and write OUT as dragd safetensors.")
    c.add_argument("input", metavar="IN", help="checkpoint path or a downloaded model name")
    c.add_argument("output", metavar="OUT", help="output .safetensors path")
    c.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                   help="storage precision (default float16; computation is always float32)")
    c.add_argument("--no-d", action="store_true", help="leave the discriminator out")
    c.set_defaults(handler=cmd_convert)
    return p


def cmd_list(args) -> int:
    from ..model import registry as reg

    rows = reg.list_models()
    print(f"cache: {reg.cache_dir()}")
    width = max(len(s.entry.name) for s in rows)
    for s in rows:
        mark = f"present {s.size / 2**20:7.1f} MiB" if s.present else "-"
        print(f"  {s.entry.name:<{width}}  {s.entry.resolution:>4}px  {mark:<20} {s.entry.description}")
    default = reg.DEFAULT_MODEL_PATH
    print(f"  {'default':<{width}}  embedded: {'present' if default.is_file() else 'missing'} ({default})")
    return 0


def cmd_fetch(args) -> int:
    from ..model import registry as reg

    try:
        path = reg.fetch(args.name, progress=reg.text_progress(), timeout=args.timeout,
                         force=getattr(args, "force", False), log=lambda m: print(m, file=sys.stderr))
    except reg.ModelError as exc:
        raise UserFacingError(str(exc)) from None
    print(path)
    return 0


def cmd_convert(args) -> int:
    import torch

    from ..model import registry as reg
    from ..model.checkpoints import CheckpointError, load_checkpoint, save_native

    try:
        src = reg.resolve_model(args.input)
        loaded = load_checkpoint(src)
    except (reg.ModelError, CheckpointError) as exc:
        raise UserFacingError(str(exc)) from None
    out = Path(args.output)
    if out.resolve() == Path(src).resolve():
        raise UserFacingError("OUT must differ from IN")
    out.parent.mkdir(parents=True, exist_ok=True)
    info = loaded.info
    meta = {"source": str(src), "source_format": info.get("format", "?"), "source_name": info.get("name", "?")}
    for key in ("network", "code", "training_set"):
        if key in info:
            meta[f"source_{key}"] = info[key]
    meta.update(reg.known_metadata(args.input, src))   # the converted file keeps what the registry knew
    if info.get("format") == "dragd":      # keep the free-form facts of a native file
        meta.update({k: v for k, v in info.items()
                     if k not in ("format", "format_version", "dtype", "warnings", "name", "path",
                                  "resolution", "has_discriminator")})
    D = None if args.no_d else loaded.D
    dtype = torch.float16 if args.dtype == "float16" else torch.float32
    save_native(out, loaded.G, D, info=meta, dtype=dtype)
    for w in info.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    print(f"{out}: {loaded.G.cfg.resolution}px generator{' + discriminator' if D is not None else ''}, "
          f"{args.dtype}, from {info.get('format')} {src}")
    return 0
