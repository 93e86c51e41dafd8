"""Storage backend figures, printed as JSON.

    python bench/store.py [--backend URL …] [--quick]

Defaults to ``memory://`` and a throwaway ``sqlite://`` file. For each backend:
sequential puts per second, 100-operation transactions per second, the time to list
10,000 keys, and watch wake-up latency (p50/p99: from a put returning in one thread to
the event arriving in another, through a separate backend connection).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from skedlib.plugins import open_backend
from skedlib.store.base import Backend, Put


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("inf")


def bench_puts(b: Backend, ns: str, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        b.put(f"{ns}puts/{i}", b"x" * 100)
    return _rate(n, time.perf_counter() - t0)


def bench_txns(b: Backend, ns: str, n: int, size: int = 100) -> dict[str, Any]:
    size = min(size, b.max_txn_ops or size)
    t0 = time.perf_counter()
    for i in range(n):
        b.txn([], [Put(f"{ns}txn/{i}/{j}", b"x" * 100) for j in range(size)])
    return {"ops_per_txn": size, "txns_per_s": _rate(n, time.perf_counter() - t0)}


def bench_list(b: Backend, ns: str, keys: int) -> dict[str, Any]:
    step = b.max_txn_ops or 500
    for start in range(0, keys, step):
        b.txn([], [Put(f"{ns}list/{i:06d}", b"x" * 100)
                   for i in range(start, min(keys, start + step))])
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        listed = b.list(f"{ns}list/")
        times.append(time.perf_counter() - t0)
        assert len(listed.items) == keys
    return {"keys": keys, "seconds_best_of_3": round(min(times), 4)}


def bench_watch_latency(url: str, b: Backend, ns: str, n: int) -> dict[str, Any]:
    watcher = open_backend(url) if not url.startswith("memory") else b
    start = b.current_revision() + 1
    sent: dict[str, float] = {}
    latencies: list[float] = []
    done = threading.Event()

    def follow() -> None:
        with watcher.watch(f"{ns}watch/", start) as w:
            while len(latencies) < n:
                for e in w.next(timeout=5):
                    now = time.perf_counter()
                    if e.key in sent:
                        latencies.append(now - sent[e.key])
        done.set()

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    time.sleep(0.2)
    for i in range(n):
        key = f"{ns}watch/{i}"
        sent[key] = time.perf_counter()
        b.put(key, b"x")
        time.sleep(0.02)
    done.wait(30)
    if watcher is not b:
        watcher.close()
    ms = sorted(x * 1000 for x in latencies)
    return {"events": len(ms), "p50_ms": round(statistics.median(ms), 2),
            "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2)}


def run(url: str, quick: bool) -> dict[str, Any]:
    b = open_backend(url)
    ns = f"bench/{uuid.uuid4().hex[:8]}/"
    try:
        return {
            "backend": url.split("?")[0],
            "puts_per_s": bench_puts(b, ns, 300 if quick else 2000),
            "txn_100_ops": bench_txns(b, ns, 20 if quick else 100),
            "list_10k": bench_list(b, ns, 10_000),
            "watch_wakeup": bench_watch_latency(url, b, ns, 50 if quick else 200),
        }
    finally:
        b.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", action="append", default=[])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="skedbench-")
    urls = args.backend or ["memory://", f"sqlite://{Path(tmp) / 'bench.db'}"]
    results = [run(url, args.quick) for url in urls]
    json.dump({"bench": "store", "python": sys.version.split()[0], "results": results},
              sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
