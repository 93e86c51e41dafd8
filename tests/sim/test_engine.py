"""The simulator itself: deterministic runs, drains and failures in virtual time, what it
counts."""

from __future__ import annotations

from skedlib.models import Resources
from skedlib.sim import Batch, HostEvent, Simulator, synthetic_trace
from skedlib.sim.report import percentile, summarise

HOST = Resources(memory=1000, cpu_units=1000)


def _run(trace: list, scheduler: str = "binpack", hosts: int = 4) -> Simulator:
    sim = Simulator(trace, hosts=hosts, host=HOST, scheduler=scheduler, samples=20)
    sim.run()
    return sim


def test_runs_are_deterministic() -> None:
    trace = list(synthetic_trace(400, seed=1, failures=4, hosts=30))
    host = Resources(memory=16384, cpu_units=8192)
    a = Simulator(trace, hosts=30, host=host, scheduler="spread")
    b = Simulator(trace, hosts=30, host=host, scheduler="spread")
    sa, sb = a.run(), b.run()
    assert a.placements() == b.placements()
    assert (sa.samples, sa.pending_times, sa.moves, sa.placed) == \
        (sb.samples, sb.pending_times, sb.moves, sb.placed)
    assert sa.moves > 0  # the failures moved tasks


def test_a_drain_moves_tasks_off_the_host_in_virtual_time() -> None:
    trace = [Batch(t=0, service="a", count=2, memory=100, cpu=100, duration=1000),
             HostEvent(t=10, host=0, event="drain")]
    sim = Simulator(trace, hosts=4, host=HOST, scheduler="binpack", samples=0)
    sim.step()
    assert set(sim.placements().values()) == {"h00000"}  # binpack: both on one host
    moved_at = []
    while (sim.peek() or 1e9) < 500 and (ev := sim.step()) is not None:
        moved_at.append((ev.t, ev.kind, sim.stats.moves))
    assert set(sim.placements().values()) == {"h00001"}
    assert sim.stats.moves == 2
    # one task at a time (max_parallel 1): the second moved on a retry, later
    assert moved_at[0] == (10, "drain", 1) and moved_at[-1][1:] == ("retry", 2)
    assert moved_at[-1][0] > 10


def test_waiting_unschedulable_and_departures() -> None:
    trace = [Batch(t=0, service="big", count=4, memory=900, cpu=10, duration=50),
             Batch(t=1, service="late", count=1, memory=500, cpu=10, duration=10),
             Batch(t=2, service="huge", count=1, memory=5000, cpu=10, duration=10)]
    sim = _run(trace)
    stats = sim.stats
    assert stats.unschedulable == 1  # "huge" fits no host, ever
    # "late" waited for "big" to leave at t=50
    assert sorted(stats.pending_times) == [0, 0, 0, 0, 49]
    assert sim.placements() == {}  # everyone that ran has left
    r = summarise(stats)
    assert r["pending_seconds"]["max"] == 49
    assert r["hosts_used"]["peak"] == 4 and r["hosts_used"]["lower_bound_peak"] == 4


def test_percentile_by_nearest_rank() -> None:
    assert percentile([], 50) == 0.0
    assert percentile([3, 1, 2], 50) == 2
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([5], 99) == 5
