"""Round-trip overhead of the dragd protocol over loopback TCP.

A daemon with a backend that does no work (``NullBackend``) runs in a separate process
(``--inproc`` puts it in this one). For each layer size the client times:

* upload   ``open_session`` with the layer (send frame, validate, small reply)
* download ``drag`` (small request; the result carries the full layer back)
* total    upload + download: the protocol's share of one open-and-drag edit

and prints the median over ``--repeat`` runs, next to the same transfers with bare
pyzmq (the machine's loopback transport floor, no protocol at all). Target: total < 100 ms for 4000x3000 RGBA.

    .venv/bin/python benchmarks/bench_roundtrip.py [--repeat 7] [--inproc]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time

SIZES = [(512, 512), (4000, 3000)]


def _raw_echo(ctx, ready) -> None:
    """Transport floor: a bare ROUTER that answers b"up" + frame with a tiny ack and
    b"down" + n with n bytes (no protocol, no validation)."""
    import zmq
    r = ctx.socket(zmq.ROUTER)
    r.linger = 0
    ready.append(r.bind_to_random_port("tcp://127.0.0.1"))
    cache = {}
    while True:
        parts = r.recv_multipart(copy=False)
        kind = parts[1].bytes
        if kind == b"stop":
            break
        if kind == b"up":
            r.send_multipart([parts[0], b"ok"], copy=False)
        else:
            n = int(parts[2].bytes)
            data = cache.setdefault(n, bytes(n))
            r.send_multipart([parts[0], b"ok", data], copy=False)
    r.close()


def _serve(conn) -> None:
    import threading
    import zmq
    from dragd.daemon.service.backend import NullBackend
    from dragd.daemon.service.server import Server, ServerConfig
    srv = Server(NullBackend(), ServerConfig(endpoint="tcp://127.0.0.1:0")).start()
    ctx = zmq.Context()
    ready: list = []
    t = threading.Thread(target=_raw_echo, args=(ctx, ready), daemon=True)
    t.start()
    while not ready:
        time.sleep(0.01)
    conn.send((srv.endpoint, "tcp://127.0.0.1:%d" % ready[0]))
    conn.recv()                       # wait for "stop"
    srv.stop()


def _raw_floor(endpoint: str, nbytes: int, repeat: int):
    """Median (upload, download) seconds of bare pyzmq for the same payload."""
    import zmq
    ctx = zmq.Context.instance()
    d = ctx.socket(zmq.DEALER)
    d.linger = 0
    d.connect(endpoint)
    data = bytes(nbytes)
    up, down = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        d.send_multipart([b"up", data], copy=False)
        d.recv_multipart(copy=False)
        t1 = time.perf_counter()
        d.send_multipart([b"down", str(nbytes).encode()])
        d.recv_multipart(copy=False)
        t2 = time.perf_counter()
        up.append(t1 - t0)
        down.append(t2 - t1)
    d.close()
    return statistics.median(up), statistics.median(down)


def _layer(w: int, h: int) -> bytes:
    row = bytes((x * 7) & 0xFF for x in range(w * 4))
    return row * h


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--inproc", action="store_true", help="run the daemon in this process")
    args = ap.parse_args(argv)

    from dragd.protocol import Client, Image

    proc = srv = None
    raw_ep = None
    if args.inproc:
        from dragd.daemon.service.backend import NullBackend
        from dragd.daemon.service.server import Server, ServerConfig
        srv = Server(NullBackend(), ServerConfig(endpoint="tcp://127.0.0.1:0")).start()
        endpoint = srv.endpoint
    else:
        parent, child = mp.get_context("spawn").Pipe()
        proc = mp.get_context("spawn").Process(target=_serve, args=(child,), daemon=True)
        proc.start()
        endpoint, raw_ep = parent.recv()

    rows = []
    try:
        with Client(endpoint, timeout=10) as c:
            c.hello()
            t = []
            for _ in range(50):
                t0 = time.perf_counter()
                c.ping()
                t.append(time.perf_counter() - t0)
            print("endpoint %s (%s daemon)" % (endpoint, "in-process" if args.inproc
                                               else "separate-process"))
            print("ping round trip: %.3f ms (median of 50)" % (1e3 * statistics.median(t)))
            for w, h in SIZES:
                img = Image(_layer(w, h), w, h, 4)
                up, down = [], []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    s = c.open_session(img)
                    t1 = time.perf_counter()
                    r = c.drag(s, [((1, 1), (2, 2))])
                    t2 = time.perf_counter()
                    assert r.image.width == w and len(r.image.data) == w * h * 4
                    up.append(t1 - t0)
                    down.append(t2 - t1)
                    c.close_session(s)
                tot = [a + b for a, b in zip(up, down)]
                floor = _raw_floor(raw_ep, w * h * 4, args.repeat) if raw_ep else None
                rows.append((w, h, statistics.median(up), statistics.median(down),
                             statistics.median(tot), min(tot), floor))
    finally:
        if srv is not None:
            srv.stop()
        if proc is not None:
            if raw_ep:
                import zmq
                z = zmq.Context.instance().socket(zmq.DEALER)
                z.linger = 0
                z.connect(raw_ep)
                z.send_multipart([b"stop"])
                time.sleep(0.05)
                z.close()
            parent.send("stop")
            proc.join(10)

    print("%-10s %6s %10s %12s %9s %8s %22s" % ("layer RGBA", "MB", "upload ms",
                                                "download ms", "total ms", "best ms",
                                                "bare pyzmq up/down ms"))
    for w, h, u, d, t, best, floor in rows:
        fl = "%.1f / %.1f" % (floor[0] * 1e3, floor[1] * 1e3) if floor else "-"
        print("%-10s %6.1f %10.1f %12.1f %9.1f %8.1f %22s" % (
            "%dx%d" % (w, h), w * h * 4 / 1e6, u * 1e3, d * 1e3, t * 1e3, best * 1e3, fl))
    big = rows[-1][4] * 1e3
    print("4000x3000 total (median) %.1f ms: %s (target < 100 ms)" % (
        big, "OK" if big < 100 else "OVER TARGET"))
    return 0 if big < 100 else 1


if __name__ == "__main__":
    sys.exit(main())
