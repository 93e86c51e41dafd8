"""Planned *and committed* placements per second, beside the raw store's rate for the
same transactions, printed as JSON.

    python bench/commit.py [--backend etcd|sqlite] [--quick] [--repeat N]

``--backend etcd`` (the default) starts a 3-member etcd cluster on loopback (throwaway
data); ``--backend sqlite`` uses a throwaway SQLite file. Each run writes 5,000 host
records, applies 20 services (10,000 tasks, CPU proportional to memory; 2,000 with
``--quick``) and places them, each time in a fresh keyspace:

- ``loop_with_cache``: one thread, service after service: take the service's lock, plan
  with binpack on a watch-fed ``SnapshotCache`` (the keyspace is listed once), commit
  fenced by the lock (``commit_plan``: chunks of whole tasks under etcd's 128-operation
  limit; one transaction per plan on SQLite) and record the commit in the cache; prints
  the split between listing, planning, committing and the rest (locking);
- ``scheduler_daemon``: ``SchedulerDaemon`` itself (4 workers), until every task is in
  its cache and no run is in progress: ``placements_per_s`` from the end of its first
  listing of the keyspace (``wait_ready``; the raw replay lists nothing either),
  ``placements_per_s_from_start`` from ``start()``; ``events_dropped``: the events
  (one "placed" per task, …) its event log dropped, its queue being full;
  ``gc_collections`` and ``gc_seconds``: the garbage collector's collections in that
  window and their wall seconds (every thread stands still meanwhile). Every commit
  transaction it sends is recorded (its compares, and its puts and deletes with their
  key and value sizes);
- ``raw_store``: the recorded commit transactions sent again, in a fresh keyspace, with
  the store's plain client and nothing of skedlib: etcd's gRPC ``KV.Txn`` with the
  plugin's generated messages from 4 threads (compares on absent keys, which hold), or
  ``sqlite3`` with skedlib's schema (per transaction: ``BEGIN IMMEDIATE``, the compares
  500 keys per ``SELECT … IN``, the revision, the ``kv`` upserts and their ``events``
  rows with ``executemany``, the revision bump, ``COMMIT``; WAL, ``synchronous=NORMAL``)
  from 4 threads.
  ``placements_per_s`` is the daemon's placements over the raw run's wall time;
- ``ratio``: the daemon's placements/s over the raw store's (targets: ≥ 0.8 on etcd,
  ≥ 0.5 on SQLite), and the commit step of the loop over the raw rate.

``--repeat N`` runs the daemon and the raw replay N times alternately and reports each
and the medians. CPU seconds of this process are given beside wall seconds; on etcd also
the members' CPU seconds in the same window (``store_cpu_seconds``, read from
``/proc/<pid>/stat``), and ``ratio.cpu_per_placement_raw_over_daemon``: the raw replay's
CPU seconds per placement (client and members) over the daemon's. Where the store and
the client share the machine's cores and both runs keep them busy, the throughput ratio
follows it.

The process's garbage collector is set as ``skedlib-scheduler`` sets it
(:func:`skedlib.scheduler.tune_gc`; ``gc_thresholds`` in the output) unless
``--default-gc`` leaves Python's defaults; so is its thread switch interval
(:func:`skedlib.scheduler.tune_switch_interval`; ``switch_interval`` in the output)
unless ``--default-switch-interval``. The raw replay runs in the same process with the
same settings. The daemon logs as ``skedlib-scheduler`` does
by default (INFO, its one-line format), into a throwaway file: ``--log-level`` sets
another level, and ``log`` in the output gives the level and the lines written.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import scheduling as sched_bench  # noqa: E402

from skedlib.cli.logs import make_formatter  # noqa: E402
from skedlib.codecs import encode  # noqa: E402
from skedlib.keys import Keyspace  # noqa: E402
from skedlib.locks import Lock  # noqa: E402
from skedlib.models import Host  # noqa: E402
from skedlib.plugins import get_registry, open_backend  # noqa: E402
from skedlib.runtime import Group, Store, write_groups  # noqa: E402
from skedlib.scheduler.daemon import SchedulerDaemon, tune_switch_interval  # noqa: E402
from skedlib.scheduling import SnapshotCache, commit_plan  # noqa: E402
from skedlib.store.base import Backend, Compare, Op, Put, TxnResult  # noqa: E402

RAW_THREADS = 4
TxnShape = tuple[int, list[tuple[bool, int, int]]]
"""A recorded transaction: its compares, and per operation (is a put, key bytes, value
bytes)."""


class Recording:
    """A backend that records the shape of every transaction writing a task key.

    While the daemon runs it only keeps each successful transaction's compare count and
    operations; their shapes are worked out afterwards (:attr:`shapes`), so the
    recording costs the measured run next to nothing.
    """

    def __init__(self, backend: Backend, ks: Keyspace) -> None:
        self._backend = backend
        self._tasks = ks.tasks
        self._sent: list[tuple[int, Sequence[Op]]] = []

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        res = self._backend.txn(compares, ops)
        if res.succeeded:
            self._sent.append((len(compares), ops))
        return res

    @property
    def shapes(self) -> list[TxnShape]:
        """The recorded transactions that write a task key, as shapes."""
        return [(compares, [(isinstance(op, Put), len(op.key.encode()),
                             len(op.value) if isinstance(op, Put) else 0) for op in ops])
                for compares, ops in self._sent
                if any(op.key.startswith(self._tasks) for op in ops)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


def _cpu() -> float:
    return time.process_time()


StoreCpu = Any
"""A callable returning the store's processes' CPU seconds so far, or None (in-process)."""


def process_cpu(pids: Sequence[int]) -> float:
    """User and system CPU seconds of the processes ``pids`` so far (``/proc``)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


