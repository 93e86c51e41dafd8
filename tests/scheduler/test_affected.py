"""Which (cluster, service) pairs a change affects: what the daemon plans again."""

from __future__ import annotations

import msgspec

from skedlib.keys import AgentKey, ClusterKey, HealthKey, ServiceKey, TaskKey
from skedlib.models import (
    Cluster,
    Container,
    Host,
    Resources,
    Service,
    Task,
    TaskDefinition,
    TaskHealth,
)
from skedlib.scheduler.affected import affected_pairs, all_pairs
from skedlib.scheduling import Change, Snapshot

WEB = Service(name="web", task_name="web", task_version=1, desired=1)
DB = Service(name="db", task_name="web", task_version=1, desired=1)
PROD = Cluster(name="prod", services=["web", "db"], hosts=["h1"])
DEV = Cluster(name="dev", services=["web"])
TD = TaskDefinition(name="web", version=1, memory=10, cpu_units=1,
                    containers=[Container(name="x", type="process")])
TASK = Task(cluster=PROD, task_definition=TD, service="web", instance=0, host="h1")
H1 = Host(name="h1", total=Resources(memory=100, cpu_units=10))


def _snap(*tasks: Task, hosts: tuple[Host, ...] = (H1,)) -> Snapshot:
    return Snapshot(1, clusters=[PROD, DEV], services=[WEB, DB], task_definitions=[TD],
                    hosts=hosts, tasks=[(t, 1) for t in tasks])


def test_every_wanted_pair_and_every_pair_with_tasks() -> None:
    orphan = msgspec.structs.replace(TASK, cluster=Cluster(name="old"))
    assert all_pairs(_snap(orphan)) == {("prod", "web"), ("prod", "db"), ("dev", "web"),
                                        ("old", "web")}


def test_a_host_that_joins_or_changes_affects_the_clusters_that_may_use_it() -> None:
    h2 = Host(name="h2", total=Resources(memory=100, cpu_units=10))
    snap = _snap(hosts=(H1, h2))
    assert affected_pairs(snap, Change(AgentKey("h2"), None, h2), set()) == {("dev", "web")}
    drained = msgspec.structs.replace(H1, draining=True)
    assert affected_pairs(snap, Change(AgentKey("h1"), H1, drained), set()) == {
        ("prod", "web"), ("prod", "db"), ("dev", "web")}
    ports = msgspec.structs.replace(H1, ports=[8080])  # nothing placement looks at
    assert affected_pairs(snap, Change(AgentKey("h1"), H1, ports), set()) == set()
    assert affected_pairs(snap, Change(AgentKey("h1"), H1, ports),
                          {("prod", "db"), ("other", "x")}) == {("prod", "db")}


def test_a_host_that_left_affects_its_tasks() -> None:
    snap = _snap(msgspec.structs.replace(TASK, cluster=DEV), hosts=())
    assert affected_pairs(snap, Change(AgentKey("h1"), H1, None), set()) == {
        ("prod", "web"), ("prod", "db"), ("dev", "web")}


def test_tasks_rejected_gone_unreadable_or_unwanted() -> None:
    snap = _snap(TASK)
    assert affected_pairs(snap, Change(TaskKey(TASK.id), None, TASK), set()) == set()
    rejected = msgspec.structs.replace(TASK, rejected=True)
    assert affected_pairs(_snap(rejected), Change(TaskKey(TASK.id), TASK, rejected),
                          set()) == {("prod", "web")}
    assert affected_pairs(_snap(rejected), Change(TaskKey(TASK.id), rejected, rejected),
                          set()) == set()  # not newly rejected
    assert affected_pairs(_snap(TASK, hosts=()), Change(TaskKey(TASK.id), None, TASK),
                          set()) == {("prod", "web")}  # its host is gone
    assert affected_pairs(_snap(), Change(TaskKey(TASK.id), TASK, None),
                          {("prod", "db")}) == {("prod", "web"), ("prod", "db")}
    assert affected_pairs(_snap(), Change(TaskKey("dev-api-3-0"), None, None, bad=True),
                          set()) == {("dev", "api")}
    unwanted = msgspec.structs.replace(TASK, service="api")
    assert affected_pairs(_snap(unwanted), Change(TaskKey(unwanted.id), None, unwanted),
                          set()) == {("prod", "api")}


def test_desired_state_and_health() -> None:
    snap = _snap(TASK)
    assert affected_pairs(snap, Change(ClusterKey("dev"), DEV, DEV), set()) == set()
    bigger = msgspec.structs.replace(DEV, services=["db"])
    assert affected_pairs(snap, Change(ClusterKey("dev"), DEV, bigger), set()) == {
        ("dev", "web"), ("dev", "db")}
    scaled = msgspec.structs.replace(WEB, desired=3)
    assert affected_pairs(snap, Change(ServiceKey("web"), WEB, scaled), set()) == {
        ("prod", "web"), ("dev", "web")}
    up = TaskHealth(task_id=TASK.id, host="h1", healthy=True)
    down = msgspec.structs.replace(up, healthy=False, message="check failed")
    assert affected_pairs(snap, Change(HealthKey(TASK.id), None, up), set()) == {
        ("prod", "web")}
    assert affected_pairs(snap, Change(HealthKey(TASK.id), up, down), set()) == {
        ("prod", "web")}
    assert affected_pairs(snap, Change(HealthKey(TASK.id), down, down), set()) == set()
