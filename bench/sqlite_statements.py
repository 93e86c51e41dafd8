"""Writing a commit's rows to SQLite with ``executemany`` or with statements of many
rows, alone and beside a thread that runs Python, printed as JSON.

    python bench/sqlite_statements.py [--rows N] [--repeat N]

Each run writes ``--rows`` puts (600-byte values) and their event rows with skedlib's
schema (``skedlib.store.sqlite``'s), 500 puts a transaction (``BEGIN IMMEDIATE`` …
``COMMIT``; WAL, ``synchronous=NORMAL``), in a throwaway file:

- ``executemany``: one ``executemany`` per table and transaction (one step per row);
- ``many_rows``: one ``INSERT`` of all 500 rows per table and transaction
  (``_upsert_sql``, ``_events_sql``), values bound as ``bytes`` and no lease as
  ``None``, which ``sqlite3`` looks up in its adapter registry one by one;
- ``many_rows_unadapted``: the same statements, values bound as ``bytearray`` (made in
  the timed part) and no lease as ``''``, which ``sqlite3`` binds as they are: as the
  backend writes them.

``alone``: nothing else runs. ``beside_busy_thread``: another thread of the process
runs Python all along (as a scheduler's planning does while a commit is written);
``sqlite3`` lets other threads take the GIL at every step, so each step may wait a
switch interval to get it back. ``busy_thread_loops`` is the work that thread got done
meanwhile. Wall and CPU seconds (the process's: beside the busy thread they include
its CPU); the medians of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from itertools import chain
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from skedlib.store import sqlite as sq

PER_TXN = 500


def _write(mode: str, rows: int) -> tuple[float, float]:
    path = os.path.join(tempfile.mkdtemp(prefix="skedbench-"), "s.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(sq._SCHEMA)
    value = b"x" * 600
    puts = [(f"sked/state/tasks/c-s{i % 20}-1-{i}", value, 5, 5, None) for i in range(rows)]
    events = [(5, i, p[0], 0, value) for i, p in enumerate(puts)]
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, rows, PER_TXN):
        part, evs = puts[start:start + PER_TXN], events[start:start + PER_TXN]
        conn.execute("BEGIN IMMEDIATE")
        if mode == "executemany":
            conn.executemany(sq._upsert_sql(1), part)
            conn.executemany(sq._events_sql(1), evs)
        elif mode == "many_rows_unadapted":
            flat: list[Any] = []
            flat_events: list[Any] = []
            for (key, v, create, mod, _), (rev, seq, _, kind, _) in zip(part, evs,
                                                                        strict=True):
                blob = bytearray(v)
                flat += (key, blob, create, mod, "")
                flat_events += (rev, seq, key, kind, blob)
            conn.execute(sq._upsert_sql(len(part)), flat)
            conn.execute(sq._events_sql(len(evs)), flat_events)
        else:
            conn.execute(sq._upsert_sql(len(part)), list(chain.from_iterable(part)))
            conn.execute(sq._events_sql(len(evs)), list(chain.from_iterable(evs)))
        conn.execute("COMMIT")
    out = time.perf_counter() - wall, time.process_time() - cpu
    conn.close()
    return out


def _case(mode: str, rows: int, busy: bool) -> dict[str, Any]:
    loops = [0]
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))
            loops[0] += 1

    thread = threading.Thread(target=spin, daemon=True)
    if busy:
        thread.start()
    try:
        wall, cpu = _write(mode, rows)
    finally:
        stop.set()
        if busy:
            thread.join()
    out: dict[str, Any] = {"seconds": round(wall, 3), "cpu_seconds": round(cpu, 3)}
    if busy:
        out["busy_thread_loops"] = loops[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    result: dict[str, Any] = {"rows": args.rows, "rows_per_txn": PER_TXN,
                              "switch_interval_s": sys.getswitchinterval()}
    for where, busy in (("alone", False), ("beside_busy_thread", True)):
        result[where] = {}
        for mode in ("executemany", "many_rows", "many_rows_unadapted"):
            runs = [_case(mode, args.rows, busy) for _ in range(args.repeat)]
            result[where][mode] = {
                "seconds": statistics.median(r["seconds"] for r in runs),
                "cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs),
                "runs": runs}
        result[where]["executemany_over_many_rows"] = round(
            result[where]["executemany"]["seconds"] / result[where]["many_rows"]["seconds"], 2)
        result[where]["many_rows_over_unadapted"] = round(
            result[where]["many_rows"]["seconds"]
            / result[where]["many_rows_unadapted"]["seconds"], 2)
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
