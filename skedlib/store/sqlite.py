"""``sqlite:///path``: the embedded default backend, one file shared by local processes.

An agent, a scheduler and the CLI on one machine may all open the same file. The file
is in WAL mode; every write transaction takes SQLite's write lock (``BEGIN IMMEDIATE``),
so compares and writes are atomic across processes. The threads of one process queue for
it on a lock of their own first, so the next write starts as soon as the last one
commits (SQLite's wait between processes polls, sleeping up to 100 ms at a time), and
write on one connection; each thread reads on a connection of its own. Reads of many
rows get them from SQLite in one result row per thousand (:data:`_ROWS_PER_READ` says
why). Needs SQLite's JSON functions (built in since 3.38, and in the common builds
before). Layout::

    kv(key, value, create_rev, mod_rev, lease)   the current state
    events(rev, seq, key, kind, value)           history for watches (the last ``history``
                                                 revisions are kept)
    leases(id, ttl, expires_at)                  wall-clock expiry
    meta(name, value)                            'revision', 'compacted'

Leases are enforced by whichever process touches the file next: every call first deletes
the keys of leases whose time has passed, so a lease expires even when its holder died.
Watches poll ``PRAGMA data_version`` (a change counter SQLite keeps per connection) every
``poll`` seconds (default 10 ms) and read the event log only when it moved, so they wake
within a few milliseconds of a write at almost no cost while idle.
"""

from __future__ import annotations

import builtins
import functools
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec

from skedlib._files import STATE_FILE_MODE, narrow, private_dirs
from skedlib.errors import BackendUnavailable, Compacted, LeaseExpired
from skedlib.keys import prefix_end
from skedlib.store.base import (
    Backend,
    Compare,
    KeyValue,
    ListResult,
    Op,
    Put,
    TxnResult,
    Watch,
    WatchEvent,
)

