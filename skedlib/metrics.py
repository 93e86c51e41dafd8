"""Prometheus metrics: every ``skedlib_…`` metric is defined here, once, and exposed here.

The metric objects live in one :class:`Metrics` per process (:data:`METRICS`), on its own
:class:`~prometheus_client.CollectorRegistry` — never the client's global default one, so
importing skedlib registers nothing in the host program's registry, and tests that run
several agents or daemons in one process share counters instead of clashing on a second
registration. The daemons count into it (``METRICS.placements.inc()``); what is a level
rather than a count (tasks by state, queue depths, unschedulable tasks) is read at scrape
time from the live objects that registered a *source* (:meth:`Metrics.add_source`), so
nothing has to be kept in step by hand.

Exposition: :func:`serve` (``skedlib-agent --metrics`` and ``skedlib-scheduler
--metrics``: ``GET /metrics`` on its own small HTTP server) and :func:`exposition` (the
bytes and content type, for ``sked serve``'s ``GET /v1/metrics``). Labels stay bounded:
no task, job or service name is ever a label. docs/metrics.md lists every metric.
"""

from __future__ import annotations

import re
import socket
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["METRICS", "Metrics", "MetricsServer", "exposition", "reject_kind",
           "serve"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 10.0)
_JOB_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)

Source = Callable[[], Mapping[tuple[str, ...], float]]
"""A gauge's source: label values → value, read at scrape time."""

_GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "skedlib_agent_tasks": ("Tasks this agent knows, by lifecycle phase", ("state",)),
    "skedlib_scheduler_queue_depth": ("(cluster, service) pairs waiting to be planned", ()),
    "skedlib_scheduler_unschedulable_tasks": (
        "Tasks the last runs could not place on any host", ()),
    "skedlib_jobs_queue_depth": ("Queued jobs this job worker sees", ()),
}
"""The gauges read from sources: name → (help, label names)."""


_REJECT_KINDS = tuple((kind, re.compile(pattern)) for kind, pattern in (
    ("pressure", r"\bmemory pressure\b"), ("port", r"\bports?\b"),
    ("attempts", r"\battempts?\b"), ("policy", r"\bpolicy\b|\bnot allowed\b"),
    ("resources", r"\b(memory|cpu|disk)\b|\bfit\b"), ("executor", r"\bexecutors?\b")))


def reject_kind(reason: str) -> str:
    """A rejection reason's kind, a label of few values (the reason itself is free text):
    the first of pressure, port, attempts, policy, resources, executor whose words it
    holds, else other."""
    text = reason.lower()
    return next((kind for kind, pattern in _REJECT_KINDS if pattern.search(text)), "other")


