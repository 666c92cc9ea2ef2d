"""`dragd serve`: run the daemon (it owns the GPU; plug-ins and `dragd edit` connect to it)."""
from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from ...protocol import DEFAULT_ENDPOINT
from .errors import UserFacingError


def add_parser(sub) -> None:
    s = sub.add_parser("serve", help="run the daemon (owns the GPU; plug-ins and `dragd edit` connect to it)")
    s.add_argument("--bind", default=DEFAULT_ENDPOINT, help=f"ZeroMQ endpoint (default {DEFAULT_ENDPOINT}; "
                   "a non-loopback address needs CurveZMQ keys, see `dragd keys`)")
    s.add_argument("--model", default="default", help="model name or checkpoint path (default: embedded model)")
    s.add_argument("--allow-model", action="append", default=[], type=Path, metavar="PATH_OR_DIR",
                   help="a checkpoint file or folder clients may load with load_model (repeatable); "
                        "besides these and --model, clients can load only model names")
    s.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    s.add_argument("--keys-dir", help="CurveZMQ keys folder (server.key_secret, clients/*.key; default: the one `dragd keys init` uses)")
    s.add_argument("--insecure", action="store_true", help="allow a non-loopback bind WITHOUT encryption "
                   "or authentication (anyone on the network can use the daemon)")
    s.add_argument("--memory-budget-gb", "--session-budget-gb", dest="memory_budget_gb", type=_positive_float,
                   default=4.0, metavar="GB",
                   help="memory for open sessions and the in-memory inversion cache together (default 4); "
                        "beyond it cached inversions no session uses go first, then the least recently used sessions")
    s.add_argument("--session-idle-minutes", type=_non_negative_float, default=60.0, metavar="MINUTES",
                   help="close sessions unused for this long (default 60; 0: never)")
    s.add_argument("--cache-dir", type=Path, help="inversion cache folder (default ~/.cache/dragd/inversions)")
    s.set_defaults(handler=cmd_serve)


def cmd_serve(args) -> int:
    from ..service import keys
    from ..service.server import ConfigError, ServerConfig, serve

    keys_dir = args.keys_dir
    if keys_dir is None and (keys.default_keys_dir() / "server.key_secret").is_file():
        keys_dir = keys.default_keys_dir()      # where `dragd keys init` put them
    for allowed in args.allow_model:
        if not allowed.expanduser().exists():
            raise UserFacingError(f"--allow-model {allowed} does not exist; name a checkpoint file or a folder of them")
    if args.cache_dir is not None:
        _check_cache_dir(args.cache_dir)
    budget = int(args.memory_budget_gb * (1 << 30))
    backend = make_backend(args.model, args.device, args.cache_dir, args.allow_model, memory_budget=budget)
    cfg = ServerConfig(endpoint=args.bind, keys_dir=keys_dir, insecure=args.insecure,
                       session_budget_bytes=budget, session_idle_seconds=args.session_idle_minutes * 60)
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


def _check_cache_dir(path: Path) -> None:
    """--cache-dir must be a folder the daemon can create and write: say so now, not later."""
    path = path.expanduser()
    if path.exists() and not path.is_dir():
        raise UserFacingError(f"--cache-dir {path} is a file, not a folder; name a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UserFacingError(f"--cache-dir {path} cannot be used as the inversion cache folder "
                              f"({exc.strerror or exc}); name a folder you can write to") from None


def _positive_float(text: str) -> float:
    v = _number(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of GB (e.g. 4 or 0.5)")
    return v


def _non_negative_float(text: str) -> float:
    v = _number(text)
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number of minutes ≥ 0 (0: never)")
    return v


def _number(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return v


def make_backend(model: str, device: str, cache_dir=None, allowed_models=(), memory_budget=None):
    from ..service.backend import BackendError
    from ..service.torch_backend import TorchBackend

    try:
        kw = {} if memory_budget is None else {"cache_memory_bytes": memory_budget}
        return TorchBackend(model=model, device=device, cache_dir=cache_dir, allowed_models=allowed_models, **kw)
    except BackendError as exc:
        raise UserFacingError(exc.message) from None
