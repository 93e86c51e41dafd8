"""Events on every backend: the bound, the batches (more objects than one transaction
takes on Consul), two recorders writing the same record, the lease the record is bound
to, and the writes that need no read (records the recorder wrote last, new records)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from skedlib import events
from skedlib.events import MAX_EVENTS, EventKeyspace, EventLog, ObjectKind, read_events
from skedlib.keys import Keyspace
from skedlib.runtime import Store
from skedlib.store.base import Backend, KeyValue
from tests.harness import consul as consul_harness
from tests.harness import etcd as etcd_harness
from tests.harness.common import DelegatingBackend

pytestmark = [pytest.mark.integration]

etcd_single = etcd_harness.etcd_single
consul_dev = consul_harness.consul_dev


@pytest.fixture(params=["sqlite", "etcd", "consul"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path / 'sked.db'}"
    else:
        url = request.getfixturevalue("etcd_single" if request.param == "etcd"
                                      else "consul_dev").url()
    with Store.open(url, f"ev{uuid.uuid4().hex[:8]}/") as s:
        yield s


def test_bounded_batched_and_leased(store: Store) -> None:
    log = EventLog(store, "test")
    names = [f"default-web-1-{i}" for i in range(40)]  # 80 operations: > Consul's 64
    for name in names:
        log.record("task", name, "placed", f"{name} on h1", host="h1")
    for i in range(MAX_EVENTS + 1):
        log.record("host", "h1", "rejected", f"number {i}")
    assert log.flush(30)
    for name in names:
        assert [e.message for e in read_events(store, "task", name)] == [f"{name} on h1"]
    host = read_events(store, "host", "h1")
    assert len(host) == MAX_EVENTS and host[0].message == "number 1"
    kv = store.get(EventKeyspace(Keyspace(store.keys.prefix)).event_history("host", "h1"))
    assert kv is not None and kv.lease  # the store drops it when nothing happens
    log.close()
    assert log.dropped == 0


def test_two_recorders_on_one_record(store: Store) -> None:
    logs = [EventLog(store, f"recorder {i}") for i in range(2)]

    def burst(log: EventLog) -> None:
        for i in range(20):
            log.record("job", "j1", "running", f"{log.source} {i}")
            if i % 5 == 4:
                log.flush(30)

    threads = [threading.Thread(target=burst, args=(log,)) for log in logs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for log in logs:
        log.close(30)
    events = read_events(store, "job", "j1")
    assert len(events) == 40 - sum(log.dropped for log in logs)
    assert sum(log.dropped for log in logs) == 0
    assert {e.source for e in events} == {"recorder 0", "recorder 1"}


class _Reads(DelegatingBackend):
    """The store, counting the keys read."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.read: list[str] = []

    def get(self, key: str) -> KeyValue | None:
        self.read.append(key)
        return super().get(key)

    def get_many(self, keys: Sequence[str]) -> dict[str, KeyValue]:
        self.read += keys
        return self.inner.get_many(keys)


def _messages(store: Store, kind: ObjectKind, name: str) -> list[str]:
    return [e.message for e in read_events(store, kind, name)]


def test_a_record_changed_by_another_writer_is_merged(store: Store) -> None:
    reads = _Reads(store.backend)
    mine = EventLog(Store(reads, store.keys), "mine")
    other = EventLog(store, "other")
    key = EventKeyspace(store.keys).event_history("job", "j1")
    mine.record("job", "j1", "queued", "1")
    assert mine.flush(30)
    mine.record("job", "j1", "running", "2")
    assert mine.flush(30)
    assert reads.read == []  # a new record, then one it wrote itself: no read
    other.record("job", "j1", "running", "3")  # one it never wrote: believed absent
    assert other.flush(30)
    assert _messages(store, "job", "j1") == ["1", "2", "3"]
    mine.record("job", "j1", "complete", "4")  # changed since its last write
    assert mine.flush(30)
    assert reads.read == [key]  # read once its compare failed, then merged
    assert _messages(store, "job", "j1") == ["1", "2", "3", "4"]
    store.backend.delete(key)  # gone (as when its lease ends): written again
    mine.record("job", "j1", "queued", "5")
    mine.close(30)
    other.close(30)
    assert _messages(store, "job", "j1") == ["5"]
    assert mine.dropped == other.dropped == 0


def test_records_it_no_longer_remembers_are_read_again(store: Store,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "KNOWN_RECORDS", 2)
    reads = _Reads(store.backend)
    log = EventLog(Store(reads, store.keys), "test")
    names = ["a", "b", "c"]
    for name in names:
        log.record("host", name, "joined", f"{name} 1")
        assert log.flush(30)
    assert reads.read == []
    for name in names:  # a is forgotten: its write is refused, read and merged
        log.record("host", name, "left", f"{name} 2")
    log.close(30)
    assert reads.read[0] == EventKeyspace(store.keys).event_history("host", "a")
    for name in names:
        assert _messages(store, "host", name) == [f"{name} 1", f"{name} 2"]
    assert log.dropped == 0


def test_bad_names_are_left_out_and_the_rest_is_written(store: Store) -> None:
    """The writer builds each event's key: an event whose kind or name cannot be a key is
    left out there (record never raises), and the others of its batch are written with
    the time and details they were recorded with."""
    log = EventLog(store, "test")
    log.record("task", "a/b", "placed", "a slash in the name")
    log.record("planet", "mars", "placed", "not a kind")  # type: ignore[arg-type]
    log.record("task", "default-web-1-0", "placed", "on h1", host="h1", score=0.5, none=None)
    assert log.flush(30)
    (event,) = read_events(store, "task", "default-web-1-0")
    assert (event.message, event.source, event.details) == ("on h1", "test",
                                                            {"host": "h1", "score": "0.5"})
    assert event.time > 0
    keys = [kv.key for kv in store.list(store.keys.prefix + "events/").items]
    assert keys == [EventKeyspace(Keyspace(store.keys.prefix)).event_history(
        "task", "default-web-1-0")]
    log.close()
    assert log.dropped == 0
