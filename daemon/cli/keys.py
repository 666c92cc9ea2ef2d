"""`dragd keys …`: CurveZMQ keys for a daemon on a non-loopback address.

On the daemon's machine: `dragd keys init` (its keypair), then `dragd keys allow CLIENT.key`
for each client. On each client machine: `dragd keys client` (the keypair the plug-ins and
`dragd edit` use), plus a copy of the daemon's server.key in the same folder.
"""
from __future__ import annotations

from pathlib import Path

from .errors import UserFacingError


def add_parser(sub) -> None:
    k = sub.add_parser("keys", help="CurveZMQ keys for a daemon on a non-loopback address")
    k.add_argument("action", choices=["init", "allow", "client", "show"],
                   help="init: create the daemon's keypair; allow FILE: trust a client public key; "
                        "client: create this machine's client keypair; show: print the keys")
    k.add_argument("file", nargs="?", type=Path, help="client public key file (for allow)")
    k.add_argument("--keys-dir", type=Path, help="keys folder (default $DRAGD_KEYS_DIR, else "
                   "~/.config/dragd/keys: where the daemon and the plug-ins look)")
    k.set_defaults(handler=cmd_keys)


def cmd_keys(args) -> int:
    from ..service import keys

    d = args.keys_dir or keys.default_keys_dir()
    try:
        if args.action == "init":
            kp = keys.ensure_keypair(d, "server")
            print(f"server keypair in {d} (public key: {kp.public.decode()})")
            print("give each client machine the public key file server.key; trust a client with: "
                  "dragd keys allow CLIENT.key")
        elif args.action == "client":
            kp = keys.ensure_keypair(d, "client")
            print(f"client keypair in {d} (public key: {kp.public.decode()})")
            print(f"copy the daemon's server.key into {d}; on the daemon's machine, trust this "
                  f"client with: dragd keys allow client.key (the file {Path(d) / 'client.key'})")
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
    except keys.KeyFileError as exc:
        raise UserFacingError(str(exc)) from None
    return 0
