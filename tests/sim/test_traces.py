"""Trace files: the JSONL format, synthetic traces, and the importers of public cluster
trace layouts, on small files written here in those layouts."""

from __future__ import annotations

import io
import json
import statistics
from pathlib import Path

import pytest

from skedlib.errors import ValidationError
from skedlib.sim import Batch, HostEvent, read_trace, synthetic_trace, write_trace
from skedlib.sim.importers import alibaba_2018, google_2011, google_2019


def test_jsonl_round_trip_sorts_by_time() -> None:
    recs = [Batch(t=5, service="b", count=2, memory=64, cpu=32, duration=9.5),
            HostEvent(t=1, host=3, event="drain"),
            Batch(t=5, service="a", memory=1, duration=0, constraints=["distinct_host"])]
    buf = io.BytesIO()
    assert write_trace(recs, buf) == 3
    assert json.loads(buf.getvalue().splitlines()[1])["kind"] == "host"
    back = read_trace(io.BytesIO(buf.getvalue()))
    assert back == [recs[1], recs[0], recs[2]]  # by time, equal times in file order


@pytest.mark.parametrize("line, words", [
    ('{"kind": "batch", "t": 0, "service": "x", "memory": 1, "duration": 1, "count": 0}',
     ["count"]),
    ('{"kind": "host", "t": 0, "host": 1, "event": "explode"}', ["event"]),
    ('{"kind": "batch", "t": -1, "service": "x", "memory": 1, "duration": 1}', ["t must"]),
    ("not json", ["not JSON"]),
])
def test_bad_lines_are_named(tmp_path: Path, line: str, words: list[str]) -> None:
    f = tmp_path / "t.jsonl"
    f.write_text('{"kind": "batch", "t": 0, "service": "x", "memory": 1, "duration": 1}\n'
                 + line + "\n")
    with pytest.raises(ValidationError) as exc:
        read_trace(f)
    assert str(exc.value).startswith(f"{f}:2: ") and "\n" not in str(exc.value)
    for w in words:
        assert w in str(exc.value)


def test_synthetic_traces_are_seeded_and_realistic() -> None:
    a = list(synthetic_trace(5000, seed=7, failures=3, hosts=50))
    assert a == list(synthetic_trace(5000, seed=7, failures=3, hosts=50))
    assert a != list(synthetic_trace(5000, seed=8, failures=3, hosts=50))
    batches = [r for r in a if isinstance(r, Batch)]
    assert sum(b.count for b in batches) == 5000
    assert [r.t for r in a] == sorted(r.t for r in a)
    kinds = {b.service.split("-")[0] for b in batches}
    assert kinds == {"web", "batch", "cron"}
    durations = [b.duration for b in batches]
    # heavy tailed: the mean well above the median, the largest far above both
    assert statistics.mean(durations) > 1.5 * statistics.median(durations)
    assert max(durations) > 10 * statistics.median(durations)
    # diurnal: arrivals in the busiest hour outnumber those in the quietest
    hours = [0] * 6
    for b in batches:
        hours[min(5, int(b.t // 3600))] += 1
    assert max(hours) > 1.5 * min(hours)
    fails = [r for r in a if isinstance(r, HostEvent)]
    assert [r.event for r in fails].count("fail") == 3 and len(fails) == 6
    assert all(r.host < 50 for r in fails)


def test_google_2011_task_events(tmp_path: Path) -> None:
    f = tmp_path / "part-00000-of-00500.csv"
    # timestamp, missing, job, task index, machine, event, user, class, priority,
    # cpu, memory, disk, different-machine
    f.write_text("\n".join([
        "1000000,,42,0,,0,u,1,9,0.125,0.0625,0.001,1",
        "1000000,,42,1,,0,u,1,9,0.125,0.0625,0.001,1",
        "2000000,,42,0,m1,1,u,1,9,0.125,0.0625,0.001,1",
        "2000000,,42,1,m2,1,u,1,9,0.125,0.0625,0.001,1",
        "5000000,,7,0,,0,v,0,0,0.5,0.25,0,0",
        "62000000,,42,0,m1,4,u,1,9,0.125,0.0625,0.001,1",
        "92000000,,42,1,m2,5,u,1,9,0.125,0.0625,0.001,1",
    ]) + "\n")
    b = google_2011(f, host_memory=16384, host_cpu=8192, default_duration=77)
    assert b == [
        Batch(t=0.0, service="job42-1000000-0.125-0.0625", count=2, memory=1024, cpu=1024,
              duration=91.0, constraints=["distinct_host"]),
        Batch(t=4.0, service="job7-5000000-0.5-0.25", count=1, memory=4096, cpu=4096,
              duration=77, constraints=[]),
    ]
    f.write_text("1,2,3\n")
    with pytest.raises(ValidationError, match=r"part-00000-of-00500.csv:1: expected 13"):
        google_2011(f)


def test_google_2019_instance_events(tmp_path: Path) -> None:
    f = tmp_path / "instance_events.json"
    rows = [
        {"time": "0", "type": "SUBMIT", "collection_id": "9", "instance_index": 0,
         "resource_request": {"cpus": 0.25, "memory": 0.125}},
        {"time": "0", "type": "SUBMIT", "collection_id": "9", "instance_index": 1,
         "resource_request": {"cpus": 0.25, "memory": 0.125}},
        {"time": "3000000", "type": "SCHEDULE", "collection_id": "9", "instance_index": 0},
        {"time": "30000000", "type": "FINISH", "collection_id": "9", "instance_index": 0},
        {"time": "40000000", "type": "FINISH", "collection_id": "9", "instance_index": 1},
        {"time": "10000000", "type": 0, "collection_id": "5", "instance_index": 0,
         "resource_request": {"cpus": 0.5, "memory": None}},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    b = google_2019(f, host_memory=1000, host_cpu=1000, default_duration=5)
    assert b == [
        Batch(t=0.0, service="coll9-0-0.25-0.125", count=2, memory=125, cpu=250,
              duration=40.0),
        Batch(t=10.0, service="coll5-10000000-0.5-0", count=1, memory=1, cpu=500,
              duration=5),
    ]


def test_alibaba_2018_batch_task(tmp_path: Path) -> None:
    f = tmp_path / "batch_task.csv"
    f.write_text("\n".join([
        "M1,10,j_1,1,Terminated,100,160,50,0.39",
        "R2_1,3,j_1,1,Terminated,130,400,200,1.5",
        "M1,1,j_2,1,Waiting,0,0,100,0.5",  # never started
    ]) + "\n")
    b = alibaba_2018(f, host_memory=100_000, host_cpu=8192)
    assert b == [
        Batch(t=0.0, service="j_1-M1", count=10, memory=390, cpu=512, duration=60.0),
        Batch(t=30.0, service="j_1-R2_1", count=3, memory=1500, cpu=2048, duration=270.0),
    ]
