"""Who may talk to the daemon: loopback only, unless CurveZMQ keys say otherwise.

A non-loopback bind needs CurveZMQ (the daemon's keypair and an allow-list of client public
keys, from a keys folder: see ``dragd keys``) or an explicit ``--insecure``. The allow-list is
enforced by a ZAP handler (pyzmq's ThreadAuthenticator) calling `AllowList.callback`.

Peer ids: libzmq numbers a ROUTER's peers from a counter that starts at ``rand()``, which
nothing seeds, so every fresh daemon hands out the same ids; a local peer that claims one the
counter will reach later (ZMQ_ROUTING_ID) makes libzmq abort the whole process when an
ordinary client gets that number (socket_base.cpp assertion). ZAP cannot refuse such a peer:
libzmq's ZAP request carries the local socket's routing id, not the peer's (measured with
libzmq 4.3.5: the identity frame is empty for a peer that set one). So
`make_peer_ids_unguessable` seeds ``rand()`` from the OS before the ROUTER is made.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import secrets
import sys
from dataclasses import dataclass
from typing import Iterable, List, Optional

import zmq

from ...protocol.curvekeys import normalise_key
from ...protocol.endpoint import is_loopback_endpoint
from . import keys
from .config import ConfigError, ServerConfig
from .logfmt import kv

log = logging.getLogger("dragd.server")


@dataclass(frozen=True)
class CurveKeys:
    public: bytes                      # Z85
    secret: bytes                      # Z85
    allowed: List[bytes]               # Z85 client public keys
    allow_any: bool


class AllowList:
    """ZAP credentials provider for ThreadAuthenticator.configure_curve_callback."""

    def __init__(self, keys: Iterable[bytes], allow_any: bool):
        self.keys = {bytes(k) for k in keys}
        self.allow_any = allow_any

    def callback(self, domain: str, key: bytes) -> bool:
        ok = self.allow_any or bytes(key) in self.keys
        log.log(logging.INFO if ok else logging.WARNING,
                kv("curve_auth", allowed=ok, client_key=bytes(key).decode("ascii", "replace")))
        return ok


def make_peer_ids_unguessable() -> bool:
    """Seed the C library's rand() with 32 secret bits (see the module docstring); call it
    just before creating the ROUTER. False where the C library cannot be reached."""
    try:
        name = "msvcrt" if sys.platform == "win32" else ctypes.util.find_library("c")
        libc = ctypes.CDLL(name)
        libc.srand(ctypes.c_uint(secrets.randbits(32)))
    except (OSError, AttributeError, TypeError) as e:
        log.warning(kv("peer_ids_predictable", error=e))
        return False
    return True


def curve_keys_for(cfg: ServerConfig) -> Optional[CurveKeys]:
    """The CurveZMQ keys this configuration binds with, or None for a plain (loopback or
    explicitly insecure) bind. Raises ConfigError for an unsafe or incomplete one."""
    loopback = is_loopback_endpoint(cfg.endpoint)
    want = cfg.curve if cfg.curve is not None else not loopback
    found = None
    if want:
        found = _load(cfg)
        if found is None and cfg.curve is None and cfg.insecure:
            want = False
        elif found is None:
            raise ConfigError(
                "binding dragd to %s (not loopback) needs CurveZMQ keys: create them with: "
                "dragd keys init, or pass insecure=True (--insecure) to allow anyone who can "
                "reach the port" % cfg.endpoint)
    if not want and not loopback:
        if not cfg.insecure:
            raise ConfigError(
                "refusing to bind dragd to %s without CurveZMQ: only loopback addresses may "
                "be used without keys; create keys with: dragd keys init, or pass "
                "insecure=True (--insecure)" % cfg.endpoint)
        log.warning(kv("insecure_bind", endpoint=cfg.endpoint,
                       message="dragd listens on a non-loopback address without CurveZMQ: "
                               "anyone who can reach this port can use the daemon and read "
                               "the images"))
    return found if want else None


def _load(cfg: ServerConfig) -> Optional[CurveKeys]:
    if not zmq.has("curve"):
        raise ConfigError("this libzmq has no CurveZMQ support")
    secret, public = cfg.server_secret_key, cfg.server_public_key
    allowed = list(cfg.allowed_clients or [])
    if cfg.keys_dir:
        try:
            if secret is None:
                kp = keys.load_keypair(cfg.keys_dir, "server")
                public, secret = kp.public, kp.secret
            if cfg.allowed_clients is None:
                allowed = keys.load_allowed_clients(cfg.keys_dir)
        except keys.KeyFileError as e:
            raise ConfigError(str(e))
    if secret is None:
        return None
    secret = normalise_key(secret, "server secret key")
    public = normalise_key(public, "server public key") if public else zmq.curve_public(secret)
    allowed = [normalise_key(k, "client key") for k in allowed]
    if not allowed and not cfg.allow_any_client:
        raise ConfigError(
            "CurveZMQ is on but no client key is allowed: add client public keys to %s/clients/ "
            "(dragd keys allow FILE), or set allow_any_client" % (cfg.keys_dir or "KEYS_DIR"))
    return CurveKeys(public, secret, allowed, cfg.allow_any_client)
