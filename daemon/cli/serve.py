"""`dragd serve`: run the daemon (it owns the GPU; plug-ins and `dragd edit` connect to it)."""
from __future__ import annotations

from pathlib import Path

from ...protocol import DEFAULT_ENDPOINT
from .errors import UserFacingError


def add_parser(sub) -> None:
    s = sub.add_parser("serve", help="run the daemon (owns the GPU; plug-ins and `dragd edit` connect to it)")
    s.add_argument("--bind", default=DEFAULT_ENDPOINT, help=f"ZeroMQ endpoint (default {DEFAULT_ENDPOINT}; "
                   "a non-loopback address needs CurveZMQ keys, see `dragd keys`)")
    s.add_argument("--model", default="default", help="model name or checkpoint path (default: embedded model)")
    s.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    s.add_argument("--keys-dir", help="CurveZMQ keys folder (server.key_secret, clients/*.key; default: the one `dragd keys init` uses)")
    s.add_argument("--insecure", action="store_true", help="allow a non-loopback bind WITHOUT encryption "
                   "or authentication (anyone on the network can use the daemon)")
    s.add_argument("--session-budget-gb", type=float, default=4.0,
                   help="memory for open sessions before the least recently used are evicted")
    s.add_argument("--cache-dir", type=Path, help="inversion cache folder (default ~/.cache/dragd/inversions)")
    s.set_defaults(handler=cmd_serve)


def cmd_serve(args) -> int:
    from ..service import keys
    from ..service.server import ConfigError, ServerConfig, serve

    keys_dir = args.keys_dir
    if keys_dir is None and (keys.default_keys_dir() / "server.key_secret").is_file():
        keys_dir = keys.default_keys_dir()      # where `dragd keys init` put them
    backend = make_backend(args.model, args.device, args.cache_dir)
    cfg = ServerConfig(endpoint=args.bind, keys_dir=keys_dir, insecure=args.insecure,
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


def make_backend(model: str, device: str, cache_dir=None):
    from ..service.backend import BackendError
    from ..service.torch_backend import TorchBackend

    try:
        return TorchBackend(model=model, device=device, cache_dir=cache_dir)
    except BackendError as exc:
        raise UserFacingError(exc.message) from None
