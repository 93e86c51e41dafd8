"""The de-duplicating work queue."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from skedlib.scheduler.queue import WorkQueue


def test_a_key_queued_twice_runs_once() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    q.add("b")
    q.add("a")
    assert len(q) == 2
    assert q.get(0) == "a" and q.get(0) == "b"
    assert q.get(0) is None


def test_a_key_changed_while_active_runs_again_after() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    assert q.get(0) == "a"
    q.add("a")  # changed while being worked on: not handed to a second worker
    q.add("a")
    assert q.get(0) is None
    q.done("a")
    assert q.get(0) == "a"  # once more, once
    q.done("a")
    assert q.get(0) is None and q.pending() == 0


def test_add_after_keeps_the_earliest_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]  # the queue's clock, moved by hand: no wall-clock bound to miss
    monkeypatch.setattr("skedlib.scheduler.queue.time",
                        SimpleNamespace(monotonic=lambda: now[0]))
    q: WorkQueue[str] = WorkQueue()
    q.add_after("a", 5.0)
    q.add_after("a", 0.05)
    q.add_after("a", 1.0)
    assert q.get(0) is None  # not due yet
    now[0] += 0.06
    assert q.get(0) == "a"  # due after the earliest delay
    q.done("a")
    now[0] += 10.0
    assert q.get(0) is None and q.pending() == 0  # the later delays were dropped


def test_close_wakes_blocked_getters() -> None:
    q: WorkQueue[str] = WorkQueue()
    got: list[str | None] = []
    t = threading.Thread(target=lambda: got.append(q.get(120)))
    t.start()
    time.sleep(0.05)
    q.close()
    t.join(30)  # well before the get's own 120 s
    assert got == [None] and not t.is_alive()
    q.add("a")
    assert q.get(0) is None


def test_many_workers_never_share_a_key() -> None:
    q: WorkQueue[int] = WorkQueue()
    active: set[int] = set()
    clash: list[int] = []
    lock = threading.Lock()
    runs = [0]

    def worker() -> None:
        while (key := q.get(0.2)) is not None:
            with lock:
                if key in active:
                    clash.append(key)
                active.add(key)
                runs[0] += 1
            time.sleep(0.001)
            with lock:
                active.discard(key)
            q.done(key)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for i in range(2000):
        q.add(i % 10)
    for t in threads:
        t.join(10)
    assert clash == [] and q.pending() == 0
    assert 10 <= runs[0] < 2000  # bursts were folded together
