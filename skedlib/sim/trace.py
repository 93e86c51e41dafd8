"""Simulator traces: the JSONL format, reading and writing it, and synthetic traces.

A trace is one JSON object per line (docs/simulator.md), each with a ``kind``:

- ``batch``: ``count`` tasks of one service arrive at ``t`` (seconds from the start),
  each reserving ``memory`` MiB and ``cpu`` CPU units, and the service runs for
  ``duration`` seconds once every task of it has been placed;
- ``host``: at ``t``, host number ``host`` (an index; the simulator takes it modulo its
  host count) ``fail``\\ s, ``recover``\\ s, starts to ``drain`` or is ``undrain``\\ ed.

Lines are sorted by ``t`` when read, stably, so equal times keep the file's order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Literal

import msgspec

from skedlib.errors import ValidationError

__all__ = ["Batch", "HostEvent", "TraceRecord", "read_trace", "synthetic_trace",
           "write_trace"]


class Batch(msgspec.Struct, kw_only=True, tag="batch", tag_field="kind"):
    """``count`` tasks of one service arriving together."""

    t: float
    """Arrival, seconds from the start of the trace."""
    service: str
    """A label for the service (reports name it; need not be unique)."""
    count: int = 1
    memory: int
    """MiB per task."""
    cpu: int = 0
    """CPU units per task (1024 = one core)."""
    duration: float
    """Seconds the service runs once all its tasks are placed."""
    constraints: list[str] = msgspec.field(default_factory=list)
    """Placement constraints of the service (``spread:zone``, ``distinct_host`` …)."""


class HostEvent(msgspec.Struct, kw_only=True, tag="host", tag_field="kind"):
    """Something happens to one host."""

    t: float
    host: int
    """The host's index (taken modulo the simulated host count)."""
    event: Literal["fail", "recover", "drain", "undrain"]


TraceRecord = Batch | HostEvent
"""One line of a trace."""

_decoder = msgspec.json.Decoder(TraceRecord)
_encoder = msgspec.json.Encoder()


def _check(rec: TraceRecord, where: str) -> TraceRecord:
    if rec.t < 0 or not math.isfinite(rec.t):
        raise ValidationError(f"{where}: t must be a finite number >= 0, not {rec.t}")
    if isinstance(rec, Batch):
        if rec.count < 1:
            raise ValidationError(f"{where}: count must be >= 1, not {rec.count}")
        if rec.memory < 0 or rec.cpu < 0:
            raise ValidationError(f"{where}: memory and cpu must be >= 0")
        if rec.duration < 0 or not math.isfinite(rec.duration):
            raise ValidationError(f"{where}: duration must be a finite number >= 0")
    elif rec.host < 0:
        raise ValidationError(f"{where}: host must be an index >= 0, not {rec.host}")
    return rec


def read_trace(source: str | Path | IO[bytes]) -> list[TraceRecord]:
    """The records of a JSONL trace, sorted by time (stably); blank lines are skipped.
    Raises :class:`~skedlib.errors.ValidationError` naming the file and line."""
    if isinstance(source, str | Path):
        name = str(source)
        with open(source, "rb") as f:
            lines = f.read().splitlines()
    else:
        name = str(getattr(source, "name", "<trace>"))
        lines = source.read().splitlines()
    out: list[TraceRecord] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = _decoder.decode(line)
        except msgspec.ValidationError as exc:
            raise ValidationError(f"{name}:{n}: {exc}") from None
        except msgspec.DecodeError as exc:
            raise ValidationError(f"{name}:{n}: not JSON: {exc}") from None
        out.append(_check(rec, f"{name}:{n}"))
    out.sort(key=lambda r: r.t)
    return out


def write_trace(records: Iterable[TraceRecord], out: IO[bytes]) -> int:
    """Write ``records`` as JSONL; returns how many."""
    n = 0
    for rec in records:
        out.write(_encoder.encode(rec) + b"\n")
        n += 1
    return n


# -- synthetic traces -------------------------------------------------------------------
# A service mix of long-running services, batch jobs and small cron-like jobs. Sizes are
# heavy-tailed (Pareto), durations log-normal, memory from a few common sizes, CPU
# proportional to memory with some noise; arrivals follow a day-long sine (more by day).
_KINDS = (
    # name, share of batches, (pareto alpha, min count, max count), (lognormal mu, sigma
    # of the duration in seconds), memory sizes MiB
    ("web", 0.25, (1.6, 2, 200), (math.log(24 * 3600), 0.8), (256, 512, 1024, 2048)),
    ("batch", 0.45, (1.2, 5, 1000), (math.log(2 * 3600), 1.2), (512, 1024, 2048, 4096)),
    ("cron", 0.30, (2.5, 1, 10), (math.log(600), 0.7), (128, 256, 512)),
)


def _diurnal(rate: float, t: float) -> float:
    return rate * (1.0 + 0.6 * math.sin(2 * math.pi * t / 86_400.0 - math.pi / 2))


def synthetic_trace(tasks: int, seed: int, *, span: float = 6 * 3600.0,
                    failures: int = 0, hosts: int = 1000) -> Iterator[TraceRecord]:
    """A realistic, seeded trace of about ``tasks`` tasks (exactly, the last batch being
    cut) arriving over ``span`` seconds, with ``failures`` host failures (and their
    recoveries) among the first ``hosts`` hosts."""
    rng = random.Random(seed)
    mean_count = 0.0
    for _, share, (alpha, lo, hi), _, _ in _KINDS:
        mean_count += share * min(hi, lo * alpha / (alpha - 1))
    batches = max(1, round(tasks / mean_count))
    # the day starts at its quietest: scale so that the batches arrive within ``span``
    shape = sum(_diurnal(1.0, span * (k + 0.5) / 1000) for k in range(1000)) / 1000
    rate = batches / span / shape
    peak = rate * 1.6
    events: list[TraceRecord] = []
    t, left, i = 0.0, tasks, 0
    while left > 0:
        t += rng.expovariate(peak)
        if rng.random() * peak > _diurnal(rate, t):
            continue  # thinning: fewer arrivals at night
        r = rng.random()
        for name, share, (alpha, lo, hi), (mu, sigma), sizes in _KINDS:  # noqa: B007
            r -= share
            if r <= 0:
                break
        count = min(left, hi, int(lo * rng.paretovariate(alpha)))
        memory = rng.choice(sizes)
        cpu = max(16, int(memory / 2 * rng.uniform(0.5, 1.5)))
        duration = round(rng.lognormvariate(mu, sigma), 1)
        events.append(Batch(t=round(t, 3), service=f"{name}-{i}", count=count,
                            memory=memory, cpu=cpu, duration=duration))
        left -= count
        i += 1
    end = t
    for _ in range(failures):
        at = rng.uniform(0, end)
        host = rng.randrange(hosts)
        events.append(HostEvent(t=round(at, 3), host=host, event="fail"))
        events.append(HostEvent(t=round(at + rng.lognormvariate(math.log(1800), 0.5), 3),
                                host=host, event="recover"))
    events.sort(key=lambda e: e.t)
    yield from events