__all__ = ["SqliteBackend", "open_sqlite"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value BLOB NOT NULL, create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL, lease TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_lease ON kv(lease) WHERE lease IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    rev INTEGER NOT NULL, seq INTEGER NOT NULL, key TEXT NOT NULL, kind INTEGER NOT NULL,
    value BLOB NOT NULL, PRIMARY KEY (rev, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    id TEXT PRIMARY KEY, ttl REAL NOT NULL, expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS leases_expiry ON leases(expires_at);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta VALUES ('revision', 0), ('compacted', 0);
"""

_PUT, _DELETE = 0, 1
_COLUMNS = 5
"""Columns of a ``kv`` row and of an ``events`` row alike."""
_MAX_ROWS_PER_INSERT = 1000
"""Rows one ``INSERT`` of a transaction's puts (or their events) takes at most; fewer
when the SQLite build allows fewer parameters per statement.

One statement of many rows rather than ``executemany``: ``sqlite3`` lets other threads
take the GIL around every step, and ``executemany`` steps once per row. In a process
whose other threads run Python (a scheduler plans while a commit is written) each of
those steps then waits up to a switch interval to get the GIL back: a commit of a
thousand puts took seconds beside one busy thread, against milliseconds this way."""
_ROWS_PER_READ = 1000
"""Rows one read query returns at most, in its single result row (:data:`_KV_ROWS`).

``sqlite3`` lets other threads take the GIL at every step of a query, and a query steps
once per row it returns. Beside a thread that runs Python (a scheduler's planning, a
server's requests) each step then waits up to a switch interval to get the GIL back:
listing 2,000 keys took 3 ms alone and 1.1 to 3.2 s beside one busy thread, and a
commit's compares on 1,000 existing keys 7 ms and 0.4 to 0.9 s. So a read that returns
many rows asks SQLite for one row that holds them all: the rows' other columns as a
JSON array (with each value's length) and their values concatenated into one blob, a
thousand rows a query (fewer where that blob would pass SQLite's length limit). A
query by keys (a get of many keys, a transaction's compares and deletes) binds them,
up to :data:`_MAX_KEYS_PER_QUERY` a query, and its rows come back the same way."""
_MAX_KEYS_PER_QUERY = 2000
"""Keys one ``IN (…)`` binds at most; fewer when the SQLite build allows fewer
parameters per statement (999 in builds before 3.32)."""
_KV_ROWS = ("json_group_array(json_array(key, length(CAST(value AS BLOB)), mod_rev, "
            "create_rev, lease)), CAST(group_concat(value, '') AS BLOB)")
"""A query's ``kv`` rows in one result row: ``[key, value length, mod_rev, create_rev,
lease]`` for each, in JSON, and their values one after another (both aggregates see the
rows in the same order)."""
_LIST_SQL = (f"SELECT {_KV_ROWS} FROM (SELECT * FROM kv WHERE key >= ? AND key < ? "
             "ORDER BY key LIMIT ?)")
_GET_MANY_SQL = f"SELECT {_KV_ROWS} FROM kv WHERE key IN ({{}})"
_EVENTS_SQL = ("SELECT json_group_array(json_array(rev, seq, key, kind, "
               "length(CAST(value AS BLOB)))), CAST(group_concat(value, '') AS BLOB) "
               "FROM (SELECT * FROM events WHERE (rev, seq) > (?, ?) AND key >= ? "
               "AND key < ? ORDER BY rev, seq LIMIT ?)")
_REVISIONS_SQL = "SELECT json_group_array(json_array(key, mod_rev)) FROM kv WHERE key IN ({})"
_EXISTING_SQL = "SELECT json_group_array(key) FROM kv WHERE key IN ({})"
_DELETE_SQL = "DELETE FROM kv WHERE key IN ({})"
_NO_VALUE = bytearray()
"""A delete event's value (a ``bytearray``, bound as it is: see :data:`_KV_ROW`)."""


@functools.lru_cache(maxsize=64)
def _by_keys(sql: str, keys: int) -> str:
    """``sql`` with its ``IN ({})`` given ``keys`` parameters."""
    return sql.format(",".join("?" * keys))


def _rows(conn: sqlite3.Connection, sql: str, params: Sequence[Any], value: int
          ) -> list[list[Any]]:
    """The rows of a query of one result row, as :data:`_KV_ROWS` gives them, sorted
    (their first columns identify them: the aggregates' order is not promised), each
    with its value (column ``value``, given as its length) as bytes."""
    meta, blob = conn.execute(sql, params).fetchone()
    rows: list[list[Any]] = msgspec.json.decode(meta)
    at = 0
    for row in rows:
        end = at + row[value]
        row[value] = blob[at:end]
        at = end
    rows.sort()
    return rows


def _parts(keys: list[str], size: int) -> Iterator[list[str]]:
    """``keys``, ``size`` at a time."""
    for start in range(0, len(keys), size):
        yield keys[start:start + size]


def _read_rows(conn: sqlite3.Connection, sql: str, value: int, limit: int, *,
               after: tuple[Any, ...] = (), keys: Sequence[str] = ()
               ) -> tuple[list[list[Any]], int]:
    """One query's :func:`_rows` and the limit it used: ``sql`` takes ``after`` and the
    limit, or (:func:`_by_keys`) ``keys[:limit]``. The limit shrinks each time SQLite
    says the result row would pass its length limit (large values)."""
    while True:
        part = keys[:limit]
        query, params = (_by_keys(sql, len(part)), part) if keys else (sql, (*after, limit))
        try:
            return _rows(conn, query, params, value), limit
        except sqlite3.DataError:  # SQLITE_TOOBIG
            if limit == 1:
                raise
            limit = max(1, limit // 8)


_KV_ROW = "(?, ?, ?, ?, NULLIF(?, ''))"
"""A ``kv`` row's parameters in a put: key, value (a ``bytearray``), create and mod
revision, lease (``''`` for none).

``sqlite3`` binds ``int``, ``float``, ``str`` and ``bytearray`` parameters as they are,
but looks every ``bytes`` and ``None`` parameter up in its adapter registry first, and
that lookup raises and clears an ``AttributeError`` each time: about 3,300 instructions
a parameter on CPython 3.11, more than the row's insert. So a put's value is bound as a
``bytearray`` (one copy, made in C) and its lease as ``''`` when it has none; SQLite
stores the same BLOB, and NULL for no lease."""
_EVENT_ROW = "(?, ?, ?, ?, ?)"
"""An ``events`` row's parameters: revision, sequence, key, kind, value (a
``bytearray``, as in :data:`_KV_ROW`)."""


@functools.lru_cache(maxsize=256)
def _upsert_sql(rows: int) -> str:
    """Put ``rows`` keys (each a :data:`_KV_ROW`); a key that exists keeps its create
    revision."""
    return (f"INSERT INTO kv VALUES {', '.join([_KV_ROW] * rows)} ON CONFLICT(key) "
            "DO UPDATE SET value = excluded.value, mod_rev = excluded.mod_rev, "
            "lease = excluded.lease")


@functools.lru_cache(maxsize=256)
def _events_sql(rows: int) -> str:
    """Add ``rows`` rows (each an :data:`_EVENT_ROW`) to the ``events`` table."""
    return f"INSERT INTO events VALUES {', '.join([_EVENT_ROW] * rows)}"


class SqliteBackend(Backend):
    """The embedded store: safe across threads and processes on one machine."""

    min_lease_ttl = 0.1

    def __init__(self, path: str | os.PathLike[str], *, url: str = "",
                 timeout: float = 10.0, history: int = 100_000, poll: float = 0.01,
                 create: bool = True) -> None:
        self.path = Path(path)
        self.url = url or f"sqlite://{self.path}"
        self.timeout = timeout
        self.history = history
        self.poll = poll
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._rows_per_insert = _MAX_ROWS_PER_INSERT
        """Rows per ``INSERT`` of a transaction's puts (set by the SQLite build's limit
        when a connection opens)."""
        self._keys_per_query = _MAX_KEYS_PER_QUERY
        """Keys per ``IN (…)`` (set so too)."""
        self._closed = False
        self._in_use = 0
        """Calls running on this backend's connections (:class:`_Guard`)."""
        self._use = threading.Condition()
        self._next_expiry_check = 0.0
        self._writer = threading.Lock()
        """Held by the thread whose write transaction is open (one at a time in SQLite)."""
        self._write_conn: sqlite3.Connection | None = None
        """The connection every write transaction of this process runs on (under
        ``_writer``); made by the first write."""
        if not create and not self.path.is_file():
            # a reader must not leave an empty store (and its directories) behind
            raise BackendUnavailable(f"{self.path}: no such store (nothing was applied "
                                     "there; a write such as sked apply creates it)")
        try:
            self._create_private()
            self._conn().executescript(_SCHEMA)  # idempotent: safe if processes race
            # reads need SQLite's JSON functions: a build without them says so here
            self._conn().execute("SELECT json_array()")
        except (OSError, sqlite3.Error) as exc:
            raise BackendUnavailable(f"{self.url}: cannot open the store: {exc}") from exc

    # -- connections ----------------------------------------------------------------------
    def _create_private(self) -> None:
        """Create the store file readable by its owner only before SQLite opens it:
        SQLite gives the -wal and -shm files the mode of the database file. A directory
        made for it is 0700; the files of an existing store are narrowed to 0600."""
        if not self.path.parent.exists():
            private_dirs(self.path.parent)
        if not self.path.exists():
            # Made under a temporary name and linked into place: closing a descriptor of
            # the store file itself would drop the POSIX locks that another connection
            # of this process holds on it (SQLite's locking is per process and inode).
            tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}")
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                             STATE_FILE_MODE))
            try:
                os.link(tmp, self.path)
            except FileExistsError:  # another process or thread made it meanwhile
                pass
            finally:
                os.unlink(tmp)
        for suffix in ("", "-wal", "-shm", "-journal"):
            narrow(Path(f"{self.path}{suffix}"), STATE_FILE_MODE)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
        variables = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._rows_per_insert = max(1, min(_MAX_ROWS_PER_INSERT, variables // _COLUMNS))
        self._keys_per_query = max(1, min(_MAX_KEYS_PER_QUERY, variables))
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise BackendUnavailable(f"{self.url}: the backend was closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on the process's write connection: one connection for
        every thread's writes, taken in turn. A connection's page cache is dropped
        whenever another connection has written, so writers that each had their own
        started every transaction cold (the pages of the kv and events indexes read
        again); this one stays warm while only this process writes."""
        # this process's writers queue here, and the next one goes as soon as the last
        # one commits; SQLite's own wait (between processes) polls, sleeping up to 100 ms
        if not self._writer.acquire(timeout=self.timeout):
            raise BackendUnavailable(f"{self.url}: cannot take the write lock within "
                                     f"{self.timeout}s: this process's other writes "
                                     "hold it")
        try:
            conn = self._write_conn
            if conn is None:
                if self._closed:
                    raise BackendUnavailable(f"{self.url}: the backend was closed")
                conn = self._write_conn = self._connect()
            elif conn.in_transaction:  # left open by an interrupt between two statements
                self._end(conn, "ROLLBACK")
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise BackendUnavailable(f"{self.url}: cannot take the write lock within "
                                         f"{self.timeout}s: {exc}") from exc
            try:
                yield conn
            except BaseException:
                self._end(conn, "ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")
        finally:
            self._writer.release()

    @contextmanager
    def _read(self, conn: sqlite3.Connection) -> Iterator[None]:
        conn.execute("BEGIN")
        try:
            yield
        finally:
            self._end(conn, "COMMIT")

    def _end(self, conn: sqlite3.Connection, statement: str) -> None:
        """End a transaction (``COMMIT`` or ``ROLLBACK``); nothing when the backend was
        closed meanwhile. A Ctrl-C that lands between a ``with`` entering one of the
        contexts above and its block leaves the context unfinished, for the collector
        to finish later, maybe after :meth:`close` (``sked … -w`` exits so): the
        connection is gone, and so is its transaction."""
        try:
            conn.execute(statement)
        except sqlite3.ProgrammingError:
            if not self._closed:
                raise

    # -- internals ------------------------------------------------------------------------
    @staticmethod
    def _revision(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM meta WHERE name='revision'").fetchone()
        return int(row[0])

    def _expire(self, conn: sqlite3.Connection) -> None:
        now = time.time()
        if now < self._next_expiry_check:
            return
        self._next_expiry_check = now + 0.02
        if conn.execute("SELECT 1 FROM leases WHERE expires_at <= ? LIMIT 1",
                        (now,)).fetchone() is None:
            return
        with self._write() as writer:
            dead = [r[0] for r in writer.execute(
                "SELECT id FROM leases WHERE expires_at <= ?", (time.time(),))]
            self._end_leases(writer, dead)

    def _end_leases(self, conn: sqlite3.Connection, lease_ids: Sequence[str]) -> None:
        keys: list[str] = []
        for lid in lease_ids:
            keys += [r[0] for r in conn.execute("SELECT key FROM kv WHERE lease = ?", (lid,))]
            conn.execute("DELETE FROM leases WHERE id = ?", (lid,))
        if keys:
            rev = self._revision(conn) + 1
            for seq, key in enumerate(sorted(keys)):
                conn.execute("DELETE FROM kv WHERE key = ?", (key,))
                conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                             (rev, seq, key, _DELETE, b""))
            self._bump(conn, rev)

    def _bump(self, conn: sqlite3.Connection, rev: int) -> None:
        conn.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (rev,))
        if rev % 1000 == 0 and rev > self.history:
            self._compact(conn, rev - self.history)

    @staticmethod
    def _compact(conn: sqlite3.Connection, revision: int) -> None:
        conn.execute("DELETE FROM events WHERE rev < ?", (revision,))
        conn.execute("UPDATE meta SET value = max(value, ?) WHERE name = 'compacted'",
                     (revision - 1,))

    def _guard(self, what: str) -> _Guard:
        return _Guard(self, what)

    def _begin_use(self) -> None:
        with self._use:
            if self._closed:
                raise BackendUnavailable(f"{self.url}: the backend was closed")
            self._in_use += 1

    def _end_use(self) -> None:
        with self._use:
            self._in_use -= 1
            if not self._in_use and self._closed:
                self._use.notify_all()

    # -- primitives -----------------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        with self._guard("get"):
            conn = self._conn()
            self._expire(conn)
            row = conn.execute("SELECT key, value, mod_rev, create_rev, lease FROM kv "
                               "WHERE key = ?", (key,)).fetchone()
            return KeyValue(row[0], row[1], row[2], row[3], row[4]) if row else None

    def get_many(self, keys: Sequence[str]) -> dict[str, KeyValue]:
        """The keys' current values, read in one read transaction (up to
        :data:`_MAX_KEYS_PER_QUERY` keys a query)."""
        wanted = builtins.list(dict.fromkeys(keys))
        found: dict[str, KeyValue] = {}
        with self._guard("get"):
            conn = self._conn()
            self._expire(conn)
            with self._read(conn):
                start, limit = 0, self._keys_per_query
                while start < len(wanted):
                    rows, limit = _read_rows(conn, _GET_MANY_SQL, 1, limit,
                                             keys=wanted[start:start + limit])
                    found.update((row[0], KeyValue(*row)) for row in rows)
                    start += limit
        return found

    def list(self, prefix: str) -> ListResult:
        with self._guard("list"):
            conn = self._conn()
            self._expire(conn)
            with self._read(conn):
                rev = self._revision(conn)
                items: list[KeyValue] = []
                low, high, limit = prefix, prefix_end(prefix), _ROWS_PER_READ
                while True:
                    rows, limit = _read_rows(conn, _LIST_SQL, 1, limit, after=(low, high))
                    items += [KeyValue(*row) for row in rows]
                    if len(rows) < limit:
                        break
                    low = rows[-1][0] + "\x00"  # the least key after the last one
            return ListResult(items, rev)

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        with self._guard("txn"):
            self._expire(self._conn())
            with self._write() as conn:
                rev = self._revision(conn)
                if not self._compares_hold(conn, compares):
                    return TxnResult(False, rev)
                if not ops:
                    return TxnResult(True, rev)
                leases = {op.lease for op in ops if isinstance(op, Put) and op.lease}
                for lease in leases:
                    if conn.execute("SELECT 1 FROM leases WHERE id = ? AND expires_at > ?",
                                    (lease, time.time())).fetchone() is None:
                        raise LeaseExpired(f"{self.url}: lease {lease} does not exist")
                rev += 1
                # runs of puts go to SQLite in statements of many rows (a plan's commit
                # is one transaction of thousands of puts), their parameters gathered
                # flat; runs of deletes in a few statements (_delete_many)
                puts: list[Any] = []
                events: list[Any] = []
                deletes: list[tuple[str, int]] = []
                for seq, op in enumerate(ops):
                    if isinstance(op, Put):
                        self._delete_many(conn, deletes, rev)
                        given = op.value
                        if type(given) is not bytes and \
                                not isinstance(given, (bytearray, memoryview)):
                            raise TypeError(f"{self.url}: put {op.key!r}: the value must "
                                            f"be bytes, not {type(given).__name__}")
                        value = bytearray(given)  # bound without adapting: _KV_ROW
                        puts += (op.key, value, rev, rev, op.lease or "")
                        events += (rev, seq, op.key, _PUT, value)
                        continue
                    self._put_many(conn, puts, events)
                    deletes.append((op.key, seq))
                self._put_many(conn, puts, events)
                self._delete_many(conn, deletes, rev)
                self._bump(conn, rev)
                return TxnResult(True, rev)

    def _compares_hold(self, conn: sqlite3.Connection, compares: Sequence[Compare]) -> bool:
        """Every compare holds: the keys' revisions read up to
        :data:`_MAX_KEYS_PER_QUERY` at a time, each query's in one result row (a plan's
        commit compares thousands of task keys)."""
        want: dict[str, int] = {}
        for c in compares:
            if want.setdefault(c.key, c.revision) != c.revision:
                return False  # one key, two revisions: both cannot hold
        for part in _parts(builtins.list(want), self._keys_per_query):
            found = dict(msgspec.json.decode(conn.execute(
                _by_keys(_REVISIONS_SQL, len(part)), part).fetchone()[0]))
            if any(found.get(key, 0) != want[key] for key in part):
                return False
        return True

    def _put_many(self, conn: sqlite3.Connection, puts: builtins.list[Any],
                  events: builtins.list[Any]) -> None:
        """Write the gathered puts and their events (flat: :data:`_COLUMNS` values a
        row, in order), up to ``_rows_per_insert`` rows a statement, and empty the
        lists."""
        step = self._rows_per_insert * _COLUMNS
        for values, sql in ((puts, _upsert_sql), (events, _events_sql)):
            for start in range(0, len(values), step):
                part = values[start:start + step]
                conn.execute(sql(len(part) // _COLUMNS), part)
            values.clear()

    def _delete_many(self, conn: sqlite3.Connection, deletes: builtins.list[tuple[str, int]],
                     rev: int) -> None:
        """Delete the gathered keys (each with its operation's place in the
        transaction) and add an event for each key that was there, at its first
        delete; empty the list. Two statements per :data:`_MAX_KEYS_PER_QUERY` keys
        (which are there, the delete) and the events' inserts, not two statements per key
        (see :data:`_ROWS_PER_READ`)."""
        if not deletes:
            return
        first: dict[str, int] = {}
        for key, seq in deletes:
            first.setdefault(key, seq)
        deletes.clear()
        events: list[Any] = []
        for part in _parts(builtins.list(first), self._keys_per_query):
            there = msgspec.json.decode(conn.execute(
                _by_keys(_EXISTING_SQL, len(part)), part).fetchone()[0])
            conn.execute(_by_keys(_DELETE_SQL, len(part)), part)
            for key in there:
                events += (rev, first[key], key, _DELETE, _NO_VALUE)
        self._put_many(conn, [], events)

    def watch(self, prefix: str, start_revision: int) -> Watch:
        return _SqliteWatch(self, prefix, start_revision)

    def grant_lease(self, ttl: float) -> str:
        ttl = max(ttl, self.min_lease_ttl)
        lease_id = uuid.uuid4().hex
        with self._guard("grant lease"), self._write() as conn:
            conn.execute("INSERT INTO leases VALUES (?, ?, ?)",
                         (lease_id, ttl, time.time() + ttl))
        return lease_id

    def keepalive(self, lease: str) -> None:
        with self._guard("keep-alive"):
            self._expire(self._conn())
            with self._write() as conn:
                cur = conn.execute("UPDATE leases SET expires_at = ? + ttl "
                                   "WHERE id = ? AND expires_at > ?",
                                   (time.time(), lease, time.time()))
                if cur.rowcount == 0:
                    raise LeaseExpired(f"{self.url}: lease {lease} does not exist")

    def revoke_lease(self, lease: str) -> None:
        with self._guard("revoke lease"), self._write() as conn:
            self._end_leases(conn, [lease])

    def compact(self, revision: int) -> None:
        with self._guard("compact"), self._write() as conn:
            self._compact(conn, min(revision, self._revision(conn)))

    def close(self) -> None:
        """Close every connection, once the calls running on them have returned (for up
        to the backend's timeout; a connection still in use then is left to be closed
        when it is dropped: closing it beneath a running call frees SQLite's handle under
        that call). Later calls raise :class:`BackendUnavailable`."""
        with self._use:
            self._closed = True
            idle = self._use.wait_for(lambda: not self._in_use, timeout=self.timeout)
        with self._conns_lock:
            conns, self._conns = self._conns, []
        if not idle:
            return
        for conn in conns:
            with suppress(sqlite3.Error):
                conn.close()

    # -- used by watches ------------------------------------------------------------------
    def _forget(self, conn: sqlite3.Connection) -> None:
        with self._conns_lock:
            if conn in self._conns:
                self._conns.remove(conn)
        conn.close()

    def _poll_events(self, conn: sqlite3.Connection, prefix: str,
                     start: int) -> tuple[builtins.list[WatchEvent], int]:
        """The events under ``prefix`` from ``start`` on, and the revision read at (a
        watch with no events may resume after it: nothing under its prefix came before)."""
        self._expire(conn)
        with self._read(conn):
            compacted = conn.execute(
                "SELECT value FROM meta WHERE name = 'compacted'").fetchone()[0]
            if start <= compacted:
                raise Compacted(f"{self.url}: revision {start} was compacted; the oldest "
                                f"watchable revision is {compacted + 1}", compacted + 1)
            rows: list[list[Any]] = []
            after, high, limit = (start, -1), prefix_end(prefix), _ROWS_PER_READ
            while True:
                part, limit = _read_rows(conn, _EVENTS_SQL, 4, limit,
                                         after=(*after, prefix, high))
                rows += part
                if len(part) < limit:
                    break
                after = (part[-1][0], part[-1][1])
            revision = self._revision(conn)
        return [WatchEvent("put" if kind == _PUT else "delete", key, value, rev)
                for rev, _, key, kind, value in rows], revision


class _Guard:
    """One call on a backend's connections: counted while it runs (:meth:`close` waits
    for it), its sqlite3 errors translated into BackendUnavailable naming the store and
    the call."""

    __slots__ = ("backend", "what")

    def __init__(self, backend: SqliteBackend, what: str) -> None:
        self.backend = backend
        self.what = what

    def __enter__(self) -> None:
        self.backend._begin_use()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        self.backend._end_use()
        if isinstance(exc, sqlite3.Error):
            raise BackendUnavailable(f"{self.backend.url}: {self.what} failed: {exc}") \
                from exc


class _SqliteWatch(Watch):
    def __init__(self, backend: SqliteBackend, prefix: str, start_revision: int) -> None:
        self._backend = backend
        self._prefix = prefix
        self._next = max(start_revision, 1)
        self._closed = threading.Event()
        self._conn = backend._connect()
        self._lock = threading.Lock()
        self._seen_version: int | None = None

    def next(self, timeout: float | None = None) -> list[WatchEvent]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not self._closed.is_set():
                with self._backend._guard("watch"):
                    version = self._conn.execute("PRAGMA data_version").fetchone()[0]
                    if version != self._seen_version or time.time() >= \
                            self._backend._next_expiry_check:
                        self._seen_version = version
                        events, revision = self._backend._poll_events(
                            self._conn, self._prefix, self._next)
                        if events:
                            self._next = events[-1].revision + 1
                            return events
                        # nothing under the prefix up to ``revision``: move past it, so a
                        # quiet watch neither rescans old events nor falls behind a
                        # compaction
                        self._next = max(self._next, revision + 1)
                wait = self._backend.poll
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return []
                    wait = min(wait, left)
                self._closed.wait(wait)
        return []

    def close(self) -> None:
        self._closed.set()
        with self._lock:  # a running next() sees the event within one poll
            self._backend._forget(self._conn)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()


_CREATE_OPTION = re.compile(r"[?&]create=(?:true|false|1|0)$", re.IGNORECASE)
"""A trailing ``create`` option, as :func:`read_only_url` adds it."""


def read_only_url(url: str) -> str:
    """``url`` with ``create=false`` (unless it says otherwise): the store is opened only
    if it exists, so a reader never leaves an empty store (and its directories) behind."""
    if "create=" in urlsplit(url).query:
        return url
    return f"{url}{'&' if '?' in url else '?'}create=false"


def open_sqlite(url: str) -> SqliteBackend:
    """Open ``sqlite:///absolute/path.db`` or ``sqlite://relative/path.db``.

    Query options: ``timeout`` (seconds to wait for the write lock, default 10),
    ``history`` (revisions kept for watches, default 100000), ``create`` (``false``:
    open an existing store only, as read-only commands do; default ``true``).
    """
    parts = urlsplit(url)
    url = _CREATE_OPTION.sub("", url)  # messages show the URL as the user wrote it
    path = unquote(parts.netloc + parts.path)
    if not path:
        raise BackendUnavailable(f"{url}: no file path (expected sqlite:///path/to/file.db)")
    query = parse_qs(parts.query)
    try:
        timeout = float(query.get("timeout", ["10"])[0])
        history = int(query.get("history", ["100000"])[0])
        create = {"true": True, "1": True, "false": False, "0": False}[
            query.get("create", ["true"])[0].lower()]
    except (ValueError, KeyError):
        raise BackendUnavailable(f"{url}: timeout must be a number of seconds, history "
                                 "a whole number of revisions and create true or false"
                                 ) from None
    if not (0 < timeout <= 86400 and history > 0):  # also refuses nan and inf
        raise BackendUnavailable(f"{url}: timeout must be in (0, 86400] seconds and history "
                                 "greater than 0")
    return SqliteBackend(path, url=url, timeout=timeout, history=history, create=create)
