"""`dragd keys …`: CurveZMQ keys for a daemon on a non-loopback address."""
from __future__ import annotations

from pathlib import Path

from .errors import UserFacingError


def add_parser(sub) -> None:
    k = sub.add_parser("keys", help="CurveZMQ keys for a daemon on a non-loopback address")
    k.add_argument("action", choices=["init", "allow", "show"],
                   help="init: create the server keypair; allow FILE: trust a client public key; show: print keys")
    k.add_argument("file", nargs="?", type=Path, help="client public key file (for allow)")
    k.add_argument("--keys-dir", type=Path)
    k.set_defaults(handler=cmd_keys)


def cmd_keys(args) -> int:
    from ..service import keys

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
