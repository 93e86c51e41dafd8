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


def test_a_service_keeps_its_tasks_by_instance_through_rewrites_and_removals() -> None:
    tasks = [msgspec.structs.replace(TASK, instance=i, host=f"h{1 + i % 2}")
             for i in (3, 0, 2, 1)]
    other = msgspec.structs.replace(TASK, service="t", instance=0)
    snap = Snapshot(1, hosts=HOSTS, tasks=[(t, 1) for t in [*tasks, other]])
    assert [t.instance for t in snap.service_tasks("c", "s")] == [0, 1, 2, 3]
    # an agent's rewrite of one record: the new record in the same place, once
    rewritten = msgspec.structs.replace(tasks[2], scheduled=True)
    snap.put_task(rewritten, 2)
    assert snap.service_tasks("c", "s")[2] is rewritten
    assert [t.instance for t in snap.service_tasks("c", "s")] == [0, 1, 2, 3]
    # removing one leaves the others, and the other service, as they were
    snap.remove_task(tasks[1].id)
    assert [t.instance for t in snap.service_tasks("c", "s")] == [1, 2, 3]
    assert snap.service_tasks("c", "t") == [other]
    # by id: the same records, and a dict of the caller's own
    by_id = snap.service_tasks_by_id("c", "s")
    assert by_id == {t.id: t for t in snap.service_tasks("c", "s")}
    assert by_id[rewritten.id] is rewritten
    by_id.clear()
    assert len(snap.service_tasks_by_id("c", "s")) == 3
    assert snap.service_tasks_by_id("c", "nothing") == {}
    for t in (tasks[3], rewritten, tasks[0]):
        snap.remove_task(t.id)
    assert snap.service_tasks("c", "s") == []
    assert snap.service_tasks("c", "t") == [other]
    assert [t.id for t in snap.tasks_on("h1")] == [other.id]
