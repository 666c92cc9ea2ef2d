"""The `dragd` command line: one module per command group.

Every command imports torch (and the daemon's heavy parts) lazily inside its handler, so
`dragd --help` and the plug-in installer work without touching torch.
"""
from __future__ import annotations

import argparse
import logging
import sys

from . import align, demo, edit, install_plugins, keys, models, serve, status
from .errors import UserFacingError

COMMAND_GROUPS = (serve, edit, demo, status, keys, install_plugins, models, align)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dragd", description="DragGAN point-drag editing daemon and tools")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserFacingError as exc:
        print(f"dragd: {exc}", file=sys.stderr)
        return 2
