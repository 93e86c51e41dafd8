"""Chaos: a whole deployment as real processes, faults injected at random, invariants
checked once it has converged.

:class:`Chaos` starts a store (a 3-member etcd cluster from :mod:`tests.harness.etcd`, or
one SQLite file), ``skedlib-scheduler`` daemons, ``skedlib-agent`` processes (each with
its own host name and private state directory) and applies services of cheap process
tasks (``sleep``). :meth:`Chaos.run` then injects faults at random from a seeded
generator for ``duration`` seconds, every kind once first (so a short run covers them
all), one every ``fault_gap`` seconds:

- ``scheduler_kill``: ``kill -9`` of a scheduler, restarted after up to 3 s;
- ``agent_kill_{early,late}_restart`` / ``agent_and_tasks_kill_{early,late}_restart``:
  ``kill -9`` of an agent, its task processes left running or killed too, restarted
  early (within its lease) or late (after its lease expired and the scheduler moved its
  tasks: 2 to 6 s after the lease's TTL; on Consul, whose leader elections restart
  every session's TTL, 2 to 6 s after the agent's host record is gone); at most two
  agents are down at once (two hosts hold every task);
- ``etcd_leader_kill``: ``kill -9`` of the etcd leader, restarted after 1 to 3 s;
- ``etcd_member_stop_cont``: SIGSTOP of an etcd member, SIGCONT after 1 to 3 s;
- ``scale_up`` / ``scale_down``: a service's ``desired`` changed;
- on Consul (3 servers, a Consul client agent per host through which each agent
  registers its tasks: ``--health-provider consul``): ``consul_leader_kill`` (``kill -9``
  of the leader, restarted after 1 to 3 s) and ``host_kill_{early,late}_restart`` (the
  agent, its task processes and the host's Consul agent killed together, restarted
  together, early or late as above).

Then everything is healed (every process running, etcd healthy) and the run waits until
the invariants (:func:`check_invariants`) hold on every check for longer than a lease,
reporting when that stretch began. On Consul the run then waits (up to the bound
docs/backends/consul.md documents plus a margin, :data:`CATALOG_MARGIN`) for the catalog
to hold exactly the issued tasks (:func:`check_catalog`). Throughout, a sampler scans
the processes every 0.5 s: the *double-run window* is the task-seconds during which one
task id had a live process on two hosts (``task_seconds_both_agents_running``: the part
during which both agents' processes ran, a restarted agent's start-up included). Each
such stretch is timed, split by whether the agent of the copy that went ran throughout; and for each
late restart of an agent whose tasks ran on, the time from its restart (and from its
``starting:`` log line) until none of its stale copies runs is listed
(``late_restart_withdrawals``).

Task processes are found by the ``SKED_TASK_ID`` and ``SKED_HOST`` the agent puts in
their environment (``skedlib/agent/operations.py``); host names carry a random tag, so
runs on one machine do not see each other's. :meth:`Chaos.close` kills every process the
run started, task processes included, and is registered to run at interpreter exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import itertools
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import yaml

from skedlib import (
    Client,
    Host,
    Keyspace,
    Store,
    Task,
    TaskHealth,
    decode,
    open_backend,
    parse_manifest,
)
from tests.harness.cgroups import remove_task_cgroups
from tests.harness.common import ServerProcess, forget_at_exit, stop_at_exit

__all__ = ["Chaos", "ChaosConfig", "catalog_bound", "check_catalog", "check_invariants",
           "task_processes"]

BIN = Path(sys.executable).parent
TASK_MEMORY = 16
"""MiB each task declares; hosts offer enough for two of them to hold every task."""
TASK_CPU = 8
SERVICES = ("s0", "s1", "s2", "s3")
"""Two binpack services (they fill hosts up to their capacity: the overcommit check
bites) and two spread ones."""
SAMPLE_EVERY = 0.5
CONSUL_LIVENESS_TTL = 6.0
"""``consul.liveness_ttl`` of the agents on Consul: a pass every 2 s per task."""
CONSUL_CLEAN_INTERVAL = 2.0
"""``consul.clean_interval`` of the agents on Consul."""
CONSUL_DETECTION = 10.0
"""What Consul's failure detection of a dead node may take on a loaded machine."""
CATALOG_MARGIN = 30.0
"""Seconds the catalog check waits beyond the documented bound (a loaded machine)."""


def catalog_bound(liveness_ttl: float = CONSUL_LIVENESS_TTL,
                  clean_interval: float = CONSUL_CLEAN_INTERVAL) -> float:
    """The documented bound (docs/backends/consul.md, *What the catalog guarantees*) on
    how far the catalog may lag the issued state: a passing entry at most
    ``liveness_ttl`` behind its task; an entry of a task that moved away gone within
    failure detection + ``clean_interval`` + the cleaner's lock TTL (twice the interval,
    at least the store's shortest lease: 20 s on Consul)."""
    return liveness_ttl + CONSUL_DETECTION + clean_interval + max(2 * clean_interval, 20.0)


