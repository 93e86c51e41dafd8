"""What the embedded store promises beyond the conformance suite: WAL, readers never
blocked by a writer, a busy write lock is an error (not a hang), compaction, durability."""

from __future__ import annotations

import ast
import contextlib
import gc
import multiprocessing
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from skedlib.errors import BackendUnavailable, Compacted
from skedlib.plugins import open_backend
from skedlib.store.sqlite import SqliteBackend


def test_the_file_is_in_wal_mode(tmp_path: Path) -> None:
    with open_backend(f"sqlite://{tmp_path}/s.db") as backend:
        backend.put("k", b"v")
    raw = sqlite3.connect(tmp_path / "s.db")
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()


def test_readers_go_on_while_another_connection_holds_the_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with open_backend(f"sqlite://{path}?timeout=0.3") as backend:
        backend.put("k", b"before")
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("UPDATE kv SET value = x'00' WHERE key = 'k'")  # not committed
            kv = backend.get("k")
            assert kv is not None and kv.value == b"before"
            assert [i.key for i in backend.list("").items] == ["k"]
            with pytest.raises(BackendUnavailable, match="cannot take the write lock") as info:
                backend.put("k", b"blocked")
            assert "\n" not in str(info.value)
            other.execute("ROLLBACK")
        finally:
            other.close()
        backend.put("k", b"after")
        kv = backend.get("k")
        assert kv is not None and kv.value == b"after"


def test_writers_of_one_process_take_turns_within_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with open_backend(f"sqlite://{path}?timeout=0.3") as backend:
        errors: list[str] = []

        def write(key: str) -> None:
            try:
                backend.put(key, b"v")
            except BackendUnavailable as exc:
                errors.append(str(exc))

        def writers(prefix: str, n: int) -> None:
            threads = [threading.Thread(target=write, args=(f"{prefix}{i}",))
                       for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)

        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process's write, left open
            writers("blocked/", 3)  # one waits for SQLite's lock, the others behind it
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert len(errors) == 3
        assert all("cannot take the write lock within 0.3s" in e for e in errors)
        assert backend.list("blocked/").items == []
        errors.clear()
        writers("free/", 8)
        assert errors == []
        assert [kv.key for kv in backend.list("free/").items] == [f"free/{i}" for i in range(8)]


def test_a_watch_from_a_compacted_revision_says_where_to_resume(tmp_path: Path) -> None:
    with open_backend(f"sqlite://{tmp_path}/s.db") as backend:
        revs = [backend.put(f"p/{i}", b"x") for i in range(6)]
        backend.compact(revs[3])
        with pytest.raises(Compacted) as info, backend.watch("p/", revs[1]) as w:
            w.next(timeout=1)
        assert info.value.compact_revision == revs[3]
        with backend.watch("p/", info.value.compact_revision) as w:
            assert [e.key for e in w.next(timeout=5)] == ["p/3", "p/4", "p/5"]


def _put_then_wait(url: str, ready: multiprocessing.synchronize.Event) -> None:
    backend = open_backend(url)
    backend.put("durable", b"yes")
    ready.set()
    time.sleep(3600)  # killed by the test


def test_a_write_survives_its_process_being_killed(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/s.db"
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_put_then_wait, args=(url, ready))
    p.start()
    try:
        assert ready.wait(30)
        p.kill()
        p.join(10)
    finally:
        if p.is_alive():
            p.kill()
    with SqliteBackend(tmp_path / "s.db") as backend:
        kv = backend.get("durable")
        assert kv is not None and kv.value == b"yes"


