"""The informer: list, watch from the revision, resume, relist after compaction, back off."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from skedlib.errors import BackendUnavailable
from skedlib.plugins import open_backend
from skedlib.runtime import Backoff, Informer, Store, wait_for_change
from skedlib.store.base import Backend, ListResult, Watch, WatchEvent
from tests.harness.common import DelegatingBackend


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = open_backend("memory://" if request.param == "memory" else f"sqlite://{tmp_path}/i.db")
    yield b
    b.close()


class Mirror:
    """What a watcher keeps: the keys under the prefix, rebuilt from lists and events."""

    def __init__(self) -> None:
        self.items: dict[str, bytes] = {}
        self.lists = 0
        self.changed = threading.Condition()

    def on_list(self, listed: ListResult) -> None:
        with self.changed:
            self.items = {kv.key: kv.value for kv in listed.items}
            self.lists += 1
            self.changed.notify_all()

    def on_events(self, events: Sequence[WatchEvent]) -> None:
        with self.changed:
            for e in events:
                if e.kind == "put":
                    self.items[e.key] = e.value
                else:
                    self.items.pop(e.key, None)
            self.changed.notify_all()

    def wait_for(self, expected: dict[str, bytes], timeout: float = 10.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.items == expected, timeout), self.items


def test_follows_a_prefix_from_its_listing(backend: Backend) -> None:
    backend.put("p/a", b"1")
    backend.put("other", b"x")
    m = Mirror()
    inf = Informer(backend, "p/", on_list=m.on_list, on_events=m.on_events).start()
    try:
        assert inf.synced.wait(10)
        m.wait_for({"p/a": b"1"})
        backend.put("p/b", b"2")
        backend.delete("p/a")
        m.wait_for({"p/b": b"2"})
        assert inf.revision == backend.current_revision()
        assert m.lists == 1
    finally:
        inf.stop()
    assert inf.stopped


class Flaky(DelegatingBackend):
    """Breaks the open watch stream on demand, then fails the next ``fail`` watch
    openings, as a store that went away for a while."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.fail = 0
        self.opened: list[int] = []
        self.streams: list[BreakableWatch] = []

    def watch(self, prefix: str, start_revision: int) -> Watch:
        self.opened.append(start_revision)
        if self.fail:
            self.fail -= 1
            raise BackendUnavailable("store unreachable (test)")
        stream = BreakableWatch(super().watch(prefix, start_revision))
        self.streams.append(stream)
        return stream


class BreakableWatch(Watch):
    def __init__(self, inner: Watch) -> None:
        self.inner = inner
        self.broken = threading.Event()

    def next(self, timeout: float | None = None) -> list[WatchEvent]:
        if self.broken.is_set():
            raise BackendUnavailable("stream broken (test)")
        return self.inner.next(timeout)

    def close(self) -> None:
        self.inner.close()

    @property
    def closed(self) -> bool:
        return self.inner.closed


def test_resumes_from_the_last_revision_after_failures(backend: Backend) -> None:
    flaky = Flaky(backend)
    m = Mirror()
    inf = Informer(flaky, "p/", on_list=m.on_list, on_events=m.on_events,
                   backoff=Backoff(initial=0.01, maximum=0.05), poll_timeout=0.1).start()
    try:
        assert inf.synced.wait(10)
        backend.put("p/a", b"1")
        m.wait_for({"p/a": b"1"})
        seen = inf.revision
        flaky.fail = 3
        flaky.streams[-1].broken.set()
        deadline = time.monotonic() + 10
        while len(flaky.streams) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        # three failed openings, then a stream again, each from the revision after seen
        assert len(flaky.streams) == 2 and flaky.opened[1:] == [seen + 1] * 4
        backend.put("p/b", b"2")
        m.wait_for({"p/a": b"1", "p/b": b"2"})
        assert m.lists == 1  # resumed, not listed again
    finally:
        inf.stop()


