"""Events on every backend: the bound, the batches (more objects than one transaction
takes on Consul), two recorders writing the same record, and the lease the record is
bound to."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from skedlib.events import MAX_EVENTS, EventKeyspace, EventLog, read_events
from skedlib.keys import Keyspace
from skedlib.runtime import Store
from tests.harness import consul as consul_harness
from tests.harness import etcd as etcd_harness

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