class _Collections:
    """The garbage collector's collections while it is entered: how many, and their
    wall seconds (every thread stands still meanwhile)."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.count += 1
            self.seconds += time.perf_counter() - self._started

    def __enter__(self) -> _Collections:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


def _setup(url: str, hosts: int, tasks: int, services: int) -> tuple[Backend, Keyspace]:
    backend = open_backend(url)
    ks = Keyspace(f"bench{time.monotonic_ns()}/")
    template = sched_bench.workload(3, hosts, tasks, services, correlated=True)
    puts = [Put(ks.agent(h), encode(Host(name=h, total=s.total)))
            for h, s in template.hosts.items()]
    puts += [Put(ks.task_definition(t.name, t.version), encode(t))
             for t in template.task_definitions.values()]
    puts += [Put(ks.service(s.name), encode(s)) for s in template.services.values()]
    puts += [Put(ks.cluster(c.name), encode(c)) for c in template.clusters.values()]
    setup = [Group(ops=(put,)) for put in puts]
    write_groups(backend, setup)
    return backend, ks


def run_loop(url: str, hosts: int, tasks: int, services: int) -> dict[str, Any]:
    """One thread, service after service: lock, plan on the watch-fed cache, commit."""
    backend, ks = _setup(url, hosts, tasks, services)
    scheduler = get_registry().scheduler_factory("binpack")()
    t0, c0 = time.perf_counter(), _cpu()
    store = Store(backend, ks)
    cache = SnapshotCache(store).start()
    assert cache.wait_ready(60), "the keyspace was not listed within 60s"
    read_s = time.perf_counter() - t0
    plan_s = commit_s = 0.0
    committed = conflicts = 0
    with cache.view() as snap:
        names = list(snap.clusters["bench"].services)
    for name in names:
        lock = Lock(backend, ks.lock("bench", name), ttl=10)
        assert lock.try_acquire()
        with cache.view() as snap:
            t1 = time.perf_counter()
            result = scheduler.plan(snap, snap.clusters["bench"], snap.services[name])
            t2 = time.perf_counter()
            res = commit_plan(store, snap, result.plan, fence=[lock.fence()])
            cache.record(result.plan, res)
            t3 = time.perf_counter()
        lock.release()
        plan_s += t2 - t1
        commit_s += t3 - t2
        committed += len(res.committed)
        conflicts += len(res.conflicts)
    total = time.perf_counter() - t0
    cpu = _cpu() - c0
    cache.stop()
    stored = len(backend.list(ks.tasks).items)
    backend.close()
    return {"hosts": hosts, "tasks": tasks, "services": services, "committed": committed,
            "conflicts": conflicts, "tasks_in_store": stored,
            "seconds": {"list_once": round(read_s, 3), "plan": round(plan_s, 3),
                        "commit": round(commit_s, 3),
                        "lock_and_rest": round(total - read_s - plan_s - commit_s, 3),
                        "total": round(total, 3), "cpu": round(cpu, 3)},
            "placements_per_s": round(committed / total),
            "commit_step_placements_per_s": round(committed / commit_s) if commit_s else 0}


def run_daemon(url: str, hosts: int, tasks: int, services: int, workers: int,
               store_cpu: StoreCpu = None) -> tuple[dict[str, Any], list[TxnShape]]:
    """The scheduler daemon itself, from start until every task is in the store."""
    backend, ks = _setup(url, hosts, tasks, services)
    recording = Recording(backend, ks)
    daemon = SchedulerDaemon(Store(recording, ks), workers=workers)  # type: ignore[arg-type]
    with _Collections() as collections:
        s0 = store_cpu() if store_cpu else 0.0
        t0, c0 = time.perf_counter(), _cpu()
        daemon.start()
        deadline = t0 + 300
        assert daemon.wait_ready(60), "the keyspace was not listed within 60s"
        t_ready = time.perf_counter()
        while time.perf_counter() < deadline:
            # every task in the cache and nothing being worked on: every commit is back
            with daemon.cache.view() as snap:
                placed = len(snap.tasks)
            if placed >= tasks and daemon.idle():
                break
            time.sleep(0.005)
        total = time.perf_counter() - t0
        cpu = _cpu() - c0
        store_s = store_cpu() - s0 if store_cpu else None
    daemon.stop()
    shapes = recording.shapes
    events_dropped = daemon.events.dropped
    stored = len(backend.list(ks.tasks).items)
    backend.close()
    return ({"hosts": hosts, "tasks": tasks, "services": services, "workers": workers,
             "tasks_in_store": stored, "runs": daemon.runs,
             "commit_txns": len(shapes), "seconds": round(total, 3),
             "listing_seconds": round(t_ready - t0, 3), "cpu_seconds": round(cpu, 3),
             "placements_per_s_from_start": round(stored / total),
             "placements_per_s": round(stored / (total - (t_ready - t0))),
             "events_dropped": events_dropped,
             "gc_collections": collections.count,
             "gc_seconds": round(collections.seconds, 3),
             **({"store_cpu_seconds": round(store_s, 3)} if store_s is not None else {})},
            shapes)


def _threads(shapes: list[TxnShape], send: Any) -> float:
    """Send ``shapes`` from RAW_THREADS threads (round robin); wall seconds."""
    parts = [list(enumerate(shapes))[i::RAW_THREADS] for i in range(RAW_THREADS)]
    errors: list[BaseException] = []

    def work(part: list[tuple[int, TxnShape]]) -> None:
        try:
            for n, shape in part:
                send(n, shape)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in parts]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def _key(prefix: str, n: int, i: int, size: int) -> bytes:
    return f"{prefix}{n}/{i}/".encode().ljust(size, b"k")


def raw_etcd(endpoint: str, shapes: list[TxnShape], placements: int,
             store_cpu: StoreCpu = None) -> dict[str, Any]:
    """The recorded transactions through etcd's gRPC API, nothing of skedlib."""
    import grpc
    from skedlib_etcd.stubs import Stub
    from skedlib_etcd.stubs import rpc_pb2 as pb

    prefix = f"raw{time.monotonic_ns()}/"
    channel = grpc.insecure_channel(endpoint)
    kv = Stub(channel, "KV")

    def send(n: int, shape: TxnShape) -> None:
        compares, ops = shape
        request = pb.TxnRequest()
        for i in range(compares):
            c = request.compare.add()
            c.target = pb.Compare.MOD
            c.key = _key(prefix + "absent/", n, i, 40)
            c.mod_revision = 0
        add = request.success.add
        for i, (is_put, key_len, value_len) in enumerate(ops):
            if is_put:
                put = add().request_put
                put.key = _key(prefix, n, i, key_len)
                put.value = b"v" * value_len
            else:
                add().request_delete_range.key = _key(prefix, n, i, key_len)
        assert kv.Txn(request, timeout=30).succeeded

    s0 = store_cpu() if store_cpu else 0.0
    c0 = _cpu()
    seconds = _threads(shapes, send)
    cpu = _cpu() - c0
    store_s = store_cpu() - s0 if store_cpu else None
    channel.close()
    return {"client": "grpc KV.Txn", "threads": RAW_THREADS, "txns": len(shapes),
            "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
            **({"store_cpu_seconds": round(store_s, 3)} if store_s is not None else {}),
            "placements_per_s": round(placements / seconds)}