def test_hands_on_only_the_kinds_asked_for_and_resumes_after_them(backend: Backend) -> None:
    backend.put("p/old", b"0")
    flaky = Flaky(backend)
    listed: list[list[str]] = []
    got: list[tuple[str, str]] = []
    changed = threading.Condition()

    def on_events(events: Sequence[WatchEvent]) -> None:
        with changed:
            got.extend((e.kind, e.key) for e in events)
            changed.notify_all()

    def wait_for(n: int) -> None:
        with changed:
            assert changed.wait_for(lambda: len(got) >= n, 10), got

    inf = Informer(flaky, "p/", on_list=lambda r: listed.append([kv.key for kv in r.items]),
                   on_events=on_events, kinds=["delete"],
                   backoff=Backoff(initial=0.01, maximum=0.05), poll_timeout=0.1).start()
    try:
        assert inf.synced.wait(10)
        assert listed == [["p/old"]]  # a listing is handed on whole
        backend.put("p/a", b"1")
        backend.put("p/b", b"2")
        deleted_at = backend.delete("p/a")
        wait_for(1)
        assert inf.revision == deleted_at
        flaky.streams[-1].broken.set()
        deadline = time.monotonic() + 10
        while len(flaky.streams) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        backend.put("p/c", b"3")
        backend.delete("p/b")
        wait_for(2)
        assert flaky.opened[-1] == deleted_at + 1  # resumed after the last event handed on
        assert got == [("delete", "p/a"), ("delete", "p/b")]
        assert listed == [["p/old"]]
    finally:
        inf.stop()


def test_refuses_unknown_kinds(backend: Backend) -> None:
    with pytest.raises(ValueError, match="watch kinds"):
        Informer(backend, "p/", on_list=lambda _r: None, on_events=lambda _e: None,
                 kinds=["change"])  # type: ignore[list-item]


def test_lists_again_after_compaction() -> None:
    backend = open_backend("memory://")
    store = Store(backend)
    m = Mirror()
    paused = threading.Event()
    resume = threading.Event()

    def on_events(events: Sequence[WatchEvent]) -> None:
        m.on_events(events)
        paused.set()
        resume.wait(10)

    inf = store.informer("p/", on_list=m.on_list, on_events=on_events,
                         poll_timeout=0.1).start()
    try:
        assert inf.synced.wait(10)
        backend.put("p/a", b"1")
        assert paused.wait(10)  # the informer is inside on_events at the first revision
        backend.put("p/b", b"2")
        backend.delete("p/a")
        backend.compact(backend.current_revision())
        resume.set()
        m.wait_for({"p/b": b"2"})
    finally:
        resume.set()
        inf.stop()


def test_stop_wakes_a_blocked_watch(backend: Backend) -> None:
    m = Mirror()
    inf = Informer(backend, "p/", on_list=m.on_list, on_events=m.on_events,
                   poll_timeout=3600).start()
    assert inf.synced.wait(10)
    inf.stop(timeout=10)
    assert inf._thread is not None and not inf._thread.is_alive()


def test_wait_for_change(backend: Backend) -> None:
    rev = backend.current_revision()
    assert wait_for_change(backend, "p/", rev, timeout=0.05) is None
    timer = threading.Timer(0.05, lambda: backend.put("p/x", b"1"))
    timer.start()
    seen = wait_for_change(backend, "p/", rev, timeout=10)
    timer.join()
    assert seen == backend.current_revision() == rev + 1
    assert wait_for_change(backend, "p/", rev, timeout=0) is None
    backend.put("q/other", b"1")
    assert wait_for_change(backend, "p/", seen, timeout=0.05) is None  # not under p/


def test_store_pairs_a_backend_with_its_keyspace(tmp_path: Path) -> None:
    with Store.open(f"sqlite://{tmp_path}/s.db", prefix="team-a") as store:
        assert store.keys.prefix == "team-a/"
        assert Store.of(store) is store
        with pytest.raises(ValueError, match="another keyspace"):
            from skedlib.keys import Keyspace
            Store.of(store, Keyspace("team-b"))
        store.backend.put(store.keys.task("c-web-1-0"), b"{}")
        assert store.get("team-a/state/tasks/c-web-1-0") is not None
