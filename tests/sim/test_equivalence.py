"""The simulator places as the real scheduler daemon does: the same arrivals, departures
and host failures fed to a SchedulerDaemon in-process over a memory:// store end with
the same task → host map, event after event."""

from __future__ import annotations

import uuid

import pytest

from skedlib.client import Client
from skedlib.codecs import encode
from skedlib.models import Cluster, Resources
from skedlib.scheduler.daemon import SchedulerDaemon
from skedlib.sim import Batch, HostEvent, Simulator
from skedlib.sim.engine import CLUSTER
from skedlib.store.base import Delete, Put
from tests.scheduler.conftest import wait_for

HOST = Resources(memory=1000, cpu_units=1000)

TRACE = [
    Batch(t=0, service="a", count=3, memory=300, cpu=100, duration=50),
    Batch(t=1, service="b", count=4, memory=200, cpu=300, duration=500),
    Batch(t=2, service="c", count=2, memory=600, cpu=100, duration=30),
    Batch(t=3, service="d", count=5, memory=400, cpu=200, duration=400),  # waits for room
    HostEvent(t=10, host=1, event="fail"),  # its tasks are placed again elsewhere
    Batch(t=20, service="e", count=2, memory=100, cpu=100, duration=300),
    HostEvent(t=40, host=1, event="recover"),
    Batch(t=45, service="f", count=6, memory=250, cpu=250, duration=100),
    HostEvent(t=60, host=3, event="fail"),
]


def _where(client: Client) -> dict[str, str]:
    return {t.id: t.host for t in client.tasks()}


@pytest.mark.parametrize("scheduler", ["binpack", "spread"])
def test_simulator_places_as_the_daemon_does(scheduler: str) -> None:
    sim = Simulator(TRACE, hosts=4, host=HOST, scheduler=scheduler, samples=0)
    keys = sim.keys
    with Client.open(f"memory://{uuid.uuid4().hex}") as client:
        store = client.store
        for name in sim.host_names:
            kv = sim.store.get(keys.agent(name))
            assert kv is not None
            store.txn([], [Put(keys.agent(name), kv.value)])
        services: list[str] = []
        daemon = SchedulerDaemon(store, workers=1, lock_ttl=1.0, resync=600)
        daemon.start()
        try:
            assert daemon.wait_ready(10)
            steps = 0
            while (ev := sim.step()) is not None:
                if ev.kind == "arrive":
                    svc = sim.store.get(keys.service(ev.service))
                    td = sim.store.get(keys.task_definition(ev.service, 1))
                    assert svc is not None and td is not None
                    services.append(ev.service)
                    store.txn([], [Put(keys.task_definition(ev.service, 1), td.value),
                                   Put(keys.service(ev.service), svc.value),
                                   Put(keys.cluster(CLUSTER), encode(Cluster(
                                       name=CLUSTER, services=list(services))))])
                elif ev.kind == "depart":
                    services.remove(ev.service)
                    store.txn([], [Put(keys.cluster(CLUSTER), encode(Cluster(
                        name=CLUSTER, services=list(services)))),
                        Delete(keys.service(ev.service))])
                elif ev.kind == "fail":
                    store.txn([], [Delete(keys.agent(ev.host))])
                elif ev.kind == "recover":
                    kv = sim.store.get(keys.agent(ev.host))
                    assert kv is not None
                    store.txn([], [Put(keys.agent(ev.host), kv.value)])
                else:
                    continue
                steps += 1
                expected = sim.placements()
                wait_for(lambda expected=expected: _where(client) == expected, 20,
                         f"the daemon's placements after {ev} to be the simulator's "
                         f"{expected} (now {_where(client)})")
        finally:
            daemon.stop()
    sim.finish(0.0)
    stats = sim.stats
    # the trace did what it is meant to: contention, moves after a failure, departures
    assert steps >= 15
    assert stats.moves > 0
    assert max(stats.pending_times) > 0
