"""Events: a short, bounded history of what happened to each task, service, host and job.

An :class:`Event` says what happened (``reason``: placed, started, healthy, restarted …),
when, who saw it (``source``: ``scheduler``, ``agent h1``, ``job worker n1``) and the
details (the host and score of a placement, the attempt of a restart …). ``sked
describe`` prints them; the API serves them at ``GET /v1/events?kind=&name=``.

The store keeps one record per object, an :class:`EventHistory` at
``<prefix>events/<kind>/<name>`` (:class:`EventKeyspace`) holding its last
:data:`MAX_EVENTS` events, oldest first. One key per object rather than one key per
event, because that is what every backend does well: a write is one compare-and-swap of
a small value (no counter to keep, no old keys to list and delete: the bound holds by
construction), and ``describe`` reads one key. The record is bound to a lease of
:data:`EVENT_TTL` seconds, renewed by every write, so the store itself drops the history
of an object nothing happened to for that long (a deleted task, a finished job); events
older than the TTL are also dropped from a record when it is read or written.

Emitters use an :class:`EventLog`: :meth:`EventLog.record` never blocks and never raises.
It queues the event in memory (at most :data:`QUEUE_LIMIT`; beyond that the oldest queued
are dropped) and a background thread writes the queue in batches: the events of one
object are merged into one write, and the writes of several objects are packed into as
few transactions as the backend takes. A writer remembers the revision (and events) it
last wrote to each of its last :data:`KNOWN_RECORDS` records, and compares with that;
a record it does not know is compared as absent. Only the records of a transaction whose
compares failed (somebody else wrote them since, or their lease ended) are read, together,
and merged in the next round, so a record another recorder changed is never overwritten.
Events are best effort: a write that keeps failing (the store is away) is dropped with a
debug line in the log, and the operation that recorded it never waits for it. Nor does
the process's work wait for its events: in a burst (a deploy of thousands of tasks) the
writer spends at most :data:`WRITER_SHARE` of its time writing, and the queue keeps the
newest events. Dropped events are counted (:attr:`EventLog.dropped`, and the
``skedlib_events_dropped_total`` metric).
"""

from __future__ import annotations

import collections
import logging
import operator
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal, get_args

import msgspec

from skedlib.errors import InvalidName, LeaseExpired, SkedError
from skedlib.keys import KeyTable, KeyTemplate, Name, Segment
from skedlib.metrics import METRICS
from skedlib.runtime.store import Store
from skedlib.runtime.writer import pack, room_for
from skedlib.store.base import Backend, Compare, Put

__all__ = [
    "EVENT_TTL",
    "KNOWN_RECORDS",
    "MAX_EVENTS",
    "MAX_REST",
    "OBJECT_KINDS",
    "QUEUE_LIMIT",
    "WRITER_SHARE",
    "Event",
    "EventHistory",
    "EventKey",
    "EventKeyspace",
    "EventLog",
    "ObjectKind",
    "describe_details",
    "read_events",
]

log = logging.getLogger("skedlib.events")