def test_a_puts_parameters_are_bound_without_sqlite3s_adapters(tmp_path: Path) -> None:
    # bytes and None parameters go through sqlite3's adapter lookup, which costs more
    # than the insert: a put binds its value as a bytearray and no lease as ''; what
    # comes back is the same (bytes, and None for no lease)
    from skedlib.store.base import Put

    adapted: list[object] = []

    def adapter(value: object) -> object:
        adapted.append(value)
        return value

    with open_backend(f"sqlite://{tmp_path}/s.db") as backend:
        lease = backend.grant_lease(30)
        for kind in (bytes, type(None)):
            sqlite3.register_adapter(kind, adapter)
        try:
            res = backend.txn([], [Put("k/a", b"\x00one"), Put("k/b", b"two", lease),
                                   Put("k/c", b"")])
        finally:
            for kind in (bytes, type(None)):
                sqlite3.adapters.pop((kind, sqlite3.PrepareProtocol), None)
        assert res.succeeded
        assert adapted == []
        items = {kv.key: kv for kv in backend.list("k/").items}
        assert {k: (type(kv.value), kv.value, kv.lease) for k, kv in items.items()} == {
            "k/a": (bytes, b"\x00one", None), "k/b": (bytes, b"two", lease),
            "k/c": (bytes, b"", None)}
        with backend.watch("k/", res.revision) as watch:
            seen = watch.next(timeout=5)
        assert [(type(e.value), e.value) for e in seen] == \
            [(bytes, b"\x00one"), (bytes, b"two"), (bytes, b"")]
        backend.revoke_lease(lease)  # the leased key goes with its lease
        assert sorted(kv.key for kv in backend.list("k/").items) == ["k/a", "k/c"]
        # a value that is not bytes is refused (bytearray(5) would be five zero bytes),
        # and nothing of its transaction is written
        for bad in (5, "text"):
            with pytest.raises(TypeError, match=r"put 'k/e': the value must be bytes"):
                backend.txn([], [Put("k/d", b"ok"), Put("k/e", bad)])  # type: ignore[arg-type]
        assert backend.get("k/d") is None
        backend.txn([], [Put("k/f", bytearray(b"ba")), Put("k/g", memoryview(b"mv"))])  # type: ignore[arg-type]
        assert [(kv.key, kv.value) for kv in backend.list("k/").items][2:] == \
            [("k/f", b"ba"), ("k/g", b"mv")]


def test_a_large_transaction_is_written_in_statements_of_many_rows(tmp_path: Path) -> None:
    # one INSERT per few hundred rows, not one step per row: sqlite3 hands the GIL to
    # other threads at every step, so a commit beside a planning thread would wait a
    # switch interval per row
    from skedlib.store.base import Delete, Put

    with open_backend(f"sqlite://{tmp_path}/s.db") as backend:
        assert isinstance(backend, SqliteBackend)
        backend.put("k/0005", b"old")
        first = backend.get("k/0005")
        assert first is not None
        backend._rows_per_insert = 7  # several statements, and a part-filled last one
        statements: list[str] = []
        writer = backend._write_conn  # every write of the process runs on it
        assert writer is not None
        writer.set_trace_callback(statements.append)
        ops = [Put(f"k/{i:04d}", f"v{i}".encode()) for i in range(40)]
        ops.insert(20, Delete("k/0005"))  # a delete between two runs of puts
        ops.append(Put("k/0036", b"again"))  # a key put twice in one statement
        res = backend.txn([], ops)
        writer.set_trace_callback(None)
        assert res.succeeded
        inserts = [s for s in statements if s.startswith("INSERT INTO")]
        # runs of 20 and 21 puts, 7 rows a statement: 3 + 3 upserts and as many event
        # inserts, and the delete's event
        assert len(inserts) == 13
        items = {kv.key: kv for kv in backend.list("k/").items}
        assert sorted(items) == [f"k/{i:04d}" for i in range(40) if i != 5]  # deleted
        assert items["k/0036"].value == b"again"
        assert all(items[f"k/{i:04d}"].value == f"v{i}".encode() for i in range(40)
                   if i not in (5, 36))
        assert {kv.revision for kv in items.values()} == {res.revision}
        # the events in the order of the operations, each with its value
        with backend.watch("k/", first.revision + 1) as watch:
            seen = watch.next(timeout=5)
        assert [(e.kind, e.key, e.value) for e in seen] == \
            [("put", op.key, op.value) if isinstance(op, Put) else ("delete", op.key, b"")
             for op in ops]


_CLOSE_BENEATH_A_CALL = """
import sys, threading, time
from skedlib.errors import BackendUnavailable
from skedlib.store.sqlite import SqliteBackend

backend = SqliteBackend(sys.argv[1])
backend.txn([], [])
started, results = threading.Event(), []

def slow():
    started.set()
    time.sleep(0.3)
    return 1

def call():
    try:
        with backend._guard("slow read"):  # a call of two statements, as txn() is
            conn = backend._conn()
            conn.create_function("slow", 0, slow)
            conn.execute("SELECT slow()").fetchone()
            results.append(conn.execute("SELECT 1").fetchone()[0])
    except Exception as exc:
        results.append(repr(exc))

worker = threading.Thread(target=call)
worker.start()
assert started.wait(5)
t0 = time.monotonic()
backend.close()
waited = time.monotonic() - t0
worker.join(5)
try:
    backend.get("k")
    after = "answered"
except BackendUnavailable as exc:
    after = str(exc)
print(repr((results, waited >= 0.2, after)))
"""


