"""`dragd status`: what the daemon is doing."""
from __future__ import annotations

from ...protocol import DEFAULT_ENDPOINT
from .errors import UserFacingError


def add_parser(sub) -> None:
    st = sub.add_parser("status", help="what the daemon is doing")
    st.add_argument("--connect", default=DEFAULT_ENDPOINT)
    st.set_defaults(handler=cmd_status)


def cmd_status(args) -> int:
    from ...protocol import Client, DaemonUnavailable

    with Client(args.connect, timeout=2.0) as client:
        try:
            hello = client.hello()
            st = client.status()
        except DaemonUnavailable as exc:
            raise UserFacingError(exc.message) from None
    print(f"dragd {hello['daemon_version']} (protocol {hello['protocol']}) at {args.connect}")
    print(f"device: {hello['device']}; model: {hello.get('loaded_model')}; uptime {st.get('uptime', 0):.0f} s")
    running = st.get("running")
    print(f"running: {running['type'] + ' ' + running['job'] if running else 'nothing'}; "
          f"queued: {len(st['queue'])}")
    mem = st["memory"]
    print(f"sessions: {len(st['sessions'])} using {mem['used'] / 2**20:.0f} of {mem['budget'] / 2**20:.0f} MiB")
    return 0