RAW_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value BLOB NOT NULL, create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL, lease TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    rev INTEGER NOT NULL, seq INTEGER NOT NULL, key TEXT NOT NULL, kind INTEGER NOT NULL,
    value BLOB NOT NULL, PRIMARY KEY (rev, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta VALUES ('revision', 0);
"""
"""skedlib's SQLite schema (the tables a write touches)."""


def raw_sqlite(path: Path, shapes: list[TxnShape], placements: int) -> dict[str, Any]:
    """The recorded transactions through plain ``sqlite3`` on skedlib's schema."""
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.executescript(RAW_SQLITE_SCHEMA)
    setup.close()
    local = threading.local()

    def send(n: int, shape: TxnShape) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = sqlite3.connect(path, isolation_level=None, timeout=30,
                                                check_same_thread=False)
            conn.execute("PRAGMA synchronous=NORMAL")
        compares, ops = shape
        conn.execute("BEGIN IMMEDIATE")
        absent = [f"absent/{n}/{i}" for i in range(compares)]
        for start in range(0, compares, 500):
            part = absent[start:start + 500]
            assert not conn.execute("SELECT key, mod_rev FROM kv WHERE key IN "
                                    f"({','.join('?' * len(part))})", part).fetchall()
        rev = conn.execute("SELECT value FROM meta WHERE name='revision'").fetchone()[0] + 1
        puts = [(_key("", n, seq, key_len).decode(), b"v" * value_len, rev, rev, seq)
                for seq, (is_put, key_len, value_len) in enumerate(ops) if is_put]
        conn.executemany("INSERT INTO kv VALUES (?, ?, ?, ?, NULL) ON CONFLICT(key) DO "
                         "UPDATE SET value = excluded.value, mod_rev = excluded.mod_rev",
                         [p[:4] for p in puts])
        conn.executemany("INSERT INTO events VALUES (?, ?, ?, 0, ?)",
                         [(rev, seq, key, value) for key, value, _, _, seq in puts])
        for seq, (is_put, key_len, _) in enumerate(ops):
            key = _key("", n, seq, key_len).decode()
            if not is_put and conn.execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount:
                conn.execute("INSERT INTO events VALUES (?, ?, ?, 1, ?)",
                             (rev, seq, key, b""))
        conn.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (rev,))
        conn.execute("COMMIT")

    c0 = _cpu()
    seconds = _threads(shapes, send)
    return {"client": "sqlite3", "threads": RAW_THREADS, "txns": len(shapes),
            "seconds": round(seconds, 3), "cpu_seconds": round(_cpu() - c0, 3),
            "placements_per_s": round(placements / seconds)}


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _cpu_per_placement(run: dict[str, Any], placements: int) -> float:
    return float(run["cpu_seconds"] + run["store_cpu_seconds"]) / placements