@dataclasses.dataclass
class ChaosConfig:
    """What one chaos run does."""

    backend: str = "etcd"
    """``etcd`` (a 3-member cluster), ``consul`` (3 servers and a client agent per host)
    or ``sqlite`` (one file shared on this machine)."""
    duration: float = 60.0
    """Seconds of fault injection."""
    tasks: int = 100
    """Tasks at full scale (split over four services)."""
    seed: int = 1
    schedulers: int | None = None
    """Scheduler daemons (default: 3 on etcd, 1 on SQLite)."""
    agents: int = 4
    fault_gap: tuple[float, float] = (1.5, 5.0)
    """Seconds between two faults (uniform)."""
    lease_ttl: int | None = None
    """The agents' ``--lease-ttl`` (default 3; 20 on Consul, its shortest lease)."""
    converge_timeout: float = 180.0
    workdir: Path | None = None
    """Where logs and state go (default: a fresh temporary directory, removed by
    :meth:`Chaos.close` unless ``keep``)."""
    keep: bool = False


class _Proc(ServerProcess):
    """A scheduler or an agent: a fixed argv that can be started again."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        super().__init__(log_path)
        self.name = name
        self.argv = argv
        self.down_by_us = False
        self.unexpected_exits = 0
        self.started = 0.0
        """When (monotonic) the running process was spawned."""

    def __repr__(self) -> str:
        return f"<{self.name} {self.state}>"

    def start(self) -> None:
        self.spawn(self.argv)
        self.started = time.monotonic()
        self.down_by_us = False


def task_processes(hosts: set[str]) -> list[tuple[int, str, str]]:
    """Live task processes started by the agents of ``hosts``: (pid, task id, host).

    Found by the ``SKED_TASK_ID`` / ``SKED_HOST`` the agent sets in a task's environment;
    zombies do not count (they run nothing)."""
    found = []
    for p in psutil.process_iter(["name"]):
        if p.info["name"] != "sleep":  # reading every environment is slow: tasks are sleeps
            continue
        with contextlib.suppress(psutil.Error):
            env = p.environ()
            host = env.get("SKED_HOST")
            if host in hosts and p.status() != psutil.STATUS_ZOMBIE:
                found.append((p.pid, env.get("SKED_TASK_ID", ""), host))
    return found


def _kill_group(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(os.getpgid(pid), signal.SIGKILL)


def _spread(values: list[float]) -> dict[str, Any]:
    """Count, median and maximum of durations (seconds)."""
    if not values:
        return {"count": 0}
    values = sorted(values)
    return {"count": len(values), "p50_s": round(values[len(values) // 2], 2),
            "max_s": round(values[-1], 2)}


def _logged_after(log: Path, marker: str, after: float) -> float | None:
    """When (seconds since the epoch) the first line of ``log`` containing ``marker``
    was logged at or after ``after``; None if there is none. Lines start with the
    logging module's ``YYYY-MM-DD HH:MM:SS,mmm`` in local time."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        if marker not in line:
            continue
        try:
            stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
        except ValueError:
            continue
        stamp += int(line[20:23]) / 1000 if line[20:23].isdigit() else 0.0
        if stamp >= after:
            return stamp
    return None


