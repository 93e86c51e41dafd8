"""Several datacenters: reading each within a time limit, and the federation step that
expands a global service into per-datacenter desired state (docs/datacenters.md).

A datacenter is its own store (an etcd cluster, a Consul datacenter's KV) with its own
scheduler daemons and agents. Nothing here is shared between datacenters: this module
only talks to each store in turn, in parallel, through the ordinary :class:`Client`, so a
datacenter that does not answer is reported and never blocks the others.

- :func:`each_datacenter` runs a function against every datacenter's client, a thread per
  datacenter, and gives back an :class:`DatacenterOutcome` per datacenter (its value, or why it
  did not answer within the time limit); :func:`unreachable` lists those that did not
  answer, the one shape the CLI's ``-o json`` and the REST API give them in;
- :class:`DatacenterFollower` reads every datacenter again whenever its store changes (a
  thread and a client per datacenter), for ``sked --all-datacenters … --watch``: one that
  goes away is reported and the others keep updating;
- :func:`parse_global` reads a global manifest: an ordinary manifest plus a
  ``placement`` section saying how many tasks of a service each datacenter runs
  (``per_datacenter: {east: 2, west: 1}``, or ``total: 6`` spread by ``weights``);
- :func:`expand` turns it into one :class:`Manifest` per datacenter, and
  :func:`federate` writes each with :meth:`Client.apply`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec
import yaml

from skedlib.client import ApplyResult, Client
from skedlib.codecs import ManifestDocument, object_label, parse_manifest
from skedlib.errors import SkedError, ValidationError, one_line
from skedlib.models import Manifest
from skedlib.runtime import Backoff, wait_for_change
from skedlib.validation import check_cluster, check_service, check_task_definition

__all__ = [
    "DEFAULT_TIMEOUT",
    "Datacenter",
    "DatacenterFollower",
    "DatacenterOutcome",
    "GlobalManifest",
    "GlobalPlacement",
    "Unreachable",
    "each_datacenter",
    "expand",
    "federate",
    "parse_global",
    "spread",
    "unreachable",
]

DEFAULT_TIMEOUT = 10.0
"""Seconds a datacenter has to answer before it is reported as not answering."""

T = TypeVar("T")


class Datacenter(msgspec.Struct, frozen=True, kw_only=True):
    """One datacenter: its name and its own store."""

    name: str
    backend: str
    prefix: str


@dataclass(frozen=True)
class DatacenterOutcome(Generic[T]):
    """What one datacenter gave: ``value``, or ``error`` (one line) when it failed or did
    not answer within the time limit (``value`` is then None)."""

    datacenter: str
    value: T | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        """Whether the datacenter answered."""
        return not self.error


def each_datacenter(datacenters: Sequence[Datacenter], work: Callable[[Datacenter, Client], T], *,
                    timeout: float = DEFAULT_TIMEOUT) -> list[DatacenterOutcome[T]]:
    """``work(datacenter, client)`` for every datacenter at once, a thread each; the outcomes in the
    order of ``datacenters``.

    A datacenter whose work raises, or has not finished ``timeout`` seconds after the
    start, is an outcome with an error. Its thread is a daemon and is left to end by
    itself (each backend call has its own timeout, so it does), closing its client."""
    results: dict[str, DatacenterOutcome[T]] = {}
    lock = threading.Lock()

    def run(dc: Datacenter) -> None:
        try:
            with Client.open(dc.backend, dc.prefix) as client:
                outcome: DatacenterOutcome[T] = DatacenterOutcome(dc.name, work(dc, client))
        except SkedError as exc:
            outcome = DatacenterOutcome(dc.name, error=one_line(str(exc)))
        except Exception as exc:  # a plugin's own error: still one datacenter's failure
            outcome = DatacenterOutcome(dc.name, error=one_line(f"{type(exc).__name__}: {exc}"))
        with lock:
            results[dc.name] = outcome

    threads = [threading.Thread(target=run, args=(dc,), daemon=True,
                                name=f"datacenter-{dc.name}") for dc in datacenters]
    deadline = time.monotonic() + timeout
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    with lock:
        return [results.get(dc.name) or DatacenterOutcome(
            dc.name, error=f"no answer within {timeout:g}s") for dc in datacenters]


class DatacenterFollower(Generic[T]):
    """``read(datacenter, client)`` of every datacenter, and again whenever that
    datacenter's store changes: a thread and a client per datacenter, so one that goes
    away is reported (its outcome becomes the error) while the others keep updating, and
    is read again when it is back (reconnecting with a backoff).

    :meth:`ready` blocks until every datacenter answered once, or ``timeout`` seconds
    passed (one still silent is an outcome with an error, as in :func:`each_datacenter`);
    :meth:`wait` until some datacenter has a new outcome; :meth:`outcomes` gives the latest
    of each. A datacenter that answered is probed (its store's revision) every ``timeout``
    seconds while nothing changes, so a store that went away silently is reported within
    about that long.

    >>> with DatacenterFollower(dcs, lambda dc, c: len(c.tasks())).start() as f:  # doctest: +SKIP
    ...     f.ready()
    ...     while True:
    ...         print(f.outcomes())
    ...         f.wait()
    """

    def __init__(self, datacenters: Sequence[Datacenter],
                 read: Callable[[Datacenter, Client], T], *,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.datacenters = list(datacenters)
        self.timeout = timeout
        self._read = read
        self._latest: dict[str, DatacenterOutcome[T]] = {}
        self._changed = threading.Condition()
        self._fresh = False
        self._stop = threading.Event()
        self._started = 0.0
        self._threads: list[threading.Thread] = []

    def start(self) -> DatacenterFollower[T]:
        """Start a thread per datacenter; returns at once."""
        self._started = time.monotonic()
        for dc in self.datacenters:
            thread = threading.Thread(target=self._follow, args=(dc,), daemon=True,
                                      name=f"follow-datacenter-{dc.name}")
            thread.start()
            self._threads.append(thread)
        return self

    def ready(self) -> None:
        """Block until every datacenter has answered (or failed) once, or ``timeout``
        seconds have passed since :meth:`start` (those still silent are then outcomes
        with an error)."""
        with self._changed:
            while (len(self._latest) < len(self.datacenters) and not self._stop.is_set()
                   and (left := self._started + self.timeout - time.monotonic()) > 0):
                self._changed.wait(left)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a datacenter has a new outcome since the last :meth:`outcomes`
        (True), or ``timeout`` seconds pass or the follower is closed (False)."""
        with self._changed:
            self._changed.wait_for(lambda: self._fresh or self._stop.is_set(), timeout)
            return self._fresh

    def outcomes(self) -> list[DatacenterOutcome[T]]:
        """The latest outcome of each datacenter, in their order (one that has not
        answered yet: an error)."""
        with self._changed:
            self._fresh = False
            return [self._latest.get(dc.name) or DatacenterOutcome(
                dc.name, error=f"no answer within {self.timeout:g}s")
                for dc in self.datacenters]

    def close(self) -> None:
        """Stop following, and wait (at most ``timeout`` seconds and a little) for each
        thread to end its current call and close its client: a program that exits next
        then has no store connection left open (an open gRPC channel can hold up the
        interpreter's exit). Idempotent."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        deadline = time.monotonic() + self.timeout + 2.0
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> DatacenterFollower[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, outcome: DatacenterOutcome[T]) -> None:
        with self._changed:
            self._latest[outcome.datacenter] = outcome
            self._fresh = True
            self._changed.notify_all()

    def _follow(self, dc: Datacenter) -> None:
        backoff = Backoff(initial=0.5, maximum=5.0, jitter=0.2)
        while not self._stop.is_set():
            try:
                with Client.open(dc.backend, dc.prefix) as client:
                    self._follow_client(dc, client, backoff)
                return
            except SkedError as exc:
                error = one_line(str(exc))
            except Exception as exc:  # a plugin's own error: still one datacenter's failure
                error = one_line(f"{type(exc).__name__}: {exc}")
            if self._stop.is_set():
                return
            self._post(DatacenterOutcome(dc.name, error=error))
            self._stop.wait(backoff.next())

    def _follow_client(self, dc: Datacenter, client: Client, backoff: Backoff) -> None:
        """Read, then wait for a change and read again, until stopped; raises when the
        store fails (the caller reports it and reconnects)."""
        backend, prefix = client.backend, client.keys.prefix
        while not self._stop.is_set():
            # the revision before the read: a change during the read is not missed
            revision = backend.current_revision(prefix)
            self._post(DatacenterOutcome(dc.name, self._read(dc, client)))
            backoff.reset()
            while not self._stop.is_set():
                got = wait_for_change(backend, prefix, revision, self.timeout)
                # None: quiet, or the store is away; its revision tells which (and raises
                # when it is away, so the datacenter is reported)
                if got is not None or backend.current_revision(prefix) != revision:
                    break


class Unreachable(msgspec.Struct, frozen=True, kw_only=True):
    """A datacenter that did not answer: its name, and why (one line, no secret: store
    URLs in errors are redacted)."""

    datacenter: str
    error: str


def unreachable(outcomes: Sequence[DatacenterOutcome[Any]]) -> list[Unreachable]:
    """The datacenters of ``outcomes`` that did not answer, in their order."""
    return [Unreachable(datacenter=o.datacenter, error=o.error) for o in outcomes if not o.ok]


# -- the federation step -------------------------------------------------------------------
class GlobalPlacement(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How many tasks of a global service each datacenter runs: ``per_datacenter``
    (desired per datacenter), or ``total`` spread over ``weights``. A datacenter of the
    context that is not named runs none (its service is written with desired 0)."""

    per_datacenter: dict[str, int] | None = None
    total: int | None = None
    weights: dict[str, int] | None = None


@dataclass(frozen=True)
class GlobalManifest:
    """A parsed global manifest: the ordinary manifest and the placement of services."""

    document: ManifestDocument
    placement: dict[str, GlobalPlacement]


def spread(total: int, weights: Mapping[str, int]) -> dict[str, int]:
    """``total`` split over ``weights`` by largest remainder: each datacenter gets its
    share rounded down, and the tasks left over go to the largest remainders (ties: the
    larger weight, then the name), so the sum is ``total`` and the split is stable."""
    weight_sum = sum(weights.values())
    if weight_sum <= 0:
        raise ValidationError("placement: weights must add up to more than 0")
    shares = {dc: total * w // weight_sum for dc, w in weights.items()}
    order = sorted(weights, key=lambda dc: (-(total * weights[dc] % weight_sum),
                                            -weights[dc], dc))
    for dc in order[:total - sum(shares.values())]:
        shares[dc] += 1
    return shares


def _check_placement(service: str, p: GlobalPlacement, where: str) -> None:
    label = f"{where}: placement.{service}"
    if (p.per_datacenter is None) == (p.total is None):
        raise ValidationError(f"{label}: give per_datacenter, or total with weights")
    if p.total is not None and not p.weights:
        raise ValidationError(f"{label}: total needs weights (datacenter: weight)")
    counts = [*(p.per_datacenter or {}).values(), *(p.weights or {}).values(),
              *([p.total] if p.total is not None else [])]
    if any(n < 0 for n in counts):
        raise ValidationError(f"{label}: counts and weights must not be negative")


def parse_global(text: str, source: str = "<global manifest>") -> GlobalManifest:
    """A global manifest: an ordinary manifest (``clusters``, ``services``,
    ``task_definitions``, written in every datacenter) plus ``placement`` (service name
    → :class:`GlobalPlacement`). Errors are one line starting with ``source``."""
    document = parse_manifest(text, source)
    raw: dict[str, object] = {}
    for doc in yaml.safe_load_all(text):  # parse_manifest has checked the YAML already
        if isinstance(doc, dict) and doc.get("placement") is not None:
            if not isinstance(doc["placement"], dict):
                raise ValidationError(f"{source}: placement: expected a mapping of "
                                      "service name to placement")
            raw.update(doc["placement"])
    try:
        placement = msgspec.convert(raw, dict[str, GlobalPlacement])
    except msgspec.ValidationError as exc:
        raise ValidationError(one_line(f"{source}: placement: {exc}")) from None
    m = document.manifest
    # what is wrong everywhere is refused before any datacenter is written (each
    # datacenter's apply checks again, with its own stored limits)
    for i, td in enumerate(m.task_definitions):
        check_task_definition(td, f"{source}: {object_label('task_definitions', i, td.name)}")
    for i, s in enumerate(m.services):
        check_service(s, f"{source}: {object_label('services', i, s.name)}")
    for i, c in enumerate(m.clusters):
        label = f"{source}: {object_label('clusters', i, c.name)}"
        check_cluster(c, label)
        if c.datacenter:
            raise ValidationError(f"{label}: field datacenter: set by the federation step "
                                  "for each datacenter; leave it out of a global manifest")
    services = {s.name for s in m.services}
    for name, p in placement.items():
        if name not in services:
            raise ValidationError(f"{source}: placement.{name}: no service {name!r} in "
                                  "the manifest")
        _check_placement(name, p, source)
    ignored = f"{source}: unknown top-level key 'placement', ignored"
    warnings = tuple(w for w in document.warnings if w != ignored)
    return GlobalManifest(ManifestDocument(document.manifest, source, warnings), placement)


def expand(doc: GlobalManifest, datacenters: Sequence[str]) -> dict[str, Manifest]:
    """One manifest per datacenter: every object of ``doc``, each cluster marked with the
    datacenter (``Cluster.datacenter``), each placed service with its datacenter's count.
    A placement naming a datacenter not in ``datacenters`` is an error."""
    known = set(datacenters)
    counts: dict[str, dict[str, int]] = {}
    for name, p in doc.placement.items():
        per = p.per_datacenter if p.per_datacenter is not None else \
            spread(p.total or 0, p.weights or {})
        unknown = sorted(set(per) - known)
        if unknown:
            raise ValidationError(f"{doc.document.source}: placement.{name}: unknown "
                                  f"datacenter {unknown[0]!r} (the context lists "
                                  f"{', '.join(sorted(known)) or 'none'})")
        counts[name] = per
    manifest = doc.document.manifest
    out: dict[str, Manifest] = {}
    for dc in datacenters:
        services = []
        for s in manifest.services:
            if s.name in counts:
                s = check_service(msgspec.structs.replace(s, desired=counts[s.name].get(dc, 0)),
                                  f"{doc.document.source}: placement.{s.name}: datacenter {dc}")
            services.append(s)
        out[dc] = Manifest(
            clusters=[msgspec.structs.replace(c, datacenter=dc) for c in manifest.clusters],
            services=services, task_definitions=list(manifest.task_definitions))
    return out


def federate(datacenters: Sequence[Datacenter], doc: GlobalManifest, *,
             timeout: float = DEFAULT_TIMEOUT) -> list[DatacenterOutcome[ApplyResult]]:
    """Expand ``doc`` (:func:`expand`) and apply each datacenter's manifest to its own
    store, all at once; a datacenter that fails or does not answer in ``timeout`` seconds
    is an outcome with an error and the others are written all the same."""
    manifests = expand(doc, [dc.name for dc in datacenters])

    def apply(dc: Datacenter, client: Client) -> ApplyResult:
        return client.apply(ManifestDocument(manifests[dc.name], doc.document.source,
                                             doc.document.warnings))

    return each_datacenter(datacenters, apply, timeout=timeout)