def measure(url: str, raw: Any, tasks: int, repeat: int,
            store_cpu: StoreCpu = None) -> dict[str, Any]:
    """The loop once, then the daemon and the raw replay of its transactions, alternately."""
    loop = run_loop(url, 5_000, tasks, 20)
    daemons: list[dict[str, Any]] = []
    raws: list[dict[str, Any]] = []
    cpu_ratios: list[float] = []
    for _ in range(repeat):
        daemon, shapes = run_daemon(url, 5_000, tasks, 20, 4, store_cpu)
        placements = daemon["tasks_in_store"]
        daemons.append(daemon)
        raws.append(raw(shapes, placements))
        if store_cpu:
            cpu_ratios.append(_cpu_per_placement(raws[-1], placements)
                              / _cpu_per_placement(daemon, placements))
    ratios = [d["placements_per_s"] / r["placements_per_s"] for d, r in zip(daemons, raws,
                                                                           strict=True)]
    raw_pps = _median(raws, "placements_per_s")
    cpu_ratio = {"cpu_per_placement_raw_over_daemon": round(statistics.median(cpu_ratios), 3),
                 "cpu_per_placement_raw_over_daemon_each": [round(r, 3) for r in cpu_ratios]
                 } if cpu_ratios else {}
    return {"loop_with_cache": loop,
            "scheduler_daemon": daemons if repeat > 1 else daemons[0],
            "raw_store": raws if repeat > 1 else raws[0],
            "ratio": {"daemon_over_raw": round(statistics.median(ratios), 3),
                      "daemon_over_raw_each": [round(r, 3) for r in ratios],
                      "loop_commit_step_over_raw": round(
                          loop["commit_step_placements_per_s"] / raw_pps, 3),
                      **cpu_ratio},
            "daemon_placements_per_s_median": _median(daemons, "placements_per_s"),
            "raw_placements_per_s_median": raw_pps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["etcd", "sqlite"], default="etcd")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING"),
                        help="the daemon's log level (default INFO, as skedlib-scheduler "
                             "logs), into a throwaway file")
    sched_bench.add_gc_option(parser)
    parser.add_argument("--default-switch-interval", action="store_true",
                        help="leave Python's thread switch interval (5 ms) as it is "
                             "(skedlib-scheduler sets its own: "
                             "skedlib.scheduler.tune_switch_interval)")
    args = parser.parse_args()
    thresholds = sched_bench.set_gc(args)
    if not args.default_switch_interval:
        tune_switch_interval()
    tasks = 2_000 if args.quick else 10_000
    tmp = Path(tempfile.mkdtemp(prefix="skedbench-"))
    log_path = tmp / "daemon.log"
    handler = logging.FileHandler(log_path)
    handler.setFormatter(make_formatter("text"))
    logging.basicConfig(level=args.log_level, handlers=[handler])
    if args.backend == "sqlite":
        raw_path = tmp / "raw.db"
        out = {"bench": "planned and committed to SQLite, beside raw sqlite3",
               **measure(f"sqlite://{tmp / 'bench.db'}",
                         lambda shapes, n: raw_sqlite(raw_path, shapes, n),
                         tasks, args.repeat),
               "targets": {"daemon_over_raw": 0.5}}
    else:
        from tests.harness.etcd import EtcdCluster

        with EtcdCluster(3, name="benchcommit").start() as cluster:
            endpoint = cluster.members[0].endpoint
            pids = [m.pid for m in cluster.members]

            def members_cpu() -> float:
                return process_cpu(pids)

            out = {"bench": "planned and committed to a 3-member etcd, beside raw gRPC",
                   **measure(cluster.url(),
                             lambda shapes, n: raw_etcd(endpoint, shapes, n, members_cpu),
                             tasks, args.repeat, members_cpu),
                   "targets": {"daemon_over_raw": 0.8, "daemon_placements_per_s": 5000}}
    out["gc_thresholds"] = thresholds
    out["switch_interval"] = sys.getswitchinterval()
    handler.close()
    with open(log_path, "rb") as f:
        out["log"] = {"level": args.log_level, "lines": sum(1 for _ in f)}
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