class _Sources(Collector):
    """The gauges of :data:`_GAUGES`, summed over the live sources of each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: dict[str, list[weakref.WeakMethod[Source] | Callable[[], Source]]] = {
            name: [] for name in _GAUGES}

    def add(self, name: str, source: Source) -> None:
        ref: Any = weakref.WeakMethod(source) if hasattr(source, "__self__") \
            else (lambda: source)
        with self._lock:
            self._sources[name].append(ref)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            sources = {name: list(refs) for name, refs in self._sources.items()}
        for name, (help_text, labels) in _GAUGES.items():
            family = GaugeMetricFamily(name, help_text, labels=list(labels))
            totals: dict[tuple[str, ...], float] = {}
            for ref in sources[name]:
                fn = ref()
                if fn is None:  # its object is gone
                    with self._lock:
                        if ref in self._sources[name]:
                            self._sources[name].remove(ref)
                    continue
                for key, value in fn().items():
                    totals[key] = totals.get(key, 0.0) + value
            if not labels:
                family.add_metric([], totals.get((), 0.0))
            else:
                for key, value in sorted(totals.items()):
                    family.add_metric(list(key), value)
            yield family


class Metrics:
    """Every skedlib metric, on one registry of its own (:attr:`registry`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        """Where these metrics are registered (not prometheus_client's default one)."""
        r = self.registry
        # scheduler
        self.placements = Counter("skedlib_scheduler_placements", "Tasks placed on a host "
                                  "(committed)", registry=r)
        self.stops = Counter("skedlib_scheduler_stops", "Tasks stopped by the scheduler "
                             "(committed)", registry=r)
        self.plan_seconds = Histogram("skedlib_scheduler_plan_seconds",
                                      "Time a scheduler plugin took to plan one service",
                                      buckets=_LATENCY_BUCKETS, registry=r)
        self.commit_seconds = Histogram("skedlib_scheduler_commit_seconds",
                                        "Time to commit one plan to the store",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.conflicts = Counter("skedlib_scheduler_commit_conflicts",
                                 "Plan parts refused at commit by a concurrent write",
                                 registry=r)
        self.runs = Counter("skedlib_scheduler_runs", "Runs of the scheduler for one "
                            "service, by outcome", ["outcome"], registry=r)
        # agent
        self.starts = Counter("skedlib_agent_task_starts", "Task starts that succeeded",
                              registry=r)
        self.restarts = Counter("skedlib_agent_task_restarts",
                                "Task starts after a failed attempt", registry=r)
        self.rejections = Counter("skedlib_agent_task_rejections",
                                  "Tasks rejected by this agent, by kind of reason",
                                  ["kind"], registry=r)
        self.check_seconds = Histogram("skedlib_agent_check_seconds",
                                       "Time one run of a health check took, by kind",
                                       ["kind"], buckets=_LATENCY_BUCKETS, registry=r)
        self.check_failures = Counter("skedlib_agent_check_failures",
                                      "Health check runs that ended critical, by kind",
                                      ["kind"], registry=r)
        self.lease_renewals = Counter("skedlib_agent_lease_renewals",
                                      "Renewals of the host record's lease", registry=r)
        self.lease_losses = Counter("skedlib_agent_lease_losses",
                                    "Times the host record's lease was lost", registry=r)
        self.fenced_tasks = Counter("skedlib_agent_fenced_tasks",
                                    "Tasks stopped because the host lease could not be "
                                    "renewed for their stop_after_disconnect", registry=r)
        # jobs
        self.job_claims = Counter("skedlib_jobs_claims", "Jobs claimed by this worker",
                                  registry=r)
        self.job_seconds = Histogram("skedlib_jobs_duration_seconds",
                                     "How long a job ran, by how it ended", ["status"],
                                     buckets=_JOB_BUCKETS, registry=r)
        # events (every process that records them)
        self.events_dropped = Counter("skedlib_events_dropped",
                                      "Events dropped unwritten: the queue was full (a "
                                      "burst), or their write kept failing", registry=r)
        self._sources = _Sources()
        r.register(self._sources)

    def add_source(self, gauge: str, source: Source) -> None:
        """Read gauge ``gauge`` (a ``skedlib_…`` name of a level) from ``source`` at each
        scrape, summed with the other sources of that gauge; a bound method is held
        weakly (its object going away removes it)."""
        if gauge not in _GAUGES:
            raise KeyError(f"no gauge {gauge!r} in skedlib.metrics")
        self._sources.add(gauge, source)


METRICS = Metrics()
"""This process's metrics."""


def exposition(metrics: Metrics = METRICS) -> tuple[bytes, str]:
    """The text exposition of ``metrics`` and its content type."""
    return generate_latest(metrics.registry), CONTENT_TYPE_LATEST


class _Handler(WSGIRequestHandler):
    timeout = 10.0  # a client that stalls does not hold a thread for ever

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not worth a log line


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """``GET /metrics`` on its own thread (:func:`serve`); :meth:`close` stops it."""

    def __init__(self, host: str, port: int, metrics: Metrics) -> None:
        server_class = _Server6 if ":" in host else _Server
        self._server = make_server(host, port, make_wsgi_app(metrics.registry),
                                   server_class, handler_class=_Handler)
        self.address: tuple[str, int] = (host, self._server.server_address[1])
        """Where it listens (the port chosen when 0 was asked)."""
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.5},
                                        name="metrics-server", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


def serve(host: str, port: int, metrics: Metrics = METRICS) -> MetricsServer:
    """Serve ``metrics`` at ``http://HOST:PORT/metrics`` (prometheus_client's WSGI app on
    wsgiref); raises OSError when the address cannot be bound."""
    return MetricsServer(host, port, metrics)
