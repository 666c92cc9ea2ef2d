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
    # The daemon details only this client's own jobs and sessions, and counts the others'.
    running, others = st.get("running"), st.get("others") or {}
    print(f"running: {running['type'] + ' ' + running['job'] if running else 'nothing'}; "
          f"queued: {len(st['queue'])}; other clients' jobs: {others.get('jobs', 0)}")
    mem = st["memory"]
    print(f"sessions: {len(st['sessions'])} of this client, {others.get('sessions', 0)} of others, "
          f"using {mem['used'] / 2**20:.0f} of {mem['budget'] / 2**20:.0f} MiB")
    return 0
