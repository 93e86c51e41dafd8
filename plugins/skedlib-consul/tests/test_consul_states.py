"""How the Consul health provider turns Consul's check statuses into task states.

Pure bookkeeping (:mod:`skedlib_consul.states`): observations are fed in with the
monotonic time they were read at, so no Consul and no clock are needed here.
"""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st
from skedlib_consul.states import (
    CONSUL_MIN_INTERVAL,
    FIRST_RESULT_SLACK,
    TrackedCheck,
    TrackedTask,
)

from skedlib.health.checks import ResolvedCheck
from skedlib.models import Cluster, Container, Task, TaskDefinition

Status = Any  # "passing" | "warning" | "critical"


def _resolved(name: str = "http", kind: str = "http", interval: float = 1.0,
              timeout: float = 0.5, ttl: float = 0.0) -> ResolvedCheck:
    target = "" if kind == "ttl" else "http://127.0.0.1:80/"
    return ResolvedCheck(name=name, container="app", kind=kind,  # type: ignore[arg-type]
                         target=target, interval=interval, timeout=timeout, ttl=ttl)


def _tracked(*checks: TrackedCheck, registered_at: float = 100.0) -> TrackedTask:
    definition = TaskDefinition(name="web", version=1,
                                containers=[Container(name="app", type="process")])
    task = Task(cluster=Cluster(name="prod"), task_definition=definition, service="web",
                instance=0)
    return TrackedTask(task=task, port=80, generation=1, payload={}, checks=list(checks),
                       registered=True, registered_at=registered_at)


def _seen(entry: TrackedTask, status: str, t: float, output: str = "") -> None:
    entry.observe({c.check_id: {"Status": status, "Output": output} for c in entry.checks}, t)


def test_a_check_is_starting_until_consul_ran_it() -> None:
    c = TrackedCheck.registering(_resolved(interval=2.0, timeout=0.5), "t:app:http")
    assert (c.every, c.first_by) == (2.0, 2.0 + 0.5 + FIRST_RESULT_SLACK)
    assert c.status.status == "critical" and c.status.output == "registering with Consul"
    entry = _tracked(c)
    _seen(entry, "critical", 101.0)  # critical without output: Consul has not run it yet
    assert entry.state(2) == "starting" and not c.has_result
    assert entry.deadline(2, after=101.0) == 100.0 + c.first_by
    _seen(entry, "critical", 100.0 + c.first_by)  # it cannot not have run by now
    assert c.has_result and entry.state(2) == "running"
    assert c.status.output == "critical (Consul gave no output)"


def test_consul_runs_no_check_more_often_than_once_a_second() -> None:
    c = TrackedCheck.registering(_resolved(interval=0.2, timeout=0.1), "t:app:http")
    assert c.every == CONSUL_MIN_INTERVAL
    ttl = TrackedCheck.registering(_resolved(kind="ttl", interval=0.5, ttl=2.0), "t:app:ttl")
    assert (ttl.every, ttl.first_by) == (0.5, 2.0 + FIRST_RESULT_SLACK)


def test_consecutive_criticals_are_counted_in_time() -> None:
    c = TrackedCheck.registering(_resolved(interval=1.0), "t:app:http")
    entry = _tracked(c)
    _seen(entry, "passing", 101.0, "ok")
    assert entry.state(2) == "healthy"
    _seen(entry, "critical", 102.0, "refused")
    assert entry.state(2) == "running" and c.critical_since == 102.0
    assert entry.deadline(2, after=102.0) == 102.0 + 1.5  # (threshold - 0.5) intervals
    _seen(entry, "critical", 103.4, "refused")
    assert entry.state(2) == "running"
    _seen(entry, "critical", 103.5, "")  # no output: the last one stands
    assert entry.state(2) == "unhealthy" and c.status.output == "refused"
    assert entry.deadline(2, after=103.5) is None  # nothing left to confirm
    _seen(entry, "passing", 104.0, "ok")  # a pass ends the streak
    assert entry.state(2) == "healthy" and c.critical_since is None


