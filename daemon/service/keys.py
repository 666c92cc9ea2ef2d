"""CurveZMQ keypairs for the daemon and its clients.

Layout of a keys directory (default ``$XDG_CONFIG_HOME/dragd/keys``, i.e.
``~/.config/dragd/keys``; ``$DRAGD_KEYS_DIR`` overrides)::

    server.key            the daemon's public key: give it to every client
    server.key_secret     the daemon's keypair (mode 0600)
    client.key(_secret)   a client keypair made on this machine (optional)
    clients/NAME.key      public keys of the clients the daemon accepts (allow-list)

Files are ZPL certificates, compatible with czmq and ``zmq.auth``.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

import zmq

from ...protocol.curvekeys import format_key_file, normalise_key, read_key_file

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["KeyPair", "KeyFileError", "default_keys_dir", "create_keypair", "load_keypair",
           "ensure_keypair", "load_public_key", "load_allowed_clients", "allow_client"]


class KeyFileError(Exception):
    pass


@dataclass(frozen=True)
class KeyPair:
    public: bytes                # Z85, 40 bytes
    secret: Optional[bytes]      # Z85, 40 bytes; None for a public-only file


def default_keys_dir() -> Path:
    env = os.environ.get("DRAGD_KEYS_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"),
                                                              ".config")
    return Path(base) / "dragd" / "keys"


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)     # regardless of umask
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def create_keypair(directory: PathLike, name: str = "server",
                   overwrite: bool = False) -> KeyPair:
    """Make ``NAME.key`` (public, 0644) and ``NAME.key_secret`` (0600)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    pub_path, sec_path = d / (name + ".key"), d / (name + ".key_secret")
    if not overwrite and (pub_path.exists() or sec_path.exists()):
        raise KeyFileError("%s already exists; refusing to overwrite a keypair" % sec_path)
    public, secret = zmq.curve_keypair()
    for p in (pub_path, sec_path):
        if p.exists():
            p.unlink()
    _write_private(sec_path, format_key_file(public, secret, name))
    pub_path.write_text(format_key_file(public, None, name), encoding="utf-8")
    os.chmod(pub_path, 0o644)
    return KeyPair(public, secret)


def load_keypair(directory: PathLike, name: str = "server") -> KeyPair:
    """Read ``NAME.key_secret``; refuses a secret file other users can read."""
    path = Path(directory) / (name + ".key_secret")
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError("no keypair %s; create one with: dragd keys init" % path)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError("%s is accessible by other users; run: chmod 600 %s"
                           % (path, path))
    try:
        public, secret = read_key_file(path)
    except ValueError as e:
        raise KeyFileError("%s: %s" % (path, e))
    if secret is None:
        raise KeyFileError("%s holds no secret key" % path)
    return KeyPair(public, secret)


def ensure_keypair(directory: PathLike, name: str = "server") -> KeyPair:
    path = Path(directory) / (name + ".key_secret")
    if path.exists():
        return load_keypair(directory, name)
    return create_keypair(directory, name)


def load_public_key(path: PathLike) -> bytes:
    try:
        return read_key_file(path)[0]
    except (OSError, ValueError) as e:
        raise KeyFileError("%s: %s" % (os.fspath(path), e))


def load_allowed_clients(directory: PathLike) -> List[bytes]:
    """Public keys in ``DIR/clients/*.key`` (the daemon's allow-list)."""
    d = Path(directory) / "clients"
    if not d.is_dir():
        return []
    return [load_public_key(p) for p in sorted(d.glob("*.key"))]


def allow_client(directory: PathLike, public_key: Union[str, bytes], name: str) -> Path:
    """Add a client's public key to the allow-list."""
    key = normalise_key(public_key, "client public key")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "client"
    d = Path(directory) / "clients"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    p = d / (safe + ".key")
    p.write_text(format_key_file(key, None, safe), encoding="utf-8")
    return p
