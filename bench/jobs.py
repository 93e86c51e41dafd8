"""Batch jobs completed per second: skedlib's work-stealing job workers against RQ.

    python bench/jobs.py [--jobs N] [--quick] [--backends sqlite,etcd] [--slots K]
                         [--workers 1,2,4] [--no-rq] [--no-secondary]

Every job runs the program ``true`` (no requirements). For each backend and each number
of workers k (default 1, 2 and 4), on a fresh store:

1. one client thread submits all N jobs (default 2,000; ``--quick``: 300) with
   ``JobClient.submit`` — the submit rate is reported too;
2. k ``skedlib-agent --jobs-only`` processes start (``--job-slots K``, default 4; the
   default ``--job-limits auto``, i.e. what a user gets); the clock runs from starting
   them until the last job is complete (the bench counts the keys under
   ``jobs/status/complete/`` every 0.1 s, then takes the exact end from the records'
   ``finished_at``);
3. the workers get SIGTERM; each logs its counters (``WorkerStats``) as it stops, from
   which the claim conflicts come. Fairness: jobs per node, from the records' ``node``.
   ``JobStore.inconsistencies()`` must be empty at the end.

Backends: SQLite (a fresh file in a temporary directory) and a 3-member etcd on loopback
(started here, throwaway data under /dev/shm, stopped at the end). Secondary figure: the
same with ``--job-limits none`` (no cgroup per job; ``setpriv`` still wraps the program),
to show what enforcing limits costs — by default only with the largest k, where it costs
most (``--secondary-workers 1,2,4`` for all).

Then the same jobs through RQ on a local ``redis-server`` (started here on a free port,
no persistence): ``rq_jobs.run_true`` (``bench/rq_jobs.py``: ``subprocess.run(["true"])``)
enqueued N times, then k ``rq worker --burst`` processes; the clock runs from starting
them until all k have exited (burst mode: the queue is empty), and the finished-job
registry must hold N jobs. RQ's default ``Worker`` (a forked work horse per job) is the
main figure, ``SimpleWorker`` (in-process) the secondary. Without the ``rq``/``redis``
packages (``pip install -e '.[bench]'``) or ``redis-server`` (Debian ``redis-server``)
the RQ part is skipped with a message.

Prints one JSON document on stdout; progress goes to stderr. Every process and temporary
directory is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from skedlib.executors.limits import detect_limiter  # noqa: E402
from skedlib.jobs.client import JobClient  # noqa: E402
from skedlib.runtime import Store  # noqa: E402
from tests.harness.common import free_ports  # noqa: E402

BIN = Path(sys.executable).parent
AGENT = shutil.which("skedlib-agent", path=str(BIN)) or shutil.which("skedlib-agent")
RUN_TIMEOUT = 600.0
"""Seconds one run may take at most."""
STALL_TIMEOUT = 60.0
"""Seconds without a finished job before a run is given up."""
_STOPPED = re.compile(r"job worker (\S+) stopped: (\{.*\})")
NODES: list[str] = []
"""Every worker node started, for the clean-up of their parent cgroups."""


def say(msg: str) -> None:
    print(f"[jobs] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A run did not finish (the message has the workers' log tails)."""


# -- processes --------------------------------------------------------------------------------
class Procs:
    """Every process the bench starts (each in a session of its own), killed at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    @staticmethod
    def terminate(procs: list[subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL the process group of whoever is left after ``timeout``."""
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)

    def kill_all(self) -> None:
        for p in self.procs:
            with contextlib.suppress(OSError):
                os.killpg(p.pid, signal.SIGKILL)  # the group: also what it started
            with contextlib.suppress(Exception):
                p.wait(10)
        self.procs.clear()


def _tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _spread(counts: dict[str, int], k: int) -> dict[str, Any]:
    values = list(counts.values()) + [0] * max(0, k - len(counts))
    return {"min": min(values), "max": max(values),
            "stdev": round(statistics.pstdev(values), 1) if len(values) > 1 else 0.0}


