"""`dragd align IN OUT --size N`: the FFHQ-aligned crop the daemon would invert, and its quad."""
from __future__ import annotations

from pathlib import Path

from .errors import UserFacingError


def add_parser(sub) -> None:
    a = sub.add_parser("align", help="write the FFHQ-aligned face crop of a photo and print its quad "
                                     "(needs pip install 'dragd[faces]')")
    a.add_argument("input", type=Path, metavar="IN", help="a photo (PNG, JPEG, …)")
    a.add_argument("output", type=Path, metavar="OUT", help="where to write the aligned crop")
    a.add_argument("--size", type=int, default=1024, metavar="N",
                   help="side of the aligned crop, the model's resolution (default 1024)")
    a.set_defaults(handler=cmd_align)


def _read(path: Path):
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGBA" if "A" in im.getbands() else "RGB"))
    except FileNotFoundError:
        raise UserFacingError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise UserFacingError(f"{path}: not an image Pillow can read ({exc.__class__.__name__})") from None


def cmd_align(args) -> int:
    from PIL import Image

    from ..edit import align
    from ..edit.faces import FacesUnavailable

    if not 8 <= args.size <= align.TRANSFORM_SIZE:
        raise UserFacingError(f"--size must be between 8 and {align.TRANSFORM_SIZE}, got {args.size}")
    layer = _read(args.input)
    try:
        geo = align.locate(layer, args.size)
    except (FacesUnavailable, align.AlignError) as exc:
        raise UserFacingError(str(exc)) from None
    try:
        Image.fromarray(align.align_image(layer, geo)).save(args.output)
    except (OSError, ValueError) as exc:
        raise UserFacingError(f"cannot write {args.output}: {exc}") from None
    corners = ("top-left", "bottom-left", "bottom-right", "top-right")
    print(f"{args.output}: {args.size}×{args.size} aligned (FFHQ) from {args.input} "
          f"({layer.shape[1]}×{layer.shape[0]}); face square {geo.side:.1f} px, quad in layer coordinates:")
    for name, (x, y) in zip(corners, geo.quad):
        print(f"  {name:12s} {x:9.2f} {y:9.2f}")
    return 0
