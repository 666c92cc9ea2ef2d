"""The `dragd` command line.

Every subcommand imports what it needs lazily, so `dragd --help` and the plug-in
installer work without touching torch.
"""
from __future__ import annotations

import argparse
import logging
import sys


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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dragd", description="DragGAN point-drag editing daemon and tools")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from . import cli_commands
    cli_commands.add_parsers(sub)
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


class UserFacingError(Exception):
    """An error whose message tells the user what to do; printed without a traceback."""


if __name__ == "__main__":
    # Run the package's copy of this module, so its exception classes are the ones the
    # subcommands raise (python -m would otherwise define a second UserFacingError here).
    from dragd.daemon.cli import main as package_main

    sys.exit(package_main())
