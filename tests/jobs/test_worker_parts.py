"""The job worker's parts without processes: the running-keys check after a (re)listing
cannot stop a fresh claim, and a key that goes stops its job."""

from __future__ import annotations

import threading
from pathlib import Path

from skedlib.executors.limits import detect_limiter
from skedlib.jobs._config import WorkerConfig, WorkerStats
from skedlib.jobs._running import Runs
from skedlib.jobs.models import JobSpec
from skedlib.jobs.store import JobStore
from skedlib.runtime import Store
from skedlib.store.base import ListResult, WatchEvent
from skedlib.store.memory import MemoryBackend


def _runs(tmp_path: Path) -> tuple[JobStore, Runs, int]:
    store = JobStore(Store(MemoryBackend()))
    config = WorkerConfig(node="n1", state_dir=tmp_path, limits="none")
    runs = Runs(store, config, detect_limiter("n1", "none"), WorkerStats(), tmp_path,
                tmp_path, lambda: None)
    node_rev = store.backend.put(store.keys.job_node("n1"), b"{}")
    return store, runs, node_rev


def _claim(store: JobStore, runs: Runs, node_rev: int, job_id: str) -> None:
    store.submit(JobSpec(command="true"), job_id)
    queued = store.backend.get(store.keys.job_queued(job_id))
    assert queued is not None
    stored = store.claim(queued, "n1", node_rev)
    assert stored is not None
    runs.add(stored)  # counted as running; not launched


def test_a_listing_older_than_a_claim_does_not_stop_it(tmp_path: Path) -> None:
    store, runs, node_rev = _runs(tmp_path)
    _claim(store, runs, node_rev, "old")
    listed = store.backend.list(store.keys.node_jobs_running("n1"))
    _claim(store, runs, node_rev, "fresh")  # claimed after the listing was read
    store.cancel("old")  # its key goes: a listing without it stops it
    runs._listed(listed)
    assert not runs.jobs["fresh"].stop.is_set(), "a claim newer than the listing is kept"
    assert not runs.jobs["old"].stop.is_set(), "listed: still there at that revision"
    runs._listed(ListResult([], store.backend.current_revision()))
    assert runs.jobs["old"].stop.is_set() and runs.jobs["old"].record_changed
    assert runs.jobs["old"].stop_reason == "canceled: canceled"
    assert runs.jobs["fresh"].stop.is_set(), "missing from a newer listing: gone"
    assert runs.stats.stopped == 2


def test_a_deleted_running_key_stops_its_job_but_not_a_finishing_one(tmp_path: Path) -> None:
    store, runs, node_rev = _runs(tmp_path)
    _claim(store, runs, node_rev, "a")
    _claim(store, runs, node_rev, "b")
    runs.jobs["b"].finishing = True  # its own finish deletes the key
    events = [WatchEvent("delete", store.keys.job_running("n1", j), b"", 99) for j in "ab"]
    runs._changed(events)
    assert runs.jobs["a"].stop.is_set() and runs.jobs["a"].stop_reason == "running"
    assert not runs.jobs["b"].stop.is_set()


def test_taking_back_a_lost_node_skips_a_record_that_does_not_decode(
        tmp_path: Path) -> None:
    store, runs, node_rev = _runs(tmp_path)
    _claim(store, runs, node_rev, "bad")
    _claim(store, runs, node_rev, "good")
    store.backend.put(store.keys.job("bad"), b"not a job")
    moved = store.requeue_node("n1", "node n1 lost")
    assert [j.id for j in moved] == ["good"] and moved[0].status == "queued"
    assert store.backend.get(store.keys.job("bad")).value == b"not a job"  # type: ignore[union-attr]


class _CountingCondition(threading.Condition):
    """A condition that counts its notify_all calls (what wakes the claimer)."""

    def __init__(self) -> None:
        super().__init__()
        self.wakes = 0

    def notify_all(self) -> None:
        self.wakes += 1
        super().notify_all()


def test_an_end_wakes_the_claimer_only_when_a_slot_is_free(tmp_path: Path) -> None:
    store, runs, node_rev = _runs(tmp_path)
    cond = runs.cond = _CountingCondition()
    for job_id in "abc":
        _claim(store, runs, node_rev, job_id)
    runs._forget([runs.jobs["a"]])  # no limit known: every end wakes it
    assert cond.wakes == 1
    runs.slots = 1
    _claim(store, runs, node_rev, "d")  # as a job claimed with the end of another
    runs._forget([runs.jobs["b"]])  # two still running for one slot: nothing to pick
    assert cond.wakes == 1 and set(runs.jobs) == {"c", "d"}
    runs._forget([runs.jobs["c"]])  # one left: still no free slot
    assert cond.wakes == 1
    runs._forget([runs.jobs["d"]])  # a slot is free
    assert cond.wakes == 2 and not runs.jobs
