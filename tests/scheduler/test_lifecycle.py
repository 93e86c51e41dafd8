"""Service lifecycle end to end, with real agents and task processes, on SQLite and on a
3-member etcd cluster: rolling update, bad build (halt, auto_revert), host failure and
return, drain.

A :class:`Monitor` samples the store and the machine's processes all along each
scenario, and the invariants are asserted over every sample, not only at the end:

- never fewer than ``min`` healthy tasks (health reported healthy, by the host the task
  is issued to, that host alive);
- never more than ``max`` tasks issued to live hosts;
- no task id running on two hosts at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from skedlib.codecs import decode
from skedlib.models import RolloutHistory, Service
from tests.scheduler.conftest import PY, Loop, web_manifest

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.integration)])
def loop(request: pytest.FixtureRequest) -> Loop:
    fixture: Loop = request.getfixturevalue(f"{request.param}_loop")
    return fixture


def manifest(version: int, *, desired: int, min_: int, max_: int, parallel: int = 1,
             min_healthy: str = "500ms", deadline: str = "60s", auto_revert: bool = False,
             good: bool = True, memory: int = 100) -> str:
    """Service ``web``: an HTTP server with a fast check (``good``), or a process that
    runs but never passes its check."""
    extra = (f"    min: {min_}\n    max: {max_}\n"
             f"    update: {{max_parallel: {parallel}, min_healthy_time: {min_healthy}, "
             f"deadline: {deadline}, auto_revert: {str(auto_revert).lower()}}}")
    return web_manifest("web", desired, memory=memory, version=version, extra=extra,
                        argv=None if good else f"[{PY}, -c, 'import time; time.sleep(600)']")


class Monitor:
    """Samples the store and the task processes until stopped; keeps what it saw."""

    def __init__(self, loop: Loop, service: str = "web") -> None:
        self.loop = loop
        self.service = service
        self.samples: list[dict[str, Any]] = []
        self.duplicates: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._store, daemon=True),
                         threading.Thread(target=self._procs, daemon=True)]

    def __enter__(self) -> Monitor:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _store(self) -> None:
        client = self.loop.client
        while not self._stop.wait(0.05):
            try:
                live = {h.name for h in client.hosts()}
                tasks = [t for t in client.tasks() if t.service == self.service]
                health = client.health()
            except Exception as exc:  # the store may be briefly unavailable
                self.errors.append(str(exc))
                continue
            issued = [t for t in tasks if not t.rejected and t.host in live]
            healthy = [t for t in issued if (h := health.get(t.id)) is not None
                       and h.healthy and h.host == t.host]
            self.samples.append({"t": time.monotonic(), "issued": len(issued),
                                 "healthy": len(healthy),
                                 "versions": sorted(t.task_definition.version
                                                    for t in issued)})

    def _procs(self) -> None:
        while not self._stop.wait(0.2):
            hosts: dict[str, set[str]] = defaultdict(set)
            for p in psutil.process_iter():
                with contextlib.suppress(psutil.Error):
                    env = p.environ()
                    if env.get("SKED_HOST") in self.loop.hosts and \
                            p.status() != psutil.STATUS_ZOMBIE:
                        hosts[env.get("SKED_TASK_ID", "")].add(env["SKED_HOST"])
            for task_id, on in hosts.items():
                if len(on) > 1:
                    self.duplicates.append(f"{task_id} running on {sorted(on)}")

    def check(self, *, min_healthy: int, max_issued: int) -> None:
        assert self.samples, "the monitor took no samples"
        low = min(s["healthy"] for s in self.samples)
        high = max(s["issued"] for s in self.samples)
        assert low >= min_healthy, f"healthy tasks fell to {low} (min {min_healthy}): " + \
            str([s for s in self.samples if s["healthy"] < min_healthy][:3])
        assert high <= max_issued, f"{high} tasks issued (max {max_issued})"
        assert not self.duplicates, self.duplicates[:5]


def _rollout(loop: Loop) -> RolloutHistory | None:
    kv = loop.backend.get(loop.keys.rollout("default", "web"))
    return decode(kv.value, RolloutHistory) if kv else None


def _service(loop: Loop) -> Service:
    s = loop.client.service("web")
    assert s is not None
    return s


def _kill_host(loop: Loop, proc: Any, host: str) -> None:
    """A host dies: its agent and every task process it ran, all at once (kill -9)."""
    os.killpg(proc.pid, signal.SIGKILL)
    for p in loop.processes():
        with contextlib.suppress(psutil.Error, OSError):
            if p.environ().get("SKED_HOST") == host:
                p.kill()
    proc.wait(10)


@contextlib.contextmanager
def _cluster(loop: Loop, agents: int, memory: int = 512) -> Iterator[list[Any]]:
    procs = [loop.start_agent(i + 1, memory=memory) for i in range(agents)]
    loop.start_scheduler("scheduler", "--workers", "2")
    yield procs


def test_rolling_update(loop: Loop) -> None:
    with _cluster(loop, 3):
        loop.apply(manifest(1, desired=4, min_=3, max_=5, parallel=2))
        loop.wait_healthy("web", 4)
        with Monitor(loop) as mon:
            t0 = time.monotonic()
            loop.apply(manifest(2, desired=4, min_=3, max_=5, parallel=2))
            loop.wait(lambda: (h := _rollout(loop)) and h.current and
                     h.current.state == "succeeded", 60, "the rollout to succeed")
            took = time.monotonic() - t0
            tasks = loop.wait_healthy("web", 4)
        assert {t.task_definition.version for t in tasks} == {2}
        mon.check(min_healthy=3, max_issued=5)
        history = _rollout(loop)
        assert history is not None and [(r.from_version, r.to_version, r.state)
                                        for r in history.rollouts] == [(1, 2, "succeeded")]
        assert loop.wait(lambda: (s := loop.status("web")) and s.state == "ok" and s, 20,
                        "status ok").task_version == 2
        print(f"\n[lifecycle] rolled 4 tasks to version 2 in {took:.1f}s "
              f"(max_parallel 2, min_healthy_time 0.5s), healthy never below "
              f"{min(s['healthy'] for s in mon.samples)}")


def test_bad_build_halts_then_auto_reverts(loop: Loop) -> None:
    with _cluster(loop, 3):
        loop.apply(manifest(1, desired=3, min_=2, max_=4, deadline="5s"))
        loop.wait_healthy("web", 3)
        with Monitor(loop) as mon:
            loop.apply(manifest(2, desired=3, min_=2, max_=4, deadline="5s",
                                auto_revert=True, good=False))
            history = loop.wait(lambda: (h := _rollout(loop)) and h.rollouts[0].state ==
                               "failed" and h, 30, "the rollout to fail")
            failed = history.rollouts[0]
            assert "deadline of 5s passed with 0/3 tasks of version 2 healthy" in \
                failed.message, failed.message
            assert failed.reverted_to == 1
            loop.wait(lambda: _service(loop).task_version == 1, 10, "the service reverted")
            tasks = loop.wait_healthy("web", 3)
        assert {t.task_definition.version for t in tasks} == {1}
        mon.check(min_healthy=2, max_issued=4)
        assert max(s["versions"].count(2) for s in mon.samples) <= 1, \
            "a bad build went past max_parallel 1"


def test_bad_build_without_auto_revert_stays_halted(sqlite_loop: Loop) -> None:
    loop = sqlite_loop
    with _cluster(loop, 2):
        loop.apply(manifest(1, desired=2, min_=1, max_=3, deadline="4s"))
        loop.wait_healthy("web", 2)
        with Monitor(loop) as mon:
            loop.apply(manifest(2, desired=2, min_=1, max_=3, deadline="4s", good=False))
            status = loop.wait(lambda: (s := loop.status("web")) and s.state == "error" and s,
                              30, "the status to report the failed rollout")
            assert status.message.startswith("rollout to version 2 failed: deadline of 4s")
            time.sleep(2)  # halted: nothing more happens
        mon.check(min_healthy=1, max_issued=3)
        assert _service(loop).task_version == 2
        assert [t.task_definition.version for t in loop.healthy("web")] == [1, 1]
        code, out = loop.sked("get", "services")
        assert code == 0 and "rollout to version 2 failed" in out


def test_host_failure_and_return(loop: Loop) -> None:
    with _cluster(loop, 3) as procs:
        loop.apply(manifest(1, desired=4, min_=0, max_=4))
        tasks = loop.wait_healthy("web", 4)
        victim_host = tasks[0].host
        victim = procs[loop.hosts.index(victim_host)]
        lost = {t.id for t in tasks if t.host == victim_host}
        with Monitor(loop) as mon:
            t0 = time.monotonic()
            _kill_host(loop, victim, victim_host)
            moved = loop.wait(lambda: (h := loop.healthy("web")) and len(h) == 4 and
                             all(t.host != victim_host for t in h) and h, 30,
                             "every task healthy off the dead host")
            took = time.monotonic() - t0
            # the host comes back with its old state directory: it runs nothing stale
            n = int(victim_host[1:victim_host.index("x")])
            loop.hosts.remove(victim_host)
            loop.start_agent(n, memory=512)
            time.sleep(3)
        assert {t.id for t in moved} >= lost
        mon.check(min_healthy=0, max_issued=4)
        stale = [p for p in loop.processes()
                 if p.environ().get("SKED_HOST") == victim_host]
        assert not stale, "the returning host restarted tasks that moved away"
        print(f"\n[lifecycle] {len(lost)} task(s) of a killed host healthy elsewhere after "
              f"{took:.1f}s (lease TTL 2s; target TTL + 3s)")


def test_drain_moves_tasks_respecting_min(loop: Loop) -> None:
    with _cluster(loop, 2):
        loop.apply(manifest(1, desired=4, min_=3, max_=4, parallel=1))
        tasks = loop.wait_healthy("web", 4)
        busy = max({t.host for t in tasks}, key=lambda h: sum(t.host == h for t in tasks))
        with Monitor(loop) as mon:
            code, out = loop.sked("drain", busy)
            assert code == 0, out
            loop.wait(lambda: (h := loop.healthy("web")) and len(h) == 4 and
                     all(t.host != busy for t in h), 60, f"every task moved off {busy}")
        mon.check(min_healthy=3, max_issued=4)
        assert loop.sked("undrain", busy)[0] == 0
        assert loop.client.host_config(busy).draining is False  # type: ignore[union-attr]
