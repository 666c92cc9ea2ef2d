"""Soak a real `dragd serve`: N clients editing while a hostile one attacks it.

A daemon process on a tiny random generator (built as tests/daemon_fixture.py builds it); N
client threads each open their own layer (unique pixels), drag a few steps and close, over and
over; one hostile thread sends mutated protocol messages and opens sessions it never closes; one
thread asks for `status` every 50 ms. After `--seconds` the load stops, the daemon gets
`--settle` seconds to expire the abandoned sessions, and this prints:

  edits completed / lost (no result) / mixed up (a result that is not the client's own layer)
  busy rejections, status p50/p99 latency under load, daemon RSS start/peak/end,
  whether any client's status ever listed a session it did not open, and whether the daemon died.

Targets: 0 deaths, 0 lost or mixed up, RSS end within 10 % of start, status p99 <= 50 ms.

    nice .venv/bin/python benchmarks/soak.py --clients 8 --seconds 60
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from daemon_fixture import build_tiny_model, start_daemon  # noqa: E402

from dragd.protocol import Client, Image, RemoteError  # noqa: E402
from dragd.protocol.messages import PROTOCOL_VERSION  # noqa: E402

SIDE = 48                                  # layer side; the edit touches only the ROI's square
ROI = {"x": 16, "y": 16, "width": 12, "height": 12}


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def client_layer(cid: int, round_: int) -> bytes:
    rnd = random.Random(cid * 100003 + round_)
    return bytes(rnd.randrange(256) for _ in range(SIDE * SIDE * 3))


def outside_crop(data: bytes) -> bytes:
    """The pixels of the first rows, far from the ROI's square: an edit never changes them."""
    return bytes(data[: SIDE * 3 * 4])


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.completed = self.lost = self.mixed = self.busy = 0
        self.foreign_sessions = 0
        self.errors: dict[str, int] = {}
        self.status_ms: list[float] = []

    def add(self, **kw):
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def error(self, what: str):
        with self.lock:
            self.errors[what] = self.errors.get(what, 0) + 1


def editor(endpoint: str, cid: int, stop: threading.Event, stats: Stats) -> None:
    mine: set[str] = set()
    with Client(endpoint, timeout=30, job_timeout=120) as c:
        n = 0
        while not stop.is_set():
            n += 1
            data = client_layer(cid, n)
            try:
                s = c.open_session(Image(data, SIDE, SIDE, 3), roi=ROI, invert={"method": "none"})
                mine.add(s.id)
                r = c.drag(s, [((20.5, 20.5), (23.5, 22.5))], max_steps=3)
                out = bytes(r.images["image"].data) if hasattr(r, "images") else b""
                if r["session"] != s.id or outside_crop(out) != outside_crop(data):
                    stats.add(mixed=1)
                else:
                    stats.add(completed=1)
                if n % 5 == 0:
                    listed = {x["session"] for x in c.status()["sessions"]}
                    stats.add(foreign_sessions=len(listed - mine))
                c.close_session(s)
            except RemoteError as e:
                if e.code == "busy":
                    stats.add(busy=1)
                    time.sleep(0.05)
                else:
                    stats.add(lost=1)
                    stats.error(e.code)
            except Exception as e:           # DaemonUnavailable, JobTimeout
                stats.add(lost=1)
                stats.error(type(e).__name__)


def mutated(rnd: random.Random) -> list[bytes]:
    good = {"v": PROTOCOL_VERSION, "id": "h%d" % rnd.randrange(1 << 30), "type": "drag",
            "session": "s-%016x" % rnd.randrange(1 << 63), "points": [{"handle": [1, 1], "target": [2, 2]}]}
    kind = rnd.randrange(6)
    if kind == 0:
        return [os.urandom(rnd.randrange(1, 300))]
    header = bytearray(msgpack.packb(good))
    if kind == 1:
        for _ in range(rnd.randrange(1, 8)):
            header[rnd.randrange(len(header))] = rnd.randrange(256)
        return [bytes(header)]
    if kind == 2:
        return [bytes(header[: rnd.randrange(len(header))])]
    if kind == 3:
        good["type"] = rnd.choice(["status", "open_session", "cancel", "undo", "ping", "x" * 300])
        good[rnd.choice(["frames", "params", "job", "steps"])] = rnd.choice([None, -1, 1e308, "a" * 5000, [[]] * 50])
        return [msgpack.packb(good)]
    if kind == 4:
        return [msgpack.packb(good)] + [b"\0" * rnd.randrange(64)] * rnd.randrange(1, 12)
    good.update(type="open_session", frames=[{"name": "image", "width": 1 << 20, "height": 2, "channels": 3}])
    return [msgpack.packb(good), os.urandom(64)]


