"""Backoff delays and the compare-and-swap retry loop."""

from __future__ import annotations

import threading

import pytest

from skedlib.errors import ConflictError
from skedlib.plugins import open_backend
from skedlib.runtime import RETRY, Backoff, Retry, retry_on_conflict
from skedlib.store.base import Compare, Put


def test_backoff_grows_to_its_cap_and_resets() -> None:
    b = Backoff(initial=0.1, maximum=1.0)
    assert [b.next() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert b.attempts == 6
    b.reset()
    assert b.next() == 0.1
    assert Backoff(0.5, 30.0).delay(10_000) == 30.0  # no overflow after many failures


def test_backoff_jitter_stays_below_the_delay() -> None:
    b = Backoff(initial=1.0, maximum=1.0, jitter=0.5)
    delays = [b.next() for _ in range(200)]
    assert all(0.5 <= d <= 1.0 for d in delays)
    assert len(set(delays)) > 1


def test_bad_backoff_is_refused() -> None:
    with pytest.raises(ValueError, match="bad backoff"):
        Backoff(initial=2.0, maximum=1.0)


def test_retry_on_conflict_wins_against_concurrent_writers() -> None:
    backend = open_backend("memory://")
    backend.put("counter", b"0")

    def increment() -> int | Retry:
        kv = backend.get("counter")
        assert kv is not None
        res = backend.txn([Compare("counter", kv.revision)],
                          [Put("counter", str(int(kv.value) + 1).encode())])
        return res.revision if res.succeeded else RETRY

    def worker() -> None:
        for _ in range(50):
            retry_on_conflict(increment, what="counter", attempts=1000)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kv = backend.get("counter")
    assert kv is not None and kv.value == b"200"  # no increment lost


def test_retry_on_conflict_gives_up_naming_what_kept_changing() -> None:
    tries = 0

    def always_loses() -> int | Retry:
        nonlocal tries
        tries += 1
        return RETRY

    with pytest.raises(ConflictError, match="state/tasks/x kept changing"):
        retry_on_conflict(always_loses, what="state/tasks/x", attempts=3)
    assert tries == 3
