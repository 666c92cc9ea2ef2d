"""What a daemon is started with."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from .. import __version__
from ...protocol import DEFAULT_ENDPOINT, Limits


class ConfigError(Exception):
    """The server configuration is unsafe or incomplete (raised by ``Server.start``)."""


@dataclass
class ServerConfig:
    endpoint: str = DEFAULT_ENDPOINT     # port 0 (or *) picks a free port
    limits: Limits = field(default_factory=Limits)
    session_budget_bytes: int = 4 << 30  # sessions + cached inversions; LRU-evict beyond this
    session_idle_seconds: float = 3600.0  # close sessions unused this long (0: never)
    max_queued_bytes: int = 1 << 30      # pixel bytes held by queued jobs before 'busy'
    insecure: bool = False               # allow a non-loopback bind without CurveZMQ
    curve: Optional[bool] = None         # None: CurveZMQ iff the bind is not loopback
    keys_dir: Optional[str] = None       # server.key_secret + clients/*.key (daemon.keys)
    server_secret_key: Optional[bytes] = None   # Z85; overrides keys_dir
    server_public_key: Optional[bytes] = None   # Z85; derived from the secret if None
    allowed_clients: Optional[List[bytes]] = None   # Z85 client public keys
    allow_any_client: bool = False       # CurveZMQ encryption but no allow-list
    shutdown_timeout: float = 10.0       # how long stop() waits for the running step
    heartbeat_ivl_ms: int = 2000         # ZMTP heartbeats to drop dead TCP peers
    poll_ms: int = 100
    daemon_version: str = __version__
