"""CurveZMQ client configuration for a daemon on another machine."""
from __future__ import annotations

import os
from typing import Optional, Tuple

from ..protocol import CurveConfig
from ..protocol.endpoint import is_loopback_endpoint
from .errors import UserError


def keys_dir() -> str:
    """Where the daemon's public key and this machine's client keypair live (the same
    default as ``dragd.daemon.service.keys``): $DRAGD_KEYS_DIR, else $XDG_CONFIG_HOME/dragd/keys,
    else ~/.config/dragd/keys."""
    env = os.environ.get("DRAGD_KEYS_DIR")
    if env:
        return env
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"),
                                                              ".config")
    return os.path.join(base, "dragd", "keys")


def curve_for(endpoint: str) -> Tuple[Optional[CurveConfig], str]:
    """CurveZMQ settings for a daemon on another machine: ``server.key`` (the daemon's
    public key) and ``client.key_secret`` (this machine's keypair) from :func:`keys_dir`.
    Returns (config or None, a hint for the error message when it cannot connect)."""
    if is_loopback_endpoint(endpoint):
        return None, ""
    d = keys_dir()
    server, client = os.path.join(d, "server.key"), os.path.join(d, "client.key_secret")
    hint = (" A daemon on another machine needs CurveZMQ keys: run dragd keys client on this "
            "machine, copy the daemon's server.key into %s, and on the daemon's machine run "
            "dragd keys allow client.key." % d)
    if os.path.isfile(server) and os.path.isfile(client):
        try:
            return CurveConfig.from_files(server, client), hint
        except (OSError, ValueError) as e:
            raise UserError("Cannot read the CurveZMQ keys in %s: %s" % (d, e))
    return None, hint