def check_invariants(client: Client, desired: dict[str, int], hosts: set[str],
                     capacity: dict[str, int]) -> dict[str, dict[str, Any]]:
    """The invariants of a converged deployment, each ``{"ok": bool, "detail": ...}``.

    - ``instances_exactly_once``: each service has instances ``0 … desired-1``, each once;
    - ``index_agrees``: every task id is in the by-host index exactly once, under its host,
      and the index names no other task;
    - ``no_overcommit``: no host holds more memory or CPU than it offers;
    - ``one_process_per_task``: each task has exactly one live process, on its host, and
      no task process runs that is not issued there (an orphan);
    - ``all_healthy``: every task is placed, not rejected, and healthy on its host;
    - ``hosts_up``: every agent's host record is there.
    """
    keys = client.keys
    # one listing of the whole actual state: tasks, index, health and hosts as of one
    # revision (separate listings would see a move half done)
    tasks: list[Task] = []
    index: dict[str, list[str]] = defaultdict(list)
    health: dict[str, TaskHealth] = {}
    live: set[str] = set()
    state = os.path.commonpath([keys.tasks, keys.all_host_tasks, keys.health,
                                keys.agents]) + "/"
    for kv in client.backend.list(state).items:
        if kv.key.startswith(keys.tasks):
            tasks.append(decode(kv.value, Task, where=kv.key))
        elif kv.key.startswith(keys.all_host_tasks):
            host, tid = kv.key[len(keys.all_host_tasks):].split("/", 1)
            index[tid].append(host)
        elif kv.key.startswith(keys.health):
            h = decode(kv.value, TaskHealth, where=kv.key)
            health[h.task_id] = h
        elif kv.key.startswith(keys.agents):
            live.add(decode(kv.value, Host, where=kv.key).name)
    procs = task_processes(hosts)
    out: dict[str, dict[str, Any]] = {}

    def verdict(name: str, problems: list[Any]) -> None:
        out[name] = {"ok": not problems, "detail": problems[:10], "count": len(problems)}

    problems: list[Any] = []
    by_service: dict[str, Counter[int]] = defaultdict(Counter)
    for t in tasks:
        by_service[t.service][t.instance] += 1
    for service in set(desired) | set(by_service):
        want = Counter(range(desired.get(service, 0)))
        if by_service[service] != want:
            extra = sorted((by_service[service] - want).elements())
            missing = sorted((want - by_service[service]).elements())
            problems.append({"service": service, "missing": missing[:10],
                             "extra_or_duplicated": extra[:10]})
    verdict("instances_exactly_once", problems)

    ids = {t.id for t in tasks}
    problems = [{"task": t.id, "host": t.host, "index": index.get(t.id, [])}
                for t in tasks if index.get(t.id) != [t.host]]
    problems += [{"task": tid, "index": where, "record": None}
                 for tid, where in index.items() if tid not in ids]
    verdict("index_agrees", problems)

    used: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for t in tasks:
        if t.host:
            used[t.host][0] += t.task_definition.total_memory()
            used[t.host][1] += t.task_definition.total_cpu_units()
    verdict("no_overcommit", [
        {"host": h, "memory": m, "cpu_units": c, "offered": capacity}
        for h, (m, c) in used.items()
        if m > capacity["memory"] or c > capacity["cpu_units"]])

    running: dict[str, list[str]] = defaultdict(list)
    for _pid, tid, host in procs:
        running[tid].append(host)
    where = {t.id: t.host for t in tasks}
    problems = [{"task": t.id, "host": t.host, "processes_on": running.get(t.id, [])}
                for t in tasks if running.get(t.id) != [t.host]]
    problems += [{"orphan": tid, "processes_on": on} for tid, on in running.items()
                 if tid not in where]
    verdict("one_process_per_task", problems)

    verdict("all_healthy", [
        {"task": t.id, "host": t.host, "rejected": t.rejected,
         "health": None if (h := health.get(t.id)) is None else
         {"host": h.host, "healthy": h.healthy, "state": h.state}}
        for t in tasks
        if not t.host or t.rejected or (h := health.get(t.id)) is None or not h.healthy
        or h.host != t.host])
    verdict("hosts_up", sorted(hosts - live))
    return out


def check_catalog(client: Client, consul: Any, hosts: set[str]) -> dict[str, Any]:
    """Whether Consul's catalog holds exactly the issued tasks: ``{"ok", "detail",
    "count"}`` like :func:`check_invariants`' verdicts.

    Every issued task is registered once, with service ID = its task id, on its host's
    node (the chaos names each host's Consul node after the host), tagged
    ``skedlib-host=<host>``; no other skedlib registration of these hosts is in the
    catalog (a service that is not issued, or issued elsewhere); and the passing entries
    (``/v1/health/service/NAME?passing``) are exactly the healthy issued tasks.
    ``consul`` is a :class:`tests.harness.consul.ConsulAgent` to ask (a server)."""
    from skedlib_consul.catalog import host_tag

    keys = client.keys
    tasks: dict[str, Task] = {}
    healthy: set[str] = set()
    state = os.path.commonpath([keys.tasks, keys.health]) + "/"
    for kv in client.backend.list(state).items:
        if kv.key.startswith(keys.tasks):
            t = decode(kv.value, Task, where=kv.key)
            tasks[t.id] = t
        elif kv.key.startswith(keys.health):
            h = decode(kv.value, TaskHealth, where=kv.key)
            if h.healthy:
                healthy.add(h.task_id)
    healthy = {tid for tid in healthy if tid in tasks and tasks[tid].host}

    def get(path: str) -> Any:
        status, body = consul.api("GET", path, timeout=10.0)
        if status != 200:
            raise RuntimeError(f"consul {consul.name}: GET {path}: {status} {body}")
        return body

    marks = {host_tag(h) for h in hosts}
    names = {name for name, tags in get("/v1/catalog/services").items()
             if name in SERVICES or marks & set(tags or ())}
    entries: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
    passing: list[str] = []
    for name in sorted(names):
        for e in get(f"/v1/health/service/{name}"):
            entries[e["Service"]["ID"]].append((e["Node"]["Node"], e["Service"]["Tags"] or []))
        passing += [e["Service"]["ID"] for e in get(f"/v1/health/service/{name}?passing")]
    problems: list[Any] = []
    for tid, t in tasks.items():
        if not t.host:
            continue
        want = (t.host, [host_tag(t.host)])
        got = entries.get(tid, [])
        if len(got) != 1 or got[0][0] != t.host or want[1][0] not in got[0][1]:
            problems.append({"task": tid, "host": t.host, "catalog": got})
    problems += [{"not_issued": tid, "catalog": got} for tid, got in entries.items()
                 if tid not in tasks or not tasks[tid].host]
    twice = sorted(tid for tid, n in Counter(passing).items() if n > 1)
    if set(passing) != healthy or twice:
        problems.append({"passing_not_healthy": sorted(set(passing) - healthy)[:10],
                         "healthy_not_passing": sorted(healthy - set(passing))[:10],
                         "passing_twice": twice[:10]})
    return {"ok": not problems, "detail": problems[:10], "count": len(problems)}