def _wait_until(cond: Callable[[], bool], timeout: float, what: str,
                every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


# -- skedlib ----------------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> tuple[float, float]:
    """(seconds of CPU the process used itself, seconds its reaped children used): from
    ``/proc/<pid>/stat`` (utime + stime, cutime + cstime); (0, 0) once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    ticks = [int(x) for x in fields[11:15]]
    return (ticks[0] + ticks[1]) / _TICK, (ticks[2] + ticks[3]) / _TICK


def etcd_calls(url: str) -> dict[str, float]:
    """gRPC calls the etcd members of ``url`` handled (``Txn``) and watch messages they
    sent (``Watch``), from their ``/metrics``; {} for another backend or on error."""
    if not url.startswith("etcd://"):
        return {}
    import urllib.request

    totals: dict[str, float] = {}
    pattern = re.compile(r'grpc_server_(handled|msg_sent)_total\{[^}]*grpc_method="(Txn|Watch)"'
                         r'[^}]*\} (\S+)')
    try:
        for member in url.removeprefix("etcd://").split("?")[0].split(","):
            with urllib.request.urlopen(f"http://{member}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            for kind, method, value in pattern.findall(text):
                if (kind, method) in (("handled", "Txn"), ("msg_sent", "Watch")):
                    totals[method] = totals.get(method, 0.0) + float(value)
    except (OSError, ValueError):
        return {}
    return totals


def run_skedlib(procs: Procs, tmp: Path, url: str, prefix: str, n: int, k: int, slots: int,
                limits: str, extra: list[str], tree: Path = ROOT) -> dict[str, Any]:
    """Submit ``n`` jobs, start ``k`` workers (running the skedlib of ``tree``), time
    until all are complete."""
    assert AGENT is not None
    # the tree's own plugins too: a plugin goes with the skedlib it was written against
    plugins = sorted(str(p) for p in (tree / "plugins").glob("skedlib-*") if p.is_dir())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tree), *plugins, *filter(None, [os.environ.get("PYTHONPATH")])])}
    store = Store.open(url, prefix)
    backend = store.backend
    client = JobClient(store)
    keys = client.keys
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            client.submit("true")
        submit_s = time.perf_counter() - t0
        say(f"  submitted {n} jobs in {submit_s:.2f}s ({n / submit_s:.0f}/s); "
            f"starting {k} worker(s)")

        tag = uuid.uuid4().hex[:6]
        nodes = [f"w{i + 1}x{tag}" for i in range(k)]
        NODES.extend(nodes)
        logs = {node: tmp / f"{node}.log" for node in nodes}
        calls0 = etcd_calls(url)
        wall0 = time.time()
        p0 = time.perf_counter()
        workers = [procs.start(
            [AGENT, "--jobs-only", "--backend", url, "--prefix", prefix, "--host", node,
             "--address", "127.0.0.1", "--state-dir", str(tmp / node),
             "--job-slots", str(slots), "--lease-ttl", "10", "--job-limits", limits,
             *extra], logs[node], env=env) for node in nodes]

        complete_prefix = keys.jobs_finished("complete")
        failed_prefix = keys.jobs_finished("failed")
        ready_s: float | None = None
        cpu_ready = [0.0] * k
        last, last_change = -1, time.monotonic()
        while True:
            done = len(backend.list(complete_prefix).items)
            failed = len(backend.list(failed_prefix).items)
            now = time.perf_counter()
            if ready_s is None and len(backend.list(keys.job_nodes).items) >= k:
                ready_s = now - p0
                cpu_ready = [_cpu(p.pid)[0] for p in workers]  # the imports are behind
            if done + failed >= n:
                break
            if done + failed != last:
                last, last_change = done + failed, time.monotonic()
            dead = [node for node, p in zip(nodes, workers, strict=True)
                    if p.poll() is not None]
            stalled = time.monotonic() - last_change > STALL_TIMEOUT
            if dead or stalled or now - p0 > RUN_TIMEOUT:
                why = f"workers exited: {dead}" if dead else "no progress"
                Procs.terminate(workers, 10)
                raise BenchError(f"{why} ({done} complete, {failed} failed of {n}):\n" +
                                 "\n".join(f"--- {nd}\n{_tail(logs[nd])}" for nd in nodes))
            time.sleep(0.1)
        seen_s = time.perf_counter() - p0
        cpu_end = [_cpu(p.pid) for p in workers]
        calls1 = etcd_calls(url)

        Procs.terminate(workers)
        stats: dict[str, dict[str, int]] = {}
        for node in nodes:
            found = _STOPPED.findall(logs[node].read_text(errors="replace"))
            if found:
                stats[node] = json.loads(found[-1][1])
        jobs = client.list()
        problems = client.store.inconsistencies()
        finished = [j for j in jobs if j.finished_at is not None]
        end = max(j.finished_at for j in finished if j.finished_at is not None)
        first_start = min(j.started_at for j in jobs if j.started_at is not None)
        seconds = end - wall0
        per_node = Counter(j.node for j in jobs)
        kinds = Counter(j.limits for j in jobs)
        conflicts = sum(s.get("conflicts", 0) for s in stats.values())
        claimed = sum(s.get("claimed", 0) for s in stats.values())
        stopped = sum(s.get("stopped", 0) for s in stats.values())
        complete = sum(1 for j in jobs if j.status == "complete")
        out: dict[str, Any] = {
            "jobs_per_s": round(complete / seconds, 1),
            "seconds": round(seconds, 2),
            "steady_jobs_per_s": round(complete / (end - first_start), 1),
            "first_claim_s": round(first_start - wall0, 2),
            "all_workers_registered_s": round(ready_s, 2) if ready_s is not None else None,
            "seen_by_poller_s": round(seen_s, 2),
            "complete": complete,
            "failed": sum(1 for j in jobs if j.status == "failed"),
            "claimed": claimed,
            "conflicts": conflicts,
            "conflicts_per_job": round(conflicts / n, 4),
            "stopped": stopped,  # WorkerStats.stopped: "record changed" stops (expected 0)
            "per_node": {node: per_node.get(node, 0) for node in nodes},
            "per_node_spread": _spread({nd: per_node.get(nd, 0) for nd in nodes}, k),
            "limits": "+".join(sorted(kinds)),
            "worker_stats_found": len(stats),
            "inconsistencies": len(problems),
            "submit_per_s": round(n / submit_s, 1),
            # CPU of the worker processes themselves from the moment the poller saw them
            # all registered (start-up excluded) to the last end, per job; and of the jobs
            # (the workers' reaped children: true, and on cgroup2 or before the direct
            # start on cgroup1 the sh that enters the cgroup)
            "worker_cpu_ms_per_job": round(
                1000 * sum(end[0] - ready for end, ready in zip(cpu_end, cpu_ready,
                                                                strict=True)) / n, 3),
            "worker_cpu_ms_per_job_with_start": round(
                1000 * sum(end[0] for end in cpu_end) / n, 3),
            "jobs_cpu_ms_per_job": round(1000 * sum(end[1] for end in cpu_end) / n, 3),
        }
        if calls0 and calls1:
            # every worker's etcd transactions, and the watch messages etcd sent them, per
            # job (the bench's own poller only lists)
            out["etcd_txn_per_job"] = round((calls1.get("Txn", 0) - calls0.get("Txn", 0)) / n, 3)
            out["etcd_watch_messages_per_job"] = round(
                (calls1.get("Watch", 0) - calls0.get("Watch", 0)) / n, 3)
        if problems:
            out["inconsistency_examples"] = problems[:5]
        remove_parent_cgroups(nodes)
        say(f"  k={k}: {out['jobs_per_s']} jobs/s ({out['seconds']}s), worker CPU "
            f"{out['worker_cpu_ms_per_job']} ms/job, conflicts/job "
            f"{out['conflicts_per_job']}, per node {out['per_node_spread']}, "
            f"limits {out['limits']}, inconsistencies {len(problems)}")
        return out
    finally:
        backend.close()


def remove_parent_cgroups(nodes: list[str]) -> None:
    """The workers leave their (empty) ``skedlib-jobs-<node>`` parent cgroups behind; the
    bench runs in the same cgroups, so the limiter finds (or makes) the same ones and
    removes them. Call it once the workers are gone."""
    for node in dict.fromkeys(nodes):
        with contextlib.suppress(Exception):
            limiter = detect_limiter(node, "auto")
            if limiter.kind.startswith("cgroup"):
                limiter.close()


def skedlib_backend(stack: contextlib.ExitStack, name: str,
                    tmp: Path) -> Callable[[], tuple[str, str]] | str:
    """A factory of (url, prefix) for one fresh store per run, or why the backend is
    unavailable."""
    if name == "sqlite":
        def sqlite_store() -> tuple[str, str]:
            d = Path(tempfile.mkdtemp(prefix="sqlite-", dir=tmp))
            return f"sqlite://{d}/store.db", "sked/"
        return sqlite_store
    try:
        import skedlib_etcd  # type: ignore[import-not-found]  # noqa: F401

        from tests.harness.etcd import EtcdCluster, etcd_binary
    except ImportError as exc:
        return f"the skedlib-etcd plugin or the test harness is not installed ({exc})"
    if etcd_binary() is None:
        return "no etcd binary (run scripts/install-etcd.sh)"
    say("starting a 3-member etcd on 127.0.0.1")
    cluster = stack.enter_context(EtcdCluster(3, name="benchjobs").start())
    return lambda: (cluster.url(), f"bj{uuid.uuid4().hex[:8]}/")


# -- RQ -------------------------------------------------------------------------------------
def rq_missing() -> str | None:
    """Why the RQ part cannot run, or None."""
    try:
        import redis  # noqa: F401
        import rq  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed: pip install -e '.[bench]' (rq and redis)"
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (Debian: apt-get install redis-server)"
    if not (BIN / "rq").exists() and shutil.which("rq") is None:
        return "the rq command is not installed next to this Python"
    return None


@contextlib.contextmanager
def redis_server(procs: Procs, tmp: Path) -> Iterator[str]:
    import redis

    [port] = free_ports(1)
    log = tmp / "redis.log"
    data = tmp / "redis"
    data.mkdir()
    proc = procs.start([shutil.which("redis-server") or "redis-server", "--port", str(port),
                        "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                        "--dir", str(data), "--daemonize", "no"], log)
    client = redis.Redis(host="127.0.0.1", port=port)

    def up() -> bool:
        if proc.poll() is not None:
            raise BenchError(f"redis-server exited:\n{_tail(log)}")
        try:
            return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False

    _wait_until(up, 20, "redis-server")
    client.close()
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        Procs.terminate([proc], 10)


def _utc_ts(value: dt.datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


def run_rq(procs: Procs, tmp: Path, url: str, n: int, k: int,
           worker_class: str | None) -> dict[str, Any]:
    """Enqueue ``n`` jobs, start ``k`` burst workers, time until all have exited."""
    import redis
    import rq_jobs
    from rq import Queue
    from rq.job import Job as RqJob
    from rq.registry import FailedJobRegistry, FinishedJobRegistry

    conn = redis.Redis.from_url(url)
    try:
        conn.flushall()
        qname = f"bench{uuid.uuid4().hex[:6]}"
        queue = Queue(qname, connection=conn)
        t0 = time.perf_counter()
        for _ in range(n):
            queue.enqueue(rq_jobs.run_true)
        enqueue_s = time.perf_counter() - t0
        say(f"  enqueued {n} jobs in {enqueue_s:.2f}s ({n / enqueue_s:.0f}/s); "
            f"starting {k} rq worker(s)")
        rq_bin = str(BIN / "rq") if (BIN / "rq").exists() else "rq"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(BENCH), *filter(None, [os.environ.get("PYTHONPATH")])])}
        argv = [rq_bin, "worker", "--burst", "--url", url, "--path", str(BENCH)]
        if worker_class:
            argv += ["--worker-class", worker_class]
        logs = [tmp / f"rq-{qname}-{i}.log" for i in range(k)]
        wall0 = time.time()
        p0 = time.perf_counter()
        workers = [procs.start([*argv, "--name", f"{qname}-{i}", qname], logs[i], cwd=BENCH,
                               env=env) for i in range(k)]
        deadline = p0 + RUN_TIMEOUT
        for p in workers:
            try:
                p.wait(max(0.1, deadline - time.perf_counter()))
            except subprocess.TimeoutExpired:
                Procs.terminate(workers, 5)
                raise BenchError("rq workers did not finish:\n" +
                                 "\n".join(_tail(lg) for lg in logs)) from None
        seconds = time.perf_counter() - p0
        finished_ids = FinishedJobRegistry(queue=queue).get_job_ids()
        failed = FailedJobRegistry(queue=queue).count
        left = queue.count
        jobs = [j for j in RqJob.fetch_many(finished_ids, connection=conn) if j is not None]
        starts = [t for j in jobs if (t := _utc_ts(j.started_at)) is not None]
        ends = [t for j in jobs if (t := _utc_ts(j.ended_at)) is not None]
        out: dict[str, Any] = {
            "jobs_per_s": round(len(finished_ids) / seconds, 1),
            "seconds": round(seconds, 2),
            "finished": len(finished_ids), "failed": failed, "left_in_queue": left,
            "exit_codes": sorted({p.returncode for p in workers}),
            "enqueue_per_s": round(n / enqueue_s, 1),
        }
        if starts and ends:
            out["to_last_end_jobs_per_s"] = round(len(finished_ids) / (max(ends) - wall0), 1)
            out["steady_jobs_per_s"] = round(len(finished_ids) / (max(ends) - min(starts)), 1)
            out["first_start_s"] = round(min(starts) - wall0, 2)
        if len(finished_ids) != n:
            out["error"] = f"{len(finished_ids)} of {n} jobs finished"
            out["log_tail"] = _tail(logs[0])
        say(f"  k={k}: {out['jobs_per_s']} jobs/s ({out['seconds']}s), finished "
            f"{len(finished_ids)}/{n}, failed {failed}")
        return out
    finally:
        conn.close()


# -- Slurm ----------------------------------------------------------------------------------
SLURM_PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol")
SLURM_NODE = "skedbench1"


def slurm_missing() -> str | None:
    """Why Slurm cannot run here (a program missing), or None."""
    missing = [p for p in SLURM_PROGRAMS if shutil.which(p) is None]
    if missing:
        return (f"{', '.join(missing)} not installed: run scripts/install-slurm.sh "
                "(Debian's slurm-wlm and munge)")
    if os.geteuid() != 0:
        return "the one-node Slurm runs its daemons as root (SlurmUser=root): run as root"
    return None


def _slurm_conf(d: Path, cpus: int, max_array: int) -> str:
    ctld, slurmd = free_ports(2)
    return "\n".join([
        "ClusterName=skedbench",
        "SlurmctldHost=localhost(127.0.0.1)",
        f"SlurmctldPort={ctld}",
        f"SlurmdPort={slurmd}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        f"AuthInfo=socket={d}/munge/munge.sock",
        "CredType=cred/munge",
        f"StateSaveLocation={d}/state",
        f"SlurmdSpoolDir={d}/spool",
        f"SlurmctldPidFile={d}/slurmctld.pid",
        f"SlurmdPidFile={d}/slurmd.pid",
        f"SlurmctldLogFile={d}/slurmctld.log",
        f"SlurmdLogFile={d}/slurmd.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "SchedulerType=sched/backfill",
        "JobCompType=jobcomp/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "MpiDefault=none",
        "ReturnToService=2",
        f"MaxArraySize={max_array + 1}",
        f"MaxJobCount={max(10_000, 2 * max_array)}",
        # as many CPUs as a skedlib worker has slots, whatever the machine has
        "SlurmdParameters=config_overrides",
        f"NodeName={SLURM_NODE} NodeHostname=localhost NodeAddr=127.0.0.1 CPUs={cpus} "
        "State=UNKNOWN",
        "PartitionName=bench Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


class SlurmCluster:
    """A one-node Slurm on loopback in a temporary directory: munged with its own key and
    socket, slurmctld and slurmd in the foreground (children of the bench). ``stop()``
    (also on error) ends every daemon it started and the job steps they left."""

    def __init__(self, procs: Procs, tmp: Path, cpus: int, max_array: int) -> None:
        self.procs = procs
        self.dir = Path(tempfile.mkdtemp(prefix="slurm-", dir=tmp))
        for sub in ("state", "spool", "munge"):
            (self.dir / sub).mkdir(mode=0o700)
        self.conf = self.dir / "slurm.conf"
        self.conf.write_text(_slurm_conf(self.dir, cpus, max_array))
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.daemons: list[subprocess.Popen[bytes]] = []

    def _log(self, name: str) -> Path:
        return self.dir / f"{name}.out"

    def start(self) -> SlurmCluster:
        munge = self.dir / "munge"
        subprocess.run(["mungekey", "--create", "--keyfile", str(munge / "munge.key")],
                       check=True, capture_output=True)
        # --force: the socket's directory is private (0700), which munged warns about
        self.daemons.append(self.procs.start(
            ["munged", "--foreground", "--force", f"--socket={munge}/munge.sock",
             f"--key-file={munge}/munge.key", f"--log-file={munge}/munged.log",
             f"--pid-file={munge}/munged.pid", f"--seed-file={munge}/munged.seed"],
            self._log("munged")))
        _wait_until(lambda: self._alive() and (munge / "munge.sock").exists(), 20, "munged")
        self.daemons.append(self.procs.start(
            ["slurmctld", "-D", "-f", str(self.conf)], self._log("slurmctld"), env=self.env))
        _wait_until(lambda: self._alive() and self._scontrol_ping(), 30, "slurmctld")
        self.daemons.append(self.procs.start(
            ["slurmd", "-D", "-N", SLURM_NODE, "-f", str(self.conf)], self._log("slurmd"),
            env=self.env))
        _wait_until(lambda: self._alive() and self._node_idle(), 60, "slurmd (node idle)")
        return self

    def _alive(self) -> bool:
        for p in self.daemons:
            if p.poll() is not None:
                name = Path(str(p.args[0])).name  # type: ignore[index]
                raise BenchError(f"{name} exited ({p.returncode}):\n{_tail(self._log(name))}"
                                 f"\n{_tail(self.dir / f'{name}.log')}")
        return True

    def _run(self, *argv: str) -> str:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True,
                              timeout=30, check=False).stdout

    def _scontrol_ping(self) -> bool:
        return "UP" in self._run("scontrol", "ping")

    def _node_idle(self) -> bool:
        return "State=IDLE" in self._run("scontrol", "show", "node", SLURM_NODE)

    def queued(self) -> int:
        """Jobs not yet ended (pending, running, completing)."""
        out = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True,
                             text=True, timeout=30, check=True).stdout
        return len(out.split())

    def run(self, n: int, array: bool) -> dict[str, Any]:
        """Submit ``n`` ``true`` jobs (``sbatch --wrap=true`` each, or one job array) and
        time from the first submit until none is left."""
        self._alive()
        base = ["sbatch", "--quiet", "--output=/dev/null", "--wrap=true"]
        t0 = time.perf_counter()
        if array:
            subprocess.run([*base, f"--array=0-{n - 1}"], env=self.env, check=True,
                           capture_output=True, timeout=60)
        else:
            for _ in range(n):
                subprocess.run(base, env=self.env, check=True, capture_output=True,
                               timeout=60)
        submit_s = time.perf_counter() - t0
        say(f"  submitted {n} {'as an array' if array else 'sbatch jobs'} in "
            f"{submit_s:.2f}s; waiting for them to end")
        last, last_change = -1, time.monotonic()
        while (left := self.queued()) > 0:
            self._alive()
            if left != last:
                last, last_change = left, time.monotonic()
            if time.monotonic() - last_change > STALL_TIMEOUT:
                raise BenchError(f"Slurm made no progress for {STALL_TIMEOUT}s ({left} of "
                                 f"{n} left):\n{_tail(self.dir / 'slurmctld.log')}")
            time.sleep(0.2)
        seconds = time.perf_counter() - t0
        log = (self.dir / "slurmctld.log").read_text(errors="replace")
        failed = len(re.findall(r"_job_complete: JobId=\S+ WEXITSTATUS [1-9]", log))
        out = {"jobs_per_s": round(n / seconds, 2), "seconds": round(seconds, 2),
               "submit_s": round(submit_s, 2), "nonzero_exits_in_log": failed}
        say(f"  Slurm {'array' if array else 'sbatch'}: {out['jobs_per_s']} jobs/s "
            f"({out['seconds']}s)")
        return out

    def stop(self) -> None:
        """End the daemons (scontrol shutdown, then signals) and any job step left."""
        with contextlib.suppress(Exception):
            subprocess.run(["scontrol", "shutdown"], env=self.env, capture_output=True,
                           timeout=15, check=False)
        Procs.terminate(list(reversed(self.daemons)), 15)
        for proc in psutil_steps(self.conf):
            with contextlib.suppress(Exception):
                proc.kill()


def psutil_steps(conf: Path) -> list[Any]:
    """slurmstepd processes of this cluster still alive (they carry its SLURM_CONF)."""
    try:
        import psutil
    except ImportError:
        return []
    found = []
    for p in psutil.process_iter(["name"]):
        with contextlib.suppress(psutil.Error):
            if (p.info["name"] or "").startswith("slurmstepd") and \
                    p.environ().get("SLURM_CONF") == str(conf):
                found.append(p)
    return found


def run_slurm(procs: Procs, tmp: Path, n: int, cpus: int, array: bool) -> dict[str, Any]:
    """Both Slurm figures on one fresh one-node cluster, stopped at the end."""
    missing = slurm_missing()
    if missing:
        raise BenchError(f"--slurm: {missing}")
    say(f"starting a one-node Slurm on 127.0.0.1 ({cpus} CPUs)")
    cluster = SlurmCluster(procs, tmp, cpus, n)
    try:
        cluster.start()
        out: dict[str, Any] = {"sbatch": cluster.run(n, array=False)}
        if array:
            out["array"] = cluster.run(n, array=True)
        out["version"] = subprocess.run(["slurmctld", "-V"], capture_output=True, text=True,
                                        check=False).stdout.strip()
        out["config"] = ("one node, CPUs as skedlib slots, select/cons_tres CR_CPU, "
                         "sched/backfill, proctrack/linuxproc, task/none, munge auth, "
                         "no accounting; every other setting Slurm's default")
        return out
    finally:
        cluster.stop()


# -- main -----------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="jobs per run (default 2000; --quick: 300)")
    parser.add_argument("--quick", action="store_true", help="a small run")
    parser.add_argument("--backends", default="sqlite,etcd",
                        help="skedlib backends, of sqlite,etcd (default both)")
    parser.add_argument("--slots", type=int, default=4, metavar="K",
                        help="--job-slots of each skedlib worker (default 4)")
    parser.add_argument("--workers", type=_ints, default=[1, 2, 4], metavar="1,2,4",
                        help="numbers of workers to run (default 1,2,4)")
    parser.add_argument("--no-rq", action="store_true", help="skip the RQ part")
    parser.add_argument("--no-secondary", action="store_true",
                        help="skip --job-limits none and RQ's SimpleWorker")
    parser.add_argument("--secondary-workers", type=_ints, default=None, metavar="4",
                        help="numbers of workers of the --job-limits none runs (default: "
                             "the largest of --workers; the limits cost most there)")
    parser.add_argument("--baseline", type=Path, default=None, metavar="TREE",
                        help="also run the workers of another checkout (e.g. a git worktree "
                             "of the base), alternating with this tree's, and report the "
                             "ratios of jobs/s and of worker CPU per job (each tree's "
                             "workers import its own skedlib and plugins)")
    parser.add_argument("--no-compile", action="store_true",
                        help="do not compile the trees' bytecode before the runs (by "
                             "default they are, as a wheel install has it)")
    parser.add_argument("--repeat", type=int, default=2, metavar="R",
                        help="with --baseline: rounds of (baseline, this tree) (default 2)")
    parser.add_argument("--slurm", action="store_true",
                        help="also run the same jobs through a one-node Slurm started here "
                             "(scripts/install-slurm.sh installs it)")
    parser.add_argument("--slurm-jobs", type=int, default=None, metavar="N",
                        help="jobs of each Slurm run (default: --jobs)")
    parser.add_argument("--no-slurm-array", action="store_true",
                        help="only sbatch per job, not also one job array")
    parser.add_argument("--agent-arg", action="append", default=[], metavar="ARG",
                        help="an extra skedlib-agent argument (repeatable), e.g. "
                             "--agent-arg=--job-claim-delay=0")
    args = parser.parse_args()
    n = args.jobs or (300 if args.quick else 2000)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in ("sqlite", "etcd"):
            parser.error(f"unknown backend {b!r}: expected sqlite or etcd")
    secondary = args.secondary_workers or [max(args.workers)]
    if AGENT is None:
        sys.exit("bench/jobs.py: skedlib-agent is not installed (pip install -e .)")
    if args.slurm and (missing_slurm := slurm_missing()):
        sys.exit(f"bench/jobs.py --slurm: {missing_slurm}")
    baseline: Path | None = args.baseline.resolve() if args.baseline else None
    if baseline is not None and not (baseline / "skedlib" / "jobs").is_dir():
        sys.exit(f"bench/jobs.py --baseline: {baseline} is not a skedlib checkout")
    if not args.no_compile:
        # a wheel install has its bytecode (pip compiles at install); an editable checkout
        # run with PYTHONDONTWRITEBYTECODE set would compile skedlib at every worker start
        for tree in {ROOT, *([baseline] if baseline else [])}:
            for part in ("skedlib", "plugins"):
                if (tree / part).is_dir():
                    compileall.compile_dir(str(tree / part), quiet=1, workers=0)
    failed = False
    signal.signal(signal.SIGTERM, _raise_interrupt)

    out: dict[str, Any] = {
        "bench": "batch jobs running `true`: skedlib job workers vs RQ",
        "n_jobs": n, "slots": args.slots, "workers": args.workers,
        "cpus": os.cpu_count(), "skedlib": {},
        **({} if args.no_secondary else {"skedlib_limits_none": {}}),
        "rq": {}, "submit_per_s": {},
        "enqueue_per_s": None, "skipped": {},
        "notes": {
            "jobs_per_s": "N / (last job's end - the moment the workers were started); "
                          "worker start-up (Python import, registration) included",
            "steady_jobs_per_s": "N / (last end - first start): without the start-up",
            "etcd_txn_per_job": "etcd only: Txn calls the members handled from the workers' "
                                "start to the last end, per job (from their /metrics); "
                                "etcd_watch_messages_per_job: watch messages they sent",
            "bytecode": "the trees' bytecode is not compiled before the runs (--no-compile)"
                        if args.no_compile else
                        "the trees' bytecode is compiled before the runs, as a wheel "
                        "install has it",
            "skedlib_slots": f"each skedlib worker runs up to {args.slots} jobs at once; "
                             "an RQ worker runs one",
            "sqlite": "a file in the temporary directory, WAL, synchronous=NORMAL",
            "etcd3": "3 members on 127.0.0.1, data under /dev/shm when writable "
                     "(fsync is free there), sharing the CPUs with the workers",
            "rq_jobs_per_s": "N / (start of the workers - all k burst workers exited); "
                             "to_last_end_jobs_per_s ends at the last job's end instead",
        },
    }
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="sked-bench-jobs-"))
    try:
        with contextlib.ExitStack() as stack:
            for b in backends:
                name = "etcd3" if b == "etcd" else "sqlite"
                try:
                    factory = skedlib_backend(stack, b, tmp)
                except Exception as exc:  # the cluster did not start
                    factory = f"{type(exc).__name__}: {exc}"
                if isinstance(factory, str):
                    say(f"skipping skedlib on {name}: {factory}")
                    out["skipped"][f"skedlib/{name}"] = factory
                    continue
                variants = [("skedlib", "auto", args.workers)]
                if not args.no_secondary:
                    variants.append(("skedlib_limits_none", "none", secondary))
                if baseline is not None:
                    out.setdefault("skedlib_baseline", {})[name] = {}
                    out.setdefault("vs_baseline", {})[name] = {}
                for section, limits, counts in variants:
                    out[section][name] = {}
                    for k in counts:
                        # with --baseline (main figures only): the baseline's workers and
                        # this tree's, alternately, --repeat rounds
                        trees = [ROOT]
                        if baseline is not None and section == "skedlib":
                            trees = [baseline, ROOT] * args.repeat
                        runs: dict[Path, list[dict[str, Any]]] = {baseline or ROOT: [],
                                                                  ROOT: []}
                        for tree in trees:
                            label = "baseline" if tree == baseline else "this tree"
                            say(f"skedlib ({label}) on {name}, {k} worker(s), {args.slots} "
                                f"slots each, --job-limits {limits}, {n} jobs")
                            url, prefix = factory()
                            try:
                                result = run_skedlib(procs, tmp, url, prefix, n, k,
                                                     args.slots, limits, args.agent_arg, tree)
                            except BenchError as exc:
                                say(f"  failed: {exc}")
                                result = {"error": str(exc)}
                            runs[tree].append(result)
                        out[section][name][str(k)] = runs[ROOT][-1]
                        if baseline is not None and section == "skedlib":
                            out["skedlib_baseline"][name][str(k)] = runs[baseline]
                            out["skedlib_runs"] = out.get("skedlib_runs", {})
                            out["skedlib_runs"].setdefault(name, {})[str(k)] = runs[ROOT]
                            out["vs_baseline"][name][str(k)] = _ratios(runs[baseline],
                                                                       runs[ROOT])
                rates = [r["submit_per_s"] for r in out["skedlib"][name].values()
                         if "submit_per_s" in r]
                if rates:
                    out["submit_per_s"][name] = round(statistics.median(rates), 1)

            missing = "--no-rq" if args.no_rq else rq_missing()
            if missing:
                say(f"skipping RQ: {missing}")
                out["skipped"]["rq"] = missing
            else:
                url = stack.enter_context(redis_server(procs, tmp))
                classes: list[tuple[str, str | None]] = [("default_worker", None)]
                if not args.no_secondary:
                    classes.append(("simple_worker", "rq.worker.SimpleWorker"))
                for section, cls in classes:
                    out["rq"][section] = {}
                    for k in args.workers:
                        say(f"RQ {section} on redis-server, {k} worker(s), {n} jobs")
                        try:
                            out["rq"][section][str(k)] = run_rq(procs, tmp, url, n, k, cls)
                        except BenchError as exc:
                            say(f"  failed: {exc}")
                            out["rq"][section][str(k)] = {"error": str(exc)}
                rates = [r["enqueue_per_s"] for r in out["rq"]["default_worker"].values()
                         if "enqueue_per_s" in r]
                if rates:
                    out["enqueue_per_s"] = round(statistics.median(rates), 1)
            if args.slurm:
                slurm_n = args.slurm_jobs or n
                try:
                    out["slurm"] = run_slurm(procs, tmp, slurm_n, args.slots,
                                             not args.no_slurm_array)
                    out["slurm"]["n_jobs"] = slurm_n
                    out["vs_slurm"] = _vs_slurm(out)
                except (BenchError, OSError, subprocess.SubprocessError) as exc:
                    say(f"Slurm failed: {exc}")
                    out["slurm"] = {"error": f"{type(exc).__name__}: {exc}"}
                    failed = True
    except KeyboardInterrupt:
        say("interrupted; cleaning up")
        raise SystemExit(130) from None
    finally:
        procs.kill_all()
        remove_parent_cgroups(NODES)
        shutil.rmtree(tmp, ignore_errors=True)
    if not out["skipped"]:
        del out["skipped"]
    json.dump(out, sys.stdout, indent=2)
    print()
    if failed:
        sys.exit(1)


def _ratios(base: list[dict[str, Any]], this: list[dict[str, Any]]) -> dict[str, Any]:
    """This tree against the baseline, round by round (each round ran the baseline's
    workers, then this tree's, in the same shell run)."""
    rounds = [(b, t) for b, t in zip(base, this, strict=True)
              if "error" not in b and "error" not in t]
    jobs = [round(t["jobs_per_s"] / b["jobs_per_s"], 2) for b, t in rounds]
    steady = [round(t["steady_jobs_per_s"] / b["steady_jobs_per_s"], 2) for b, t in rounds]
    cpu = [round(b["worker_cpu_ms_per_job"] / t["worker_cpu_ms_per_job"], 2)
           for b, t in rounds if t["worker_cpu_ms_per_job"] > 0]
    out: dict[str, Any] = {
        "jobs_per_s": {"baseline": [b["jobs_per_s"] for b, _ in rounds],
                       "this": [t["jobs_per_s"] for _, t in rounds], "ratio": jobs},
        "steady_jobs_per_s_ratio": steady,
        "worker_cpu_ms_per_job": {"baseline": [b["worker_cpu_ms_per_job"] for b, _ in rounds],
                                  "this": [t["worker_cpu_ms_per_job"] for _, t in rounds],
                                  "baseline_over_this": cpu},
        "jobs_cpu_ms_per_job": {"baseline": [b["jobs_cpu_ms_per_job"] for b, _ in rounds],
                                "this": [t["jobs_cpu_ms_per_job"] for _, t in rounds]},
    }
    if jobs:
        out["jobs_per_s_ratio_median"] = round(statistics.median(jobs), 2)
    if cpu:
        out["worker_cpu_ratio_median"] = round(statistics.median(cpu), 2)
    return out


def _vs_slurm(out: dict[str, Any]) -> dict[str, Any]:
    """skedlib's jobs/s (the first backend's run with one worker, or the fewest workers)
    over Slurm's."""
    for name, by_k in out["skedlib"].items():
        runs = [(int(k), r) for k, r in by_k.items() if "jobs_per_s" in r]
        if not runs:
            continue
        k, run = min(runs, key=lambda kr: kr[0])
        ratios: dict[str, Any] = {"skedlib": f"{name}, {k} worker(s)",
                                  "skedlib_jobs_per_s": run["jobs_per_s"]}
        for mode in ("sbatch", "array"):
            if mode in out["slurm"]:
                ratios[f"slurm_{mode}_jobs_per_s"] = out["slurm"][mode]["jobs_per_s"]
                ratios[f"ratio_{mode}"] = round(run["jobs_per_s"]
                                                / out["slurm"][mode]["jobs_per_s"], 1)
        return ratios
    return {}


if __name__ == "__main__":
    main()