def test_close_waits_for_the_calls_running_on_its_connections(tmp_path: Path) -> None:
    """Closing a connection beneath a running call frees SQLite's handle under it: the
    process crashed (seen in a watch of the API's event stream, its store closed by the
    test). close() lets the running call finish first, and the calls after it are
    refused. Run in a process of its own, so that a crash fails this test only."""
    done = subprocess.run([sys.executable, "-c", _CLOSE_BENEATH_A_CALL,
                           str(tmp_path / "s.db")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    results, waited, after = ast.literal_eval(done.stdout.strip())
    assert results == [1]  # both of its statements ran on an open connection
    assert waited  # close() waited for the running call
    assert "the backend was closed" in after


def _enter(backend: SqliteBackend, context: str
           ) -> tuple[contextlib.AbstractContextManager[Any], sqlite3.Connection]:
    """Enter the backend's read (on the thread's connection) or write transaction
    context: the context and its connection."""
    if context == "_read":
        conn = backend._conn()
        left: contextlib.AbstractContextManager[Any] = backend._read(conn)
        left.__enter__()
        return left, conn
    left = backend._write()
    return left, left.__enter__()


@pytest.mark.parametrize("context", ["_read", "_write"])
def test_a_transaction_left_open_by_an_interrupt_ends_quietly_after_close(
        tmp_path: Path, context: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C that lands between a ``with`` entering the backend's transaction context
    and its block leaves the context unfinished (what ``__enter__`` below leaves); the
    program catches it, closes the backend and exits, and the collector finishes the
    context then. That printed ``Exception ignored … Cannot operate on a closed
    database`` at the exit of ``sked get -w``. It ends quietly now; before the close it
    still ends its transaction."""
    unraisable: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: unraisable.append(u.exc_value))
    backend = SqliteBackend(str(tmp_path / "s.db"))
    backend.put("k", b"v")
    left, conn = _enter(backend, context)  # the block never runs: an interrupt came first
    assert conn.in_transaction
    backend.close()
    del left
    gc.collect()
    assert unraisable == []

    # on an open backend the collector's finish ends the transaction as before
    backend = SqliteBackend(str(tmp_path / "s.db"))
    left, conn = _enter(backend, context)
    del left
    gc.collect()
    assert unraisable == [] and not conn.in_transaction
    assert backend.get("k") is not None
    backend.close()


def test_every_thread_writes_on_the_one_write_connection(tmp_path: Path) -> None:
    """A process's writes share one connection, taken in turn, whose page cache stays
    warm between them (each connection's cache is dropped when another has written);
    reads keep a connection per thread. A transaction an interrupt left open on it is
    rolled back by the next write instead of failing it."""
    backend = SqliteBackend(str(tmp_path / "s.db"))
    backend.put("k/main", b"1")
    writer = backend._write_conn
    assert writer is not None
    statements: list[str] = []
    writer.set_trace_callback(statements.append)
    seen: list[object] = []

    def other() -> None:
        backend.put("k/other", b"2")
        seen.append(backend._conn())

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert backend._write_conn is writer
    assert any(s.startswith("INSERT INTO kv") for s in statements)  # the other's put
    assert seen[0] is not writer and seen[0] is not backend._conn()  # its own reader

    writer.execute("BEGIN IMMEDIATE")  # left so by an interrupt between two statements
    writer.execute("INSERT INTO meta VALUES ('half', 1)")
    backend.put("k/after", b"3")
    assert not writer.in_transaction
    assert backend.get("k/after") is not None
    assert backend._conn().execute("SELECT 1 FROM meta WHERE name = 'half'").fetchone() \
        is None  # what the interrupted transaction wrote is gone
    backend.close()


def test_many_rows_come_back_whole_in_order_and_byte_for_byte(tmp_path: Path) -> None:
    """Reads of many rows (a list, a get of many keys, a watch's events) ask SQLite for
    a thousand rows in one result row (sqlite3 gives the GIL away at every row it
    steps): every row comes back, in order, every value byte for byte (NUL, bytes that
    are not UTF-8, empty ones), across several queries, and in smaller queries when
    SQLite's length limit would be passed."""
    from skedlib.store.base import Compare, Delete, Put

    backend = SqliteBackend(str(tmp_path / "s.db"))
    start = backend.put("other", b"x") + 1
    values = {f"k/{i:05d}": bytes([i % 256, 0, 0x80 + i % 64]) * (i % 5) for i in range(2500)}
    first = backend.txn([], [Put(k, v) for k, v in values.items()])
    backend.txn([], [Delete("k/00007")])
    written = dict(values)
    del values["k/00007"]
    listed = backend.list("k/")
    assert [kv.key for kv in listed.items] == sorted(values)
    assert {kv.key: kv.value for kv in listed.items} == values
    assert all(type(kv.value) is bytes and kv.revision == first.revision
               and kv.create_revision == first.revision and kv.lease is None
               for kv in listed.items)
    keys = [*reversed(values), "k/absent", "k/00010"]  # unordered, absent, repeated
    got = backend.get_many(keys)
    assert {k: kv.value for k, kv in got.items()} == values
    with backend.watch("k/", start) as watch:
        seen = watch.next(timeout=5)
    assert [(e.kind, e.key, e.value) for e in seen] == \
        [("put", k, v) for k, v in written.items()] + \
        [("delete", "k/00007", b"")]
    # compares on thousands of keys: all hold, or one does not
    held = [Compare(k, first.revision) for k in values] + [Compare("k/absent", 0)]
    assert backend.txn(held, []).succeeded
    assert not backend.txn([*held[:-1], Compare("k/absent", 3)], []).succeeded
    assert not backend.txn([*held[1:], Compare(held[0].key, first.revision + 1)],
                           []).succeeded

    # keys JSON escapes (the rows come back in JSON), and a NUL: read as written
    odd = ["o/a\x00b", "o/a", 'o/"q\\', "o/é😀"]
    put = backend.txn([], [Put(k, k.encode()) for k in odd])
    assert {k: kv.value for k, kv in backend.get_many([*odd, "o/a\x00c"]).items()} == \
        {k: k.encode() for k in odd}
    assert [kv.key for kv in backend.list("o/").items] == sorted(odd)
    assert backend.txn([Compare(k, put.revision) for k in odd]
                       + [Compare("o/a\x00c", 0)], []).succeeded
    assert not backend.txn([Compare("o/a\x00b", put.revision + 1)], []).succeeded
    assert not backend.txn([Compare("o/a\x00c", put.revision)], []).succeeded

    # runs of deletes between puts: a key that was there gets one event, at its first
    # delete, in the order of the operations; a put after a delete stands
    before = backend.txn([], [Put("d/d", b"0"), Put("d/x\x00", b"0"), Put("d/e", b"0")])
    ops = [Put("d/a", b"1"), Delete("d/a"), Delete("d/absent"), Put("d/c", b"3"),
           Delete("d/x\x00"), Delete("d/d"), Delete("d/e"), Delete("d/d"), Put("d/d", b"8")]
    done = backend.txn([], ops)
    assert {kv.key: kv.value for kv in backend.list("d/").items} == \
        {"d/c": b"3", "d/d": b"8"}
    with backend.watch("d/", before.revision + 1) as watch:
        seen = watch.next(timeout=5)
    assert [(e.kind, e.key, e.value, e.revision) for e in seen] == [
        ("put", "d/a", b"1", done.revision), ("delete", "d/a", b"", done.revision),
        ("put", "d/c", b"3", done.revision), ("delete", "d/x\x00", b"", done.revision),
        ("delete", "d/d", b"", done.revision), ("delete", "d/e", b"", done.revision),
        ("put", "d/d", b"8", done.revision)]

    # values whose sum passes SQLite's length limit: read in smaller queries
    conn = backend._conn()
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 20_000)
    big = {f"b/{i:03d}": bytes([i]) * 900 for i in range(60)}
    backend.txn([], [Put(k, v) for k, v in big.items()])
    assert {kv.key: kv.value for kv in backend.list("b/").items} == big
    assert {k: kv.value for k, kv in backend.get_many(list(big)).items()} == big
    backend.close()
