"""Writing a commit's rows to SQLite with ``executemany`` or with statements of many
rows, and reading many rows a row per step or many rows per step, alone and beside a
thread that runs Python, printed as JSON.

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

``reads``: a store of ``--rows`` keys (600-byte values, written by ``SqliteBackend``),
read back four ways, each alone and beside the busy thread:

- ``row_per_step``: plain ``sqlite3`` queries that return a row per key, stepped one
  row at a time by ``fetchall`` (as the backend read before), in a transaction with
  the revisions the backend reads beside them: the prefix's rows in key order, the
  rows of every key (500 keys per ``IN (…)``), the keys' revisions for a write
  transaction's compares (500 per query), the events from the first revision on, and
  the deletes of ``--rows`` other keys in a write transaction (a ``DELETE`` per key,
  and an ``INSERT`` of its event);
- ``backend``: ``SqliteBackend.list``, ``get_many``, a ``txn`` of those compares and no
  operation, a watch's read of the events (a thousand rows per query, in one result
  row), and a ``txn`` of those deletes (two statements per 2,000 keys and the events'
  inserts).

Both build what the backend returns (``KeyValue`` and ``WatchEvent`` objects).
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
from collections.abc import Callable
from itertools import chain
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from skedlib.store import sqlite as sq
from skedlib.store.base import Compare, Delete, KeyValue, Put, WatchEvent

PER_TXN = 500


def _writer(mode: str, rows: int) -> tuple[Callable[[], None], sqlite3.Connection]:
    """The writes of ``mode`` to a fresh store, to be timed, and its connection (closed
    after the timing: the last close checkpoints the WAL)."""
    path = os.path.join(tempfile.mkdtemp(prefix="skedbench-"), "s.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(sq._SCHEMA)
    value = b"x" * 600
    puts = [(f"sked/state/tasks/c-s{i % 20}-1-{i}", value, 5, 5, None) for i in range(rows)]
    events = [(5, i, p[0], 0, value) for i, p in enumerate(puts)]

    def run() -> None:
        for start in range(0, rows, PER_TXN):
            _write_txn(conn, mode, puts[start:start + PER_TXN],
                       events[start:start + PER_TXN])
    return run, conn


def _write_txn(conn: sqlite3.Connection, mode: str, part: list[Any], evs: list[Any]
               ) -> None:
    """One transaction of ``mode``'s writes."""
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


def _timed(run: Callable[[], object], busy: bool) -> dict[str, Any]:
    """Wall and CPU seconds of ``run()``, beside a thread running Python if ``busy``."""
    loops = [0]
    stop = threading.Event()

    def spin() -> None:  # Python bytecode all along, as planning is
        while not stop.is_set():
            n = 0
            for i in range(1000):
                n += i
            loops[0] += 1

    thread = threading.Thread(target=spin, daemon=True)
    if busy:
        thread.start()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        run()
    finally:
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        stop.set()
        if busy:
            thread.join()
    out: dict[str, Any] = {"seconds": round(wall, 4), "cpu_seconds": round(cpu, 4)}
    if busy:
        out["busy_thread_loops"] = loops[0]
    return out


def _case(mode: str, rows: int, busy: bool) -> dict[str, Any]:
    run, conn = _writer(mode, rows)
    try:
        return _timed(run, busy)
    finally:
        conn.close()


def _reads(rows_n: int, repeat: int) -> dict[str, Any]:
    """The backend's reads of many rows against a row per step (see the docstring)."""
    path = os.path.join(tempfile.mkdtemp(prefix="skedbench-"), "s.db")
    backend = sq.SqliteBackend(path)
    keys = [f"sked/state/tasks/c-s{i % 20}-1-{i}" for i in range(rows_n)]
    first = backend.txn([], [Put(k, b"x" * 600) for k in keys]).revision
    compares = [Compare(k, first) for k in keys]
    conn = sqlite3.connect(path, isolation_level=None)
    prefix, end = "sked/state/tasks/", "sked/state/tasks0"

    def by_500(sql: str) -> list[Any]:
        rows: list[Any] = []
        for at in range(0, rows_n, 500):
            part = keys[at:at + 500]
            rows += conn.execute(sql.format(",".join("?" * len(part))), part).fetchall()
        return rows

    def kv_rows(rows: list[Any]) -> list[KeyValue]:
        return [KeyValue(*r) for r in rows]

    def events(rows: list[Any]) -> list[WatchEvent]:
        return [WatchEvent("put" if kind == 0 else "delete", key, value, rev)
                for rev, key, kind, value in rows]

    stop_keys = [f"sked/state/stop/c-s{i % 20}-1-{i}" for i in range(rows_n)]

    def refill() -> None:
        backend.txn([], [Put(k, b"x" * 600) for k in stop_keys])

    def delete_one_by_one() -> None:  # as the backend wrote deletes before
        rev = conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
        for seq, key in enumerate(stop_keys):
            if conn.execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount:
                conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                             (rev + 1, seq, key, 1, b""))
        conn.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (rev + 1,))

    def poll() -> None:  # a watch's read, without its connection's set-up
        assert len(backend._poll_events(backend._conn(), prefix, first)[0]) == rows_n

    def framed(begin: str, meta: tuple[str, ...], read: Callable[[], object]
               ) -> Callable[[], object]:
        def run() -> object:  # in a transaction with the revisions read, as the backend
            conn.execute(begin)
            for name in meta:
                conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
            out = read()
            conn.execute("COMMIT")
            return out
        return run

    ways: dict[str, dict[str, Callable[[], object]]] = {
        "row_per_step": {
            "list": framed("BEGIN", ("revision",), lambda: kv_rows(conn.execute(
                "SELECT key, value, mod_rev, create_rev, lease FROM kv WHERE key >= ? "
                "AND key < ? ORDER BY key", (prefix, end)).fetchall())),
            "get_many": framed("BEGIN", (), lambda: kv_rows(by_500(
                "SELECT key, value, mod_rev, create_rev, lease FROM kv WHERE key IN ({})"))),
            "compares": framed("BEGIN IMMEDIATE", ("revision",), lambda: by_500(
                "SELECT key, mod_rev FROM kv WHERE key IN ({})")),
            "watch": framed("BEGIN", ("compacted", "revision"), lambda: events(conn.execute(
                "SELECT rev, key, kind, value FROM events WHERE rev >= ? AND key >= ? "
                "AND key < ? ORDER BY rev, seq", (first, prefix, end)).fetchall())),
            "deletes": framed("BEGIN IMMEDIATE", (), delete_one_by_one)},
        "backend": {
            "list": lambda: backend.list(prefix),
            "get_many": lambda: backend.get_many(keys),
            "compares": lambda: backend.txn(compares, []),
            "watch": poll,
            "deletes": lambda: backend.txn([], [Delete(k) for k in stop_keys])}}
    untimed = {"deletes": refill}
    out: dict[str, Any] = {}
    for where, busy in (("alone", False), ("beside_busy_thread", True)):
        out[where] = {way: {} for way in ways}
        for read in ways["backend"]:
            runs: dict[str, list[float]] = {way: [] for way in ways}
            for _ in range(repeat):  # the two ways in turn
                for way, calls in ways.items():
                    untimed.get(read, lambda: None)()
                    runs[way].append(_timed(calls[read], busy)["seconds"])
            for way in ways:
                out[where][way][read] = statistics.median(runs[way])
            out[where][f"{read}_row_per_step_over_backend"] = round(
                out[where]["row_per_step"][read] / out[where]["backend"][read], 2)
    conn.close()
    backend.close()
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
    result["reads"] = _reads(args.rows, args.repeat)
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