def hostile(endpoint: str, stop: threading.Event, stats: Stats) -> None:
    rnd = random.Random(1)
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.setsockopt(zmq.RCVHWM, 100)
    raw.connect(endpoint)
    leaker = Client(endpoint, timeout=30)
    n = 0
    try:
        while not stop.is_set():
            n += 1
            try:
                raw.send_multipart([b""] + mutated(rnd), flags=zmq.NOBLOCK)
            except zmq.Again:
                pass
            while raw.poll(0):
                raw.recv_multipart()
            if n % 10 == 0:                  # a session it never closes
                try:
                    leaker.open_session(Image(os.urandom(16 * 16 * 3), 16, 16, 3), invert={"method": "none"})
                except RemoteError:
                    pass
                except Exception as e:
                    stats.error("hostile:" + type(e).__name__)
            time.sleep(0.002)
    finally:
        raw.close(0)
        leaker.close()


def watcher(endpoint: str, stop, out) -> None:
    """In its own process, so the editors' threads do not delay it on this side."""
    ms, failed = [], 0
    with Client(endpoint, timeout=30) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                c.status()
                ms.append((time.perf_counter() - t0) * 1000)
            except Exception:
                failed += 1
            time.sleep(0.05)
    out.put((ms, failed))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--idle-minutes", type=float, default=0.25,
                    help="the daemon's --session-idle-minutes: the hostile client's sessions expire after it")
    ap.add_argument("--settle", type=float, default=30.0, help="seconds after the load before the end RSS")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dragd-soak-"))
    model = build_tiny_model(work / "tiny32.safetensors")
    daemon = start_daemon(model, work, extra_args=("--session-idle-minutes", str(args.idle_minutes)))
    pid = daemon.proc.pid
    stats = Stats()
    stop = threading.Event()
    rss = [rss_mb(pid)]
    try:
        with Client(daemon.endpoint, timeout=30) as warm:      # one edit first: steady state
            s = warm.open_session(Image(client_layer(-1, 0), SIDE, SIDE, 3), roi=ROI, invert={"method": "none"})
            warm.drag(s, [((20.5, 20.5), (23.5, 22.5))], max_steps=3)
            warm.close_session(s)
        start = rss_mb(pid)
        threads = [threading.Thread(target=editor, args=(daemon.endpoint, i, stop, stats), daemon=True)
                   for i in range(args.clients)]
        threads.append(threading.Thread(target=hostile, args=(daemon.endpoint, stop, stats), daemon=True))
        mp_stop, mp_out = multiprocessing.Event(), multiprocessing.Queue()
        watch = multiprocessing.Process(target=watcher, args=(daemon.endpoint, mp_stop, mp_out))
        watch.start()
        for t in threads:
            t.start()
        t_end = time.monotonic() + args.seconds
        while time.monotonic() < t_end and daemon.proc.poll() is None:
            rss.append(rss_mb(pid))
            time.sleep(0.5)
        stop.set()
        mp_stop.set()
        for t in threads:
            t.join(60)
        stats.status_ms, failed = mp_out.get(timeout=60)
        watch.join(10)
        if failed:
            stats.error("status failed x%d" % failed)
        settle_end = time.monotonic() + args.settle
        while time.monotonic() < settle_end and daemon.proc.poll() is None:
            rss.append(rss_mb(pid))
            time.sleep(0.5)
        died = daemon.proc.poll() is not None
        end = rss_mb(pid) if not died else 0.0
    finally:
        daemon.stop()

    ms = sorted(stats.status_ms) or [float("nan")]
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    print(f"clients {args.clients}, {args.seconds:.0f} s load, {args.settle:.0f} s settle "
          f"(session idle limit {args.idle_minutes * 60:.0f} s)")
    print(f"daemon died: {'YES' if died else 'no'}")
    print(f"edits completed {stats.completed}, lost {stats.lost}, mixed up {stats.mixed}, "
          f"busy rejections {stats.busy}")
    if stats.errors:
        print("errors: " + ", ".join(f"{k} x{v}" for k, v in sorted(stats.errors.items())))
    print(f"status latency under load: p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms "
          f"({len(stats.status_ms)} calls)")
    print(f"daemon RSS: start {start:.0f} MB, peak {max(rss):.0f} MB, end {end:.0f} MB "
          f"({(end - start) / start * 100:+.1f} %)")
    print(f"a client saw another's session: {'YES (%d)' % stats.foreign_sessions if stats.foreign_sessions else 'no'}")
    ok = (not died and stats.lost == 0 and stats.mixed == 0 and stats.foreign_sessions == 0
          and p99 <= 50 and end <= start * 1.10)
    print("targets met" if ok else "targets NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
