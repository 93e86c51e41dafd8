"""The one health rule: Snapshot.is_healthy and is_task_healthy."""

from __future__ import annotations

import msgspec
import pytest

from skedlib.models import Cluster, Container, Host, Resources, Task, TaskDefinition, TaskHealth
from skedlib.scheduling import Snapshot, is_task_healthy

CLUSTER = Cluster(name="c", services=["s"])
TD = TaskDefinition(name="s", version=1, memory=10, cpu_units=1,
                    containers=[Container(name="x", type="process")])
TASK = Task(cluster=CLUSTER, task_definition=TD, service="s", instance=0, host="h1")
HOSTS = [Host(name=n, total=Resources(memory=100, cpu_units=10)) for n in ("h1", "h2")]


def _snap(task: Task, health: TaskHealth | None, hosts: list[Host] = HOSTS) -> Snapshot:
    return Snapshot(1, hosts=hosts, tasks=[(task, 1)],
                    health=[health] if health is not None else [])


@pytest.mark.parametrize(("task", "health", "hosts", "healthy"), [
    (TASK, TaskHealth(task_id=TASK.id, host="h1", healthy=True), HOSTS, True),
    (TASK, TaskHealth(task_id=TASK.id, host="", healthy=True), HOSTS, True),  # no host
    (TASK, TaskHealth(task_id=TASK.id, host="h1", healthy=False), HOSTS, False),
    (TASK, None, HOSTS, False),  # not started yet
    (TASK, TaskHealth(task_id=TASK.id, host="h2", healthy=True), HOSTS, False),  # moved
    (TASK, TaskHealth(task_id=TASK.id, host="h1", healthy=True), HOSTS[1:], False),  # gone
    (msgspec.structs.replace(TASK, rejected=True),
     TaskHealth(task_id=TASK.id, host="h1", healthy=True), HOSTS, False),
], ids=["healthy", "record-without-host", "unhealthy", "no-record", "other-host",
        "host-gone", "rejected"])
def test_healthy_means_reported_healthy_on_its_current_live_host(
        task: Task, health: TaskHealth | None, hosts: list[Host], healthy: bool) -> None:
    snap = _snap(task, health, hosts)
    assert snap.is_healthy(task.id) is healthy
    assert is_task_healthy(task, health, {h.name for h in hosts}) is healthy


def test_a_task_the_snapshot_does_not_hold_is_not_healthy() -> None:
    snap = Snapshot(1, hosts=HOSTS, health=[TaskHealth(task_id=TASK.id, host="h1",
                                                       healthy=True)])
    assert not snap.is_healthy(TASK.id)
