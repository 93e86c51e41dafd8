"""A host that rejected a task for want of room is avoided for it only for a while: until
a backoff passes or the host has more free; a rejection for good stays."""

from __future__ import annotations

import json
import time

import msgspec
import pytest
from skedlib_reference import BinpackScheduler

from skedlib.agent.operations import capacity_rejected
from skedlib.codecs import decode
from skedlib.models import (
    CapacityRejection,
    Cluster,
    Container,
    Host,
    Resources,
    Service,
    Task,
    TaskDefinition,
)
from skedlib.runtime import Backoff
from skedlib.scheduling.framework import (
    CAPACITY_BACKOFF,
    NotRejectedBefore,
    TaskRequest,
    capacity_rejection_holds,
    capacity_retry_at,
)
from skedlib.scheduling.snapshot import HostState, Snapshot

FREE = Resources(memory=100, cpu_units=1024, disk=0)
BACKOFF = Backoff(initial=10.0, maximum=40.0)


def _rejection(count: int = 1, at: float = 1000.0) -> CapacityRejection:
    return CapacityRejection(host="a", reason="needs 200 MiB", at=at, count=count, free=FREE)


def test_it_holds_until_its_backoff_passes() -> None:
    r = _rejection()
    assert capacity_rejection_holds(r, 1000.0, FREE, BACKOFF)
    assert capacity_rejection_holds(r, 1009.9, FREE, BACKOFF)
    assert not capacity_rejection_holds(r, 1010.0, FREE, BACKOFF)


def test_the_backoff_grows_with_each_rejection_and_is_capped() -> None:
    assert [capacity_retry_at(_rejection(n), BACKOFF) - 1000.0 for n in (1, 2, 3, 4, 9)] == \
        [10.0, 20.0, 40.0, 40.0, 40.0]
    assert capacity_rejection_holds(_rejection(3), 1039.0, FREE, BACKOFF)
    assert CAPACITY_BACKOFF.delay(1) > 0


@pytest.mark.parametrize("grown", [Resources(memory=101, cpu_units=1024),
                                   Resources(memory=100, cpu_units=2048),
                                   Resources(memory=100, cpu_units=1024, disk=1)])
def test_it_expires_when_the_host_has_more_free(grown: Resources) -> None:
    assert not capacity_rejection_holds(_rejection(), 1001.0, grown, BACKOFF)


def test_less_or_as_much_free_does_not_end_it() -> None:
    assert capacity_rejection_holds(_rejection(), 1001.0, Resources(memory=50, cpu_units=0),
                                    BACKOFF)


def _request(task: Task) -> TaskRequest:
    return TaskRequest.for_task(task, None)


def _task(**kw: object) -> Task:
    td = TaskDefinition(name="s", version=1, memory=200,
                        containers=[Container(name="c", type="process")])
    return Task(cluster=Cluster(name="c"), task_definition=td, service="s", instance=0,
                **kw)  # type: ignore[arg-type]


def _host(memory: int, allocated: int = 0) -> HostState:
    return HostState(Host(name="a", total=Resources(memory=memory, cpu_units=1024),
                          allocated=Resources(memory=allocated)))


def test_the_filter_reads_the_host_record() -> None:
    task = _task(capacity_rejections=[_rejection()])
    now = [1001.0]
    f = NotRejectedBefore(clock=lambda: now[0])
    assert f.filter(_request(task), _host(100)) == "host lacked room for this task lately"
    assert f.filter(_request(task), _host(300)) is None  # the agent came back bigger
    assert f.filter(_request(task), _host(300, allocated=200)) is not None
    assert f.filter(_request(task), _host(100)) is not None
    now[0] = capacity_retry_at(_rejection())
    assert f.filter(_request(task), _host(100)) is None  # the backoff passed
    other = HostState(Host(name="b", total=Resources(memory=100, cpu_units=1024)))
    assert f.filter(_request(task), other) is None


def test_a_rejection_for_good_stays() -> None:
    task = _task(rejected_hosts=["a"])
    f = NotRejectedBefore(clock=lambda: 10.0 ** 12)
    assert f.filter(_request(task), _host(10 ** 6)) == "host rejected this task"


def test_an_old_record_decodes_and_its_rejections_stay_for_good() -> None:
    raw = json.loads(msgspec.json.encode(_task(rejected_hosts=["a"])))
    del raw["capacity_rejections"]
    task = decode(json.dumps(raw).encode(), Task)
    assert task.capacity_rejections == [] and task.rejected_hosts == ["a"]


def test_the_agent_renews_its_own_entry_and_keeps_others() -> None:
    stored = [{"host": "b", "count": 3}, "junk"]
    once = capacity_rejected(stored, "a", "no room", 5.0, FREE)
    twice = capacity_rejected(once, "a", "still no room", 9.0, Resources(memory=7))
    assert once[:2] == stored and len(twice) == 3
    mine = msgspec.convert(twice[-1], CapacityRejection)
    assert (mine.count, mine.at, mine.reason, mine.free.memory) == (2, 9.0, "still no room", 7)
    assert stored == [{"host": "b", "count": 3}, "junk"]  # the input is not changed


# -- the stock scheduler ------------------------------------------------------------------


def _snapshot(rejection: CapacityRejection, host_memory: int = 100) -> tuple[Snapshot, Task]:
    td = TaskDefinition(name="s", version=1, memory=50,
                        containers=[Container(name="c", type="process")])
    cluster = Cluster(name="c", services=["s"])
    task = Task(cluster=cluster, task_definition=td, service="s", instance=0, host="a",
                scheduled=True, rejected=True, reject_reason=rejection.reason,
                capacity_rejections=[rejection])
    snap = Snapshot(1, clusters=[cluster],
                    services=[Service(name="s", task_name="s", task_version=1, desired=1)],
                    task_definitions=[td], tasks=[(task, 1)],
                    hosts=[Host(name="a", total=Resources(memory=host_memory,
                                                          cpu_units=1024))])
    return snap, task


def test_the_scheduler_waits_out_the_backoff_then_places_it_there_again() -> None:
    now = time.time()
    snap, _ = _snapshot(CapacityRejection(host="a", reason="port 80 is in use", at=now,
                                          free=FREE))
    result = BinpackScheduler().plan(snap, snap.clusters["c"], snap.services["s"])
    assert not result.plan.place and result.unschedulable
    assert result.retry_after is not None and 0 < result.retry_after <= \
        CAPACITY_BACKOFF.delay(1)

    snap, _ = _snapshot(CapacityRejection(host="a", reason="port 80 is in use",
                                          at=now - 3600, free=FREE))
    result = BinpackScheduler().plan(snap, snap.clusters["c"], snap.services["s"])
    (placed,) = result.plan.place
    assert placed.host == "a" and not placed.rejected
    assert [r.host for r in placed.capacity_rejections] == ["a"]  # kept: the count grows


def test_an_expired_rejection_does_not_hurry_the_next_plan() -> None:
    # the host is too small anyway: nothing to wake up for soon
    snap, _ = _snapshot(CapacityRejection(host="a", at=time.time() - 3600, free=FREE),
                        host_memory=10)
    result = BinpackScheduler().plan(snap, snap.clusters["c"], snap.services["s"])
    assert result.unschedulable
    assert result.retry_after is None or result.retry_after >= 1.0