class Chaos:
    """One chaos run: :meth:`start`, :meth:`run` (returns the JSON-able report), then
    always :meth:`close` (or use it as a context manager)."""

    def __init__(self, config: ChaosConfig) -> None:
        if config.backend not in ("etcd", "consul", "sqlite"):
            raise ValueError(f"chaos backend: {config.backend!r} is not etcd, consul or "
                             "sqlite")
        self.config = config
        self.rng = random.Random(config.seed)
        self.etcd = config.backend == "etcd"
        self.consul = config.backend == "consul"
        self.lease_ttl = config.lease_ttl or (20 if self.consul else 3)
        self.consul_agents: dict[str, Any] = {}
        """host -> its Consul client agent (a ConsulAgent whose node name is the host)."""
        self.tag = uuid.uuid4().hex[:6]
        self.dir = config.workdir or Path(tempfile.mkdtemp(prefix="sked-chaos-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cluster: Any = None
        self.url = ""
        self.client: Client | None = None
        self.schedulers: list[_Proc] = []
        self.agents: list[_Proc] = []
        self.hosts: set[str] = set()
        self.faults: Counter[str] = Counter()
        self.timeline: list[tuple[float, str, str]] = []
        self._t0 = time.monotonic()
        self._deck = ["scale", "scheduler_kill", "agent_kill_early_restart",
                      "agent_kill_late_restart", "agent_and_tasks_kill_early_restart",
                      "agent_and_tasks_kill_late_restart"]
        if self.etcd:
            self._deck += ["etcd_leader_kill", "etcd_member_stop_cont"]
        if self.consul:
            self._deck += ["consul_leader_kill", "host_kill_early_restart",
                           "host_kill_late_restart"]
        self.rng.shuffle(self._deck)
        self.pending: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        n = config.tasks
        base = [n // len(SERVICES) + (1 if i < n % len(SERVICES) else 0)
                for i in range(len(SERVICES))]
        self.full = dict(zip(SERVICES, base, strict=True))
        self.desired = dict(self.full)
        per_host = max(32, math.ceil(n / 2))  # two hosts hold every task
        self.capacity = {"memory": per_host * TASK_MEMORY, "cpu_units": per_host * TASK_CPU}
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self.double_task_s = 0.0
        self.double_up_task_s = 0.0
        self.double_max = 0
        self.doubled: set[str] = set()
        self.samples = 0
        # late restarts of agents whose tasks ran on: host -> (restarted at, stale ids)
        self._lock = threading.Lock()
        self._last_on: dict[str, set[str]] = {}
        self._withdrawing: dict[str, tuple[float, set[str], float]] = {}
        self.withdrawals: list[dict[str, Any]] = []
        # task -> (doubled since, its hosts, their agents' spawn times or None if down)
        self._open: dict[str, tuple[float, set[str], dict[str, float | None]]] = {}
        self.episodes: list[tuple[float, bool]] = []
        """(seconds, whether the stale copy's agent ran throughout) per doubled stretch."""

    def __enter__(self) -> Chaos:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- setting up ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the store, the schedulers and the agents, and apply the services."""
        stop_at_exit(self)
        if self.etcd:
            from tests.harness.etcd import EtcdCluster

            self.cluster = EtcdCluster(3, name=f"chaos{self.tag}").start()
            self.url = self.cluster.url()
        elif self.consul:
            self._start_consul()
        else:
            self.url = f"sqlite://{self.dir}/store.db"
        self.client = Client(Store(open_backend(self.url), Keyspace()))
        n_sched = self.config.schedulers or (1 if self.config.backend == "sqlite" else 3)
        for i in range(n_sched):
            self.schedulers.append(self._proc(f"scheduler{i}", [
                str(BIN / "skedlib-scheduler"), "--backend", self.url, "--lock-ttl", "3",
                "--resync", "10"]))
        for i in range(self.config.agents):
            host = f"c{i}x{self.tag}"
            self.hosts.add(host)
            self.agents.append(self._proc(host, [
                str(BIN / "skedlib-agent"), "--backend", self.url, "--host", host,
                "--state-dir", str(self.dir / host), "--executors", "process",
                "--lease-ttl", str(self.lease_ttl), "--check-failures", "2",
                "--memory", str(self.capacity["memory"]),
                "--cpu-units", str(self.capacity["cpu_units"]), *self._health_args(host)]))
        for p in self.schedulers + self.agents:
            p.start()
        self._wait(lambda: self.hosts <= {h.name for h in self._client.hosts()}, 60,
                   "every agent's host record")
        self._apply()

    def _start_consul(self) -> None:
        """3 Consul servers (the store) and one client agent per host, named after it."""
        from tests.harness.consul import ConsulAgent, ConsulCluster, free_ports

        self.cluster = ConsulCluster(3, name=f"chaos{self.tag}").start()
        self.url = self.cluster.url()
        servers = [m.serf_lan for m in self.cluster.members]
        for i in range(self.config.agents):
            host = f"c{i}x{self.tag}"
            ports = dict(zip(["http", "serf_lan", "serf_wan", "server"], free_ports(4),
                             strict=True))
            self.consul_agents[host] = ConsulAgent(
                host, ports, self.cluster.base_dir / "clients" / host,
                self.cluster.binary, dev=False,
                config={"retry_join": servers, "retry_interval": "1s"})
        for a in self.consul_agents.values():
            a.start()
        self._wait(lambda: all(a.leader() for a in self.consul_agents.values()), 60,
                   "every host's Consul agent to join the servers")

    def _health_args(self, host: str) -> list[str]:
        """On Consul: register the tasks with the host's own Consul agent."""
        if not self.consul:
            return []
        agent = self.consul_agents[host]
        return ["--health-provider", "consul",
                "--health-opt", f"consul.url=http://{agent.endpoint}",
                "--health-opt", f"consul.liveness_ttl={CONSUL_LIVENESS_TTL:g}",
                "--health-opt", f"consul.clean_interval={CONSUL_CLEAN_INTERVAL:g}"]

    def _proc(self, name: str, argv: list[str]) -> _Proc:
        return _Proc(name, argv, self.dir / f"{name}.log")

    @property
    def _client(self) -> Client:
        assert self.client is not None, "Chaos.start() was not called"
        return self.client

    def manifest(self) -> str:
        """The services at their current ``desired``: ``sleep`` process tasks."""
        return yaml.safe_dump({
            "clusters": [{"name": "chaos", "services": list(SERVICES)}],
            "services": [{"name": s, "task_name": s, "task_version": 1, "desired": n,
                          "scheduler": "binpack" if i < 2 else "spread"}
                         for i, (s, n) in enumerate(self.desired.items())],
            "task_definitions": [
                {"name": s, "version": 1, "memory": TASK_MEMORY, "cpu_units": TASK_CPU,
                 "grace_period": "2s",
                 "containers": [{"name": "main", "type": "process",
                                 "executor": {"argv": ["sleep", "3600"]}}]}
                for s in SERVICES],
        })

    def _apply(self) -> None:
        # the store may be between leaders: retry (apply itself is all or nothing)
        doc = parse_manifest(self.manifest(), "chaos.yml")
        deadline = time.monotonic() + 60
        while True:
            try:
                self._client.apply(doc)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):  # the store may be recovering
                if cond():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"chaos: timed out after {timeout}s waiting for {what}")
            time.sleep(0.2)

    # -- the double-run sampler ------------------------------------------------------------
    def _sample(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(SAMPLE_EVERY):
            on: dict[str, set[str]] = defaultdict(set)
            for _pid, tid, host in task_processes(self.hosts):
                on[tid].add(host)
            now = time.monotonic()
            twice = [tid for tid, hosts in on.items() if len(hosts) > 1]
            down = {p.name for p in self.agents if not p.running}
            self.double_task_s += len(twice) * (now - last)
            # the part an agent can bound: both copies' agents run (the stale one
            # restarted and has yet to withdraw its copy)
            self.double_up_task_s += (now - last) * sum(
                1 for tid in twice if not on[tid] & down)
            self.double_max = max(self.double_max, len(twice))
            self.doubled.update(twice)
            self.samples += 1
            last = now
            self._episodes(on, twice, now)
            with self._lock:
                self._last_on = on
                for host, (since, stale, wall) in list(self._withdrawing.items()):
                    if not any(host in on[tid] and len(on[tid]) > 1 for tid in stale):
                        del self._withdrawing[host]
                        self.withdrawals.append({
                            "host": host, "stale": len(stale),
                            "seconds": round(now - since, 2),
                            "restarted_at": wall, "gone_at": time.time()})

    def _episodes(self, on: dict[str, set[str]], twice: list[str], now: float) -> None:
        """Track each stretch of a task live on two hosts; when it ends, note how long it
        lasted and whether the agent of the copy that went had run throughout (then that
        agent, not an outage, bounded the stretch)."""
        agents = {p.name: p for p in self.agents}
        for tid in twice:
            if tid not in self._open:
                self._open[tid] = (now, set(on[tid]),
                                   {h: agents[h].started if agents[h].running else None
                                    for h in on[tid]})
        for tid in [t for t in self._open if t not in twice]:
            began, hosts, started = self._open.pop(tid)
            gone = hosts - on.get(tid, set())
            throughout = bool(gone) and all(
                started[h] is not None and agents[h].running
                and agents[h].started == started[h] for h in gone)
            self.episodes.append((now - began, throughout))

    # -- faults ----------------------------------------------------------------------------
    def _later(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.pending, (time.monotonic() + delay, next(self._seq), action))

    def _run_due(self, everything: bool = False) -> None:
        while self.pending and (everything or self.pending[0][0] <= time.monotonic()):
            _, _, action = heapq.heappop(self.pending)
            action()

    def _restart(self, p: _Proc) -> Callable[[], None]:
        def go() -> None:
            if not p.running:
                p.start()
        return go

    def _restart_late(self, p: _Proc) -> Callable[[], None]:
        """Restart an agent after its lease expired; the sampler times how long its
        stale copies (tasks that now also run elsewhere) take to go."""
        def go() -> None:
            if p.running:
                return
            p.start()
            with self._lock:
                stale = {tid for tid, on in self._last_on.items()
                         if p.name in on and len(on) > 1}
                if stale:
                    self._withdrawing[p.name] = (time.monotonic(), stale, time.time())
        return go

    def _kill(self, p: _Proc) -> None:
        p.kill()
        p.down_by_us = True
        with self._lock:  # killed again before it withdrew everything: no figure
            self._withdrawing.pop(p.name, None)

    def _after_lease(self, p: _Proc, delay: float, action: Callable[[], None],
                     give_up_at: float) -> Callable[[], None]:
        """Run ``action`` ``delay`` s after ``p``'s host record is gone (or after
        ``give_up_at``); checked every second."""
        def go() -> None:
            try:
                gone = p.name not in {h.name for h in self._client.hosts()}
            except Exception:  # the store is between leaders: look again
                gone = False
            if gone or time.monotonic() > give_up_at:
                self._later(delay, action)
            else:
                self._later(1.0, go)
        return go

    def _restart_host(self, p: _Proc, late: bool) -> Callable[[], None]:
        """Restart a host killed whole: its Consul agent first, then the skedlib agent."""
        agent = (self._restart_late if late else self._restart)(p)

        def go() -> None:
            consul = self.consul_agents[p.name]
            if not consul.running:
                consul.start()
            agent()
        return go

    def _etcd_busy(self) -> bool:
        # one etcd fault at a time: two would take the quorum away for as long as they last
        return any(not m.running or m.paused for m in self.cluster.members)

    def _fault(self) -> None:
        up_sched = [p for p in self.schedulers if p.running]
        up_agents = [p for p in self.agents if p.running]
        kinds: list[tuple[str, float]] = [("scale", 1.5)]
        if up_sched:
            kinds.append(("scheduler_kill", 2.0))
        if len(up_agents) > len(self.agents) - 2:  # two hosts hold every task
            kinds += [("agent_kill_early_restart", 0.75), ("agent_kill_late_restart", 0.75),
                      ("agent_and_tasks_kill_early_restart", 0.5),
                      ("agent_and_tasks_kill_late_restart", 0.5)]
            if self.consul:
                kinds += [("host_kill_early_restart", 0.5), ("host_kill_late_restart", 0.5)]
        if self.etcd and not self._etcd_busy():
            kinds += [("etcd_leader_kill", 1.0), ("etcd_member_stop_cont", 1.0)]
        # one server down at a time: two would take the quorum away
        if self.consul and all(m.running for m in self.cluster.members):
            kinds += [("consul_leader_kill", 1.0)]
        # every kind once first (in a seeded order), so that a short run covers them all
        kind = next((k for k in self._deck if k in dict(kinds)), "")
        if kind:
            self._deck.remove(kind)
        else:
            kind = self.rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
        target = ""
        if kind == "scale":
            service = self.rng.choice(SERVICES)
            full = self.full[service]
            new = self.rng.randint(full // 2, full)
            if new == self.desired[service]:
                new = full if new != full else full // 2
            kind = "scale_up" if new > self.desired[service] else "scale_down"
            self.desired[service] = new
            target = f"{service}={new}"
            self._apply()
        elif kind == "scheduler_kill":
            p = self.rng.choice(up_sched)
            target = p.name
            self._kill(p)
            self._later(self.rng.uniform(0.2, 3.0), self._restart(p))
        elif kind.startswith(("agent_", "host_")):
            p = self.rng.choice(up_agents)
            target = p.name
            self._kill(p)
            if kind.startswith(("agent_and_tasks_", "host_")):
                for pid, _tid, _host in task_processes({p.name}):
                    _kill_group(pid)
            if kind.startswith("host_"):
                self.consul_agents[p.name].kill()
            late = kind.endswith("_late_restart")
            ttl = self.lease_ttl
            # early: well within the lease (at most 1.5 s: Consul's lease is 20 s)
            delay = ttl + self.rng.uniform(2, 6) if late else \
                self.rng.uniform(0.3, min(ttl / 2, 1.5))
            if kind.startswith("host_"):
                action = self._restart_host(p, late)
            else:
                action = (self._restart_late if late else self._restart)(p)
            if late and self.consul:
                # a Consul leader election restarts every session's TTL, so a dead agent's
                # lease may outlive its TTL: restart 2 to 6 s after its host record is gone
                self._later(ttl, self._after_lease(p, delay - ttl, action,
                                                   time.monotonic() + 2 * ttl))
            else:
                self._later(delay, action)
        elif kind == "etcd_leader_kill":
            try:
                m = self.cluster.leader(timeout=3)
            except Exception:  # no leader agreed right now (an election): no fault
                return
            target = m.name
            m.kill()
            self._later(self.rng.uniform(1.0, 3.0), m.start)
        elif kind == "etcd_member_stop_cont":
            m = self.rng.choice(self.cluster.members)
            target = m.name
            m.pause()
            self._later(self.rng.uniform(1.0, 3.0), m.resume)
        elif kind == "consul_leader_kill":
            try:
                m = self.cluster.leader(timeout=3)
            except Exception:  # no leader agreed right now (an election): no fault
                return
            target = m.name
            m.kill()
            self._later(self.rng.uniform(1.0, 3.0), m.start)
        self.faults[kind] += 1
        self.timeline.append((round(time.monotonic() - self._t0, 1), kind, target))

    def _note_crashes(self) -> None:
        for p in self.schedulers + self.agents:
            if not p.running and not p.down_by_us and p.proc is not None:
                p.unexpected_exits += 1
                p.down_by_us = True  # counted once; started again at the heal

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Inject faults for ``duration`` s, heal, wait for convergence, check; the report."""
        cfg = self.config
        self._sampler = threading.Thread(target=self._sample, name="chaos-sampler",
                                         daemon=True)
        self._sampler.start()
        began = self._t0 = time.monotonic()
        end = began + cfg.duration
        next_fault = began + self.rng.uniform(*cfg.fault_gap)
        while time.monotonic() < end:
            self._run_due()
            self._note_crashes()
            if time.monotonic() >= next_fault:
                self._fault()
                next_fault = time.monotonic() + self.rng.uniform(*cfg.fault_gap)
            time.sleep(0.05)
        self._run_due(everything=True)
        self._note_crashes()
        for a in self.consul_agents.values():  # before the skedlib agents: they use them
            if not a.running:
                a.start()
        for p in self.schedulers + self.agents:
            self._restart(p)()
        if self.etcd or self.consul:
            self.cluster.heal(60)
        healed = time.monotonic()
        results: dict[str, dict[str, Any]] = {}
        converged: float | None = None
        flaps: list[dict[str, Any]] = []  # held, then broke again: what broke
        # converged means stable: the invariants hold on every check for longer than a
        # lease (a killed agent's record lives on until its lease expires, and what the
        # scheduler does then must be seen); the time reported is when that stretch began
        settle = self.lease_ttl + 5.0
        held_since: float | None = None
        catalog_since: float | None = None
        deadline = healed + cfg.converge_timeout
        while time.monotonic() < deadline:
            now = time.monotonic()
            try:
                results = check_invariants(self._client, self.desired, self.hosts,
                                           self.capacity)
            except Exception as exc:  # the store answered badly: not converged yet
                results = {"store": {"ok": False, "detail": [repr(exc)], "count": 1}}
            if self.consul:  # when the catalog caught up, too
                ok = self._catalog_verdict()["ok"]
                catalog_since = (catalog_since or now) if ok else None
            if all(r["ok"] for r in results.values()):
                held_since = now if held_since is None else held_since
                if now - held_since >= settle:
                    converged = held_since - healed
                    break
            elif held_since is not None:
                held_since = None
                flaps.append({"at_s": round(now - healed, 1), "broken": {
                    k: {"count": r["count"], "detail": r["detail"][:3]}
                    for k, r in results.items() if not r["ok"]}})
            time.sleep(1.0)
        catalog = self._catalog_convergence(healed, converged, catalog_since) \
            if self.consul else None
        if catalog is not None:
            results["catalog_follows_issued"] = catalog.pop("verdict")
        self._stop.set()
        self._sampler.join(10)
        self._note_crashes()
        withdrawals = self._withdrawal_figures()
        return {
            "backend": cfg.backend,
            "seed": cfg.seed,
            "duration_s": cfg.duration,
            "tasks_full_scale": cfg.tasks,
            "tasks_desired_at_end": sum(self.desired.values()),
            "schedulers": len(self.schedulers),
            "agents": len(self.agents),
            "faults": dict(sorted(self.faults.items())),
            "faults_total": sum(self.faults.values()),
            "unexpected_exits": {p.name: p.unexpected_exits
                                 for p in self.schedulers + self.agents if p.unexpected_exits},
            "converged": converged is not None,
            "convergence_s": None if converged is None else round(converged, 2),
            "settle_s": settle,
            "held_then_broke": flaps,
            "double_run": {"task_seconds": round(self.double_task_s, 2),
                           "task_seconds_both_agents_running":
                               round(self.double_up_task_s, 2),
                           "max_tasks_at_once": self.double_max,
                           "tasks": len(self.doubled), "samples": self.samples,
                           "stretches": len(self.episodes),
                           "stretches_stale_agent_running": _spread(
                               [d for d, throughout in self.episodes if throughout]),
                           "stretches_stale_agent_down_or_restarted": _spread(
                               [d for d, throughout in self.episodes if not throughout]),
                           "late_restart_withdrawals": withdrawals,
                           "late_restart_withdrawal_max_s": max(
                               (w["seconds"] for w in withdrawals), default=None),
                           "late_restart_withdrawal_after_agent_started_max_s": max(
                               (w["after_agent_started_s"] for w in withdrawals
                                if w["after_agent_started_s"] is not None), default=None),
                           "sample_every_s": SAMPLE_EVERY},
            "catalog": catalog,
            "invariants": results,
            "ok": converged is not None and all(r["ok"] for r in results.values()),
            "timeline": self.timeline,
            "workdir": str(self.dir) if cfg.keep else None,
        }

    def _catalog_verdict(self) -> dict[str, Any]:
        try:
            server = next(m for m in self.cluster.members if m.running)
            return check_catalog(self._client, server, self.hosts)
        except Exception as exc:  # a server answered badly: not converged yet
            return {"ok": False, "detail": [repr(exc)], "count": 1}

    def _catalog_convergence(self, healed: float, converged: float | None,
                             held: float | None) -> dict[str, Any]:
        """Wait (up to :func:`catalog_bound` + :data:`CATALOG_MARGIN` after the store's
        invariants began to hold, or after the heal) until the catalog holds exactly the
        issued tasks on two checks in a row; its figures and the last verdict. ``held``:
        since when the catalog has held already (checked while the store converged)."""
        since = healed + (converged or 0.0)
        bound = catalog_bound()
        deadline = since + bound + CATALOG_MARGIN
        verdict: dict[str, Any] = {}
        while True:
            now = time.monotonic()
            verdict = self._catalog_verdict()
            if verdict["ok"]:
                if held is not None:
                    break
                held = now
            else:
                held = None
            if now > deadline:
                break
            time.sleep(1.0)
        return {"verdict": verdict, "bound_s": bound, "waited_up_to_s": bound + CATALOG_MARGIN,
                "convergence_after_heal_s": None if held is None else round(held - healed, 2),
                "after_store_converged_s":
                    None if held is None or converged is None
                    else round(max(0.0, held - since), 2)}

    def _withdrawal_figures(self) -> list[dict[str, Any]]:
        """The late restarts' withdrawals, with the part after the agent was up: from
        its ``starting:`` log line (Python start-up on a loaded machine takes seconds)."""
        out = []
        for w in self.withdrawals:
            ready = _logged_after(self.dir / f"{w['host']}.log", " starting: ",
                                  w["restarted_at"])
            out.append({"host": w["host"], "stale": w["stale"], "seconds": w["seconds"],
                        "after_agent_started_s": None if ready is None else
                        round(max(0.0, w["gone_at"] - ready), 2)})
        return out

    def logs(self, lines: int = 40) -> str:
        """The end of every scheduler's and agent's log, for a failure message."""
        return "\n".join(f"--- {p.name}\n{p.log_tail(lines)}"
                         for p in self.schedulers + self.agents)

    # -- tearing down ----------------------------------------------------------------------
    def stop(self) -> None:
        """:meth:`close` (the name :func:`stop_at_exit` calls)."""
        self.close()

    def close(self) -> None:
        """Kill every process of the run, task processes included; stop etcd; remove the
        working directory (unless ``keep``). Idempotent."""
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(10)
        for p in self.schedulers + self.agents:  # agents first gone: none starts a task
            if p.running:
                _kill_group(p.pid)
            p.kill()
        deadline = time.monotonic() + 20
        while (left := task_processes(self.hosts)) and time.monotonic() < deadline:
            for pid, _tid, _host in left:
                _kill_group(pid)
            time.sleep(0.1)
        remove_task_cgroups(self.hosts)  # a task's cgroups outlive its agent by design
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.backend.close()
            self.client = None
        for a in self.consul_agents.values():
            a.stop()
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None
        forget_at_exit(self)
        if not self.config.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
