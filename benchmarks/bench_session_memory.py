"""What open sessions cost a real `dragd serve`: N sessions opened and never closed.

    python benchmarks/bench_session_memory.py [--sessions 3000] [--budget-gb 0.05 4]

Prints, per memory budget, how long the opens took, what the daemon accounts (status
memory.used), its RSS before and after, and how long a status call takes at that size.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from daemon_fixture import build_tiny_model, start_daemon  # noqa: E402
from soak import rss_mb  # noqa: E402

from dragd.protocol import Client, Image  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=3000)
    ap.add_argument("--budget-gb", type=float, nargs="+", default=[0.05, 4.0])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_tiny_model(work / "tiny.safetensors")
        layer = Image(np.zeros((64, 64, 3), np.uint8).tobytes(), 64, 64, 3)
        for budget in args.budget_gb:
            d = start_daemon(model, work / str(budget), extra_args=("--memory-budget-gb", str(budget)))
            try:
                before = rss_mb(d.proc.pid)
                with Client(d.endpoint, timeout=30) as c:
                    t0 = time.perf_counter()
                    for _ in range(args.sessions):
                        c.open_session(layer, invert={"method": "none"})
                    opened = time.perf_counter() - t0
                    t1 = time.perf_counter()
                    st = c.status()
                    status_ms = (time.perf_counter() - t1) * 1000
                print(f"budget {budget:g} GB: {args.sessions} sessions opened in {opened:.0f} s; accounted "
                      f"{st['memory']['used'] / 2**20:.1f} MiB; RSS {before:.0f} -> {rss_mb(d.proc.pid):.0f} MB; "
                      f"status {status_ms:.1f} ms")
            finally:
                d.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
