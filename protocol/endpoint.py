"""ZeroMQ endpoint facts both sides need: is an endpoint on this machine only?"""
from __future__ import annotations

import ipaddress
from typing import Tuple


def endpoint_host(endpoint: str) -> Tuple[str, str]:
    """(transport, host) of a ZeroMQ endpoint such as tcp://127.0.0.1:5557."""
    transport, _, rest = endpoint.strip().partition("://")
    if transport != "tcp":
        return transport, rest
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    if ";" in host:                      # tcp://source;dest form: the bind address is dest
        host = host.split(";", 1)[1]
    return transport, host.strip("[]")


def is_loopback_endpoint(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback address (127.0.0.0/8, ::1,
    localhost). A wildcard (*, 0.0.0.0), an interface name or any other address is not."""
    transport, host = endpoint_host(endpoint)
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