def test_a_threshold_of_one_counts_the_first_critical_result() -> None:
    c = TrackedCheck.registering(_resolved(), "t:app:http")
    entry = _tracked(c)
    _seen(entry, "critical", 101.0, "refused")
    assert entry.state(1) == "unhealthy" and entry.deadline(1, after=101.0) is None


def test_states_of_a_task() -> None:
    assert _tracked().state(3) == "healthy"  # no checks, as Consul sees a service
    a = TrackedCheck.registering(_resolved("a"), "t:app:a")
    b = TrackedCheck.registering(_resolved("b"), "t:app:b")
    entry = _tracked(a, b)
    entry.observe({"t:app:a": {"Status": "passing", "Output": "ok"}}, 101.0)
    assert entry.state(2) == "starting"  # b has no result yet
    entry.observe({"t:app:b": {"Status": "warning", "Output": "slow"}}, 101.0)
    assert entry.state(2) == "healthy"  # a warning is not critical
    before = entry.fingerprint(2)
    entry.refused = "Consul refused the registration: bad interval"
    assert entry.state(2) == "unhealthy" and entry.fingerprint(2) != before
    entry.reset()  # vanished from the agent: registered again, results forgotten
    assert not entry.registered and not a.has_result and entry.deadline(2, 0.0) is None


def test_statuses_are_stamped_in_order() -> None:
    c = TrackedCheck.registering(_resolved(), "t:app:http")
    for status in ("passing", "critical", "warning", "passing"):
        c.set_status(status, status)
    assert list(c.produced) == sorted(set(c.produced))
    assert c.status.updated_at == c.produced[-1]


@given(threshold=st.integers(1, 5), interval=st.floats(0.25, 10),
       reads=st.lists(st.tuples(st.floats(0, 5), st.sampled_from(
           ["passing", "warning", "critical"])), max_size=30))
def test_unhealthy_only_after_a_streak_long_enough(
        threshold: int, interval: float, reads: list[tuple[float, Status]]) -> None:
    c = TrackedCheck.registering(_resolved(interval=interval, timeout=0.1), "t:app:http")
    entry = _tracked(c, registered_at=0.0)
    t = 0.0
    streak_from: float | None = None  # when the current run of critical reads began
    for step, status in reads:
        t += step
        _seen(entry, status, t, output=status)
        streak_from = (streak_from if streak_from is not None else t) \
            if status == "critical" else None
        reached = streak_from is not None and (
            threshold <= 1 or t >= streak_from + (threshold - 0.5) * c.every)
        assert (entry.state(threshold) == "unhealthy") == reached


def test_a_start_period_counts_a_critical_streak_from_its_end() -> None:
    resolved = msgspec.structs.replace(_resolved(interval=1.0), start_period=10.0)
    c = TrackedCheck.registering(resolved, "t:app:http")
    entry = _tracked(c)  # registered at 100
    _seen(entry, "critical", 101.0, "refused")
    assert entry.state(1) == "starting" and c.critical_since == 110.0
    assert entry.deadline(1, after=101.0) == 110.0  # a read then decides
    _seen(entry, "critical", 109.0, "refused")
    assert entry.state(2) == "starting"
    _seen(entry, "critical", 110.0, "refused")
    assert entry.state(1) == "unhealthy" and entry.state(2) == "running"
    _seen(entry, "critical", 111.5, "refused")
    assert entry.state(2) == "unhealthy"
    # once the check has passed, a streak counts at once even within the period
    d = TrackedCheck.registering(resolved, "t:app:http")
    other = _tracked(d)
    _seen(other, "passing", 101.0, "ok")
    _seen(other, "critical", 102.0, "refused")
    assert d.critical_since == 102.0 and other.state(1) == "unhealthy"
