"""`dragd demo`: drag a generated portrait with a model; writes before | after."""
from __future__ import annotations

from pathlib import Path

from .edit import add_drag_options
from .errors import UserFacingError


def add_parser(sub) -> None:
    d = sub.add_parser("demo", help="drag a generated portrait with the embedded model; writes before/after")
    d.add_argument("-o", "--output", type=Path, default=Path("demo.png"))
    d.add_argument("--seed", type=int, default=3)
    d.add_argument("--model", default="default")
    d.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    add_drag_options(d)
    d.set_defaults(handler=cmd_demo)


def cmd_demo(args) -> int:
    from ..edit import demo

    try:
        report = demo.run_demo(args.output, seed=args.seed, model=args.model, device=args.device,
                               max_steps=args.steps, lr=args.lr, lambda_mask=args.lambda_mask,
                               space=args.space, tracking=args.tracking)
    except demo.DemoError as exc:
        raise UserFacingError(str(exc)) from None
    print(report)
    return 0