ObjectKind = Literal["task", "service", "host", "job"]
"""What an event is about."""
OBJECT_KINDS: Final = get_args(ObjectKind)
MAX_EVENTS = 50
"""How many events a record keeps per object: the oldest go first."""
EVENT_TTL = 3600.0
"""Seconds an event is kept (and a record with no newer event)."""
QUEUE_LIMIT = 1000
"""Events an :class:`EventLog` holds in memory before it drops the oldest."""
FLUSH_INTERVAL = 0.2
"""Seconds the writer waits for more events before it writes a batch."""
WRITER_SHARE = 0.1
"""The most of its time a writer spends writing while events keep coming: after a batch
that took ``t`` seconds it waits ``t * (1 / WRITER_SHARE - 1)`` (at least
:data:`FLUSH_INTERVAL`) before the next, so a burst of events (a deploy of thousands of
tasks) takes a tenth of the process, not a share equal to its busiest thread's, and the
queue drops its oldest meanwhile. :meth:`EventLog.flush` and :meth:`EventLog.close` do
not wait for it, and it is never longer than :data:`MAX_REST`."""
MAX_REST = 5.0
"""The longest rest after a batch, in seconds: a batch that took long because the store
was slow or away (its calls waiting for their timeouts) does not hold the next one back
for minutes."""
_ATTEMPTS = 5
"""Rounds of compare-and-swap for one batch before its rest is dropped."""
KNOWN_RECORDS = 4096
"""Records whose last write an :class:`EventLog` remembers (revision and events), so
that writing them again needs no read."""


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One thing that happened to an object."""

    time: float
    """UNIX seconds."""
    reason: str
    """One word: placed, unschedulable, moved, rejected, started, healthy, unhealthy,
    restarted, stopped, evicted, oom; for a job: queued, running, complete, failed,
    canceled."""
    message: str = ""
    """One line for people."""
    source: str = ""
    """Who recorded it: ``scheduler``, ``agent <host>``, ``job worker <node>``."""
    details: dict[str, str] = msgspec.field(default_factory=dict)
    """Structured facts (``host``, ``score``, ``attempt``, ``exit`` …)."""


class EventHistory(msgspec.Struct, kw_only=True):
    """The stored record of one object: its last events, oldest first."""

    kind: str
    name: str
    events: list[Event] = msgspec.field(default_factory=list)


class EventKey(msgspec.Struct, frozen=True, tag=True):
    """The event history of one object."""

    kind: str
    name: str


class _Kind(Segment):
    """One of :data:`ObjectKind`."""

    def format(self, value: Any) -> str:
        if value not in OBJECT_KINDS:
            raise InvalidName(f"invalid event object kind {value!r}: expected one of "
                              f"{', '.join(OBJECT_KINDS)}")
        return str(value)

    def parse(self, text: str) -> str | None:
        return text if text in OBJECT_KINDS else None


class EventKeyspace(KeyTable[EventKey]):
    """The event keys under a keyspace's prefix.

    >>> from skedlib.keys import Keyspace
    >>> EventKeyspace(Keyspace()).event_history("task", "default-web-1-0")
    'sked/events/task/default-web-1-0'
    """

    schema = "skedlib's event key schema"

    event_history = KeyTemplate("events/{kind}/{name}", EventKey, kind=_Kind(),
                                name=Name("object name"))
    #: every history
    histories = event_history.prefix()
    #: ``histories_of(kind)``: the histories of one kind of object
    histories_of = event_history.prefix_for("kind")


_decode_history = msgspec.json.Decoder(EventHistory)
_encode = msgspec.json.Encoder()


_Queued = tuple[str, str, str, str, float, dict[str, str]]
"""An event as :meth:`EventLog.record` queues it: kind, name, reason, message, time,
details."""


_by_time = operator.attrgetter("time")


def _fresh(events: Iterable[Event], now: float, ttl: float) -> list[Event]:
    """``events`` younger than ``ttl``, oldest first, the last :data:`MAX_EVENTS`."""
    kept = [e for e in events if now - e.time < ttl]
    if len(kept) > 1:  # (a new object's record: one event, nothing to sort)
        kept.sort(key=_by_time)
    return kept[-MAX_EVENTS:]


def _history(value: bytes | None, kind: str, name: str) -> EventHistory:
    if value is None:
        return EventHistory(kind=kind, name=name)
    try:
        return _decode_history.decode(value)
    except msgspec.DecodeError:  # a damaged record: start it again rather than fail
        return EventHistory(kind=kind, name=name)


def read_events(store: Store, kind: ObjectKind, name: str, *,
                ttl: float = EVENT_TTL) -> list[Event]:
    """The events of object ``name`` of ``kind``, oldest first (empty when there are none).

    Raises :class:`~skedlib.errors.InvalidName` for a bad kind or name."""
    key = EventKeyspace(store.keys).event_history(kind, name)
    kv = store.get(key)
    if kv is None:
        return []
    return _fresh(_history(kv.value, kind, name).events, time.time(), ttl)


class EventLog:
    """Records events in the background, in batches; see the module's docstring.

    ``source`` names the recorder in every event (``agent h1``). The writer thread starts
    with the first event; :meth:`close` writes what is queued (for up to ``timeout``
    seconds) and stops it.
    """

    def __init__(self, store: Store | Backend, source: str, *, ttl: float = EVENT_TTL,
                 enabled: bool = True) -> None:
        self.store = Store.of(store)
        self.keys = EventKeyspace(self.store.keys)
        self.source = source
        self.ttl = ttl
        self.enabled = enabled
        self.dropped = 0
        """Events dropped (the queue was full, or their write kept failing); counted
        into the ``skedlib_events_dropped_total`` metric by the writer, after each
        batch."""
        self._counted = 0
        """How many of :attr:`dropped` the metric has (writer thread only)."""
        self._queue: collections.deque[_Queued] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._hurry = threading.Event()
        """Set by :meth:`flush`: somebody waits for the queue (no rest between batches)."""
        self._closed = False
        self._thread: threading.Thread | None = None
        self._idle = threading.Condition(self._lock)
        self._writing = False
        self._lease: str | None = None
        self._lease_at = 0.0
        self._known: collections.OrderedDict[str, tuple[int, list[Event]]] = \
            collections.OrderedDict()
        """Record key → the revision and events this log last wrote there (writer thread
        only; oldest first)."""

    def record(self, kind: ObjectKind, name: str, reason: str, message: str = "",
               **details: object) -> None:
        """Queue an event about ``name`` of ``kind``; never blocks, never raises.

        Only its parts are queued: its key and :class:`Event` are built by the writer,
        so an event dropped from a full queue costs next to nothing (a bad kind or name
        is left out there, with a debug line, as before)."""
        if not self.enabled or not name:
            return
        try:
            said = {k: str(v) for k, v in details.items() if v is not None} \
                if details else {}
        except Exception as exc:  # a value without a str(): never the emitter's problem
            log.debug("event %s of %s %r not recorded: %s", reason, kind, name, exc)
            return
        entry = (kind, name, reason, message, time.time(), said)
        with self._lock:
            if self._closed:
                return
            if len(self._queue) >= QUEUE_LIMIT:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="event-writer",
                                                daemon=True)
                self._thread.start()
        if not self._wake.is_set():  # cleared by the writer as it takes the queue
            self._wake.set()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until what was queued so far is written (or dropped); False on timeout."""
        deadline = time.monotonic() + timeout
        self._hurry.set()
        self._wake.set()
        with self._idle:
            while self._queue or self._writing:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None:
                    return not (self._queue or self._writing)
                self._idle.wait(min(left, 0.1))
                self._hurry.set()
                self._wake.set()
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (for up to ``timeout`` seconds), then stop the writer."""
        self.flush(timeout)
        with self._lock:
            self._closed = True
        self._hurry.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the writer thread ------------------------------------------------------------
    def _run(self) -> None:
        resume = 0.0  # the next batch is written no sooner (monotonic; WRITER_SHARE)
        while True:
            self._wake.wait()
            # let a burst gather into one batch, and after a long batch rest for longer,
            # unless somebody waits for the queue
            self._hurry.wait(max(FLUSH_INTERVAL, resume - time.monotonic()))
            with self._lock:
                self._wake.clear()
                self._hurry.clear()
                batch = list(self._queue)
                self._queue.clear()
                self._writing = bool(batch)
                closed = self._closed
            if batch:
                started = time.monotonic()
                try:
                    self._write(batch)
                except Exception as exc:  # best effort: never take the emitter down
                    self.dropped += len(batch)
                    log.debug("events not recorded: %s", exc)
                ended = time.monotonic()
                resume = ended + min(MAX_REST, (ended - started) * (1 / WRITER_SHARE - 1))
                with self._idle:
                    self._writing = False
                    self._idle.notify_all()
            dropped = self.dropped
            if dropped != self._counted:
                METRICS.events_dropped.inc(dropped - self._counted)
                self._counted = dropped
            if closed:
                return

    def _lease_id(self, renew: bool = False) -> str:
        """A lease of the TTL, granted again once half of it is gone, so a record ends
        between TTL/2 and TTL after its last write."""
        now = time.monotonic()
        if renew or self._lease is None or now - self._lease_at > self.ttl / 2:
            self._lease = self.store.backend.grant_lease(self.ttl)
            self._lease_at = now
        return self._lease

    def _write(self, batch: list[_Queued]) -> None:
        pending: dict[str, tuple[str, str, list[Event]]] = {}
        history_key, source = self.keys.event_history, self.source
        for kind, name, reason, message, at, details in batch:
            try:
                key = history_key(kind, name)
            except (SkedError, ValueError, TypeError) as exc:
                log.debug("event %s of %s %r not recorded: %s", reason, kind, name, exc)
                continue
            pending.setdefault(key, (kind, name, []))[2].append(Event(
                time=at, reason=reason, message=message, source=source, details=details))
        backend = self.store.backend
        known = self._known
        # each record as this log believes it is stored: (revision, events); a record it
        # never wrote is believed absent, and is read only when that proves wrong
        stored = {key: known.pop(key, (0, [])) for key in pending}
        renew = False
        for _ in range(_ATTEMPTS):
            lease = self._lease_id(renew)
            renew = False
            now = time.time()
            groups: list[tuple[str, Compare, Put, list[Event]]] = []
            for key, (kind, name, events) in pending.items():
                revision, before = stored[key]
                history = EventHistory(kind=kind, name=name,
                                       events=_fresh([*before, *events], now, self.ttl))
                groups.append((key, Compare(key, revision),
                               Put(key, _encode.encode(history), lease=lease), history.events))
            room = room_for(backend, (), 2 * len(groups))
            stale: list[str] = []
            for chunk in pack(groups, room, lambda _g: 2):
                try:
                    res = backend.txn([g[1] for g in chunk], [g[2] for g in chunk])
                except LeaseExpired:
                    renew = True  # the lease ended early (a store restored): a new one
                    continue
                if res.succeeded:
                    for key, _, _, events in chunk:
                        pending.pop(key, None)
                        self._remember(key, res.revision, events)
                else:  # written by someone else since (or dropped by its lease)
                    stale += [g[0] for g in chunk]
            if not pending:
                return
            if stale:
                current = backend.get_many(stale)
                for key in stale:
                    kv = current.get(key)
                    kind, name, _ = pending[key]
                    stored[key] = (kv.revision, _history(kv.value, kind, name).events) \
                        if kv is not None else (0, [])
        self.dropped += sum(len(v[2]) for v in pending.values())
        log.debug("events of %d object(s) not recorded: their records kept changing",
                  len(pending))

    def _remember(self, key: str, revision: int, events: list[Event]) -> None:
        """What this log wrote at ``key`` (the last :data:`KNOWN_RECORDS` records)."""
        known = self._known
        known[key] = (revision, events)
        if len(known) > KNOWN_RECORDS:
            known.popitem(last=False)


def describe_details(details: Mapping[str, str]) -> str:
    """``details`` as ``key=value`` words, for one line."""
    return " ".join(f"{k}={v}" for k, v in sorted(details.items()))
