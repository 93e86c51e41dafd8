"""Importers: public cluster traces turned into simulator traces.

Each reads the column layout of one public trace (no download: point it at files you
have) and groups the tasks of one job that were submitted at the same time with the
same request into one :class:`~skedlib.sim.trace.Batch`. Requests in those traces are
normalised (a share of the largest machine); they are scaled to a host of
``host_memory`` MiB and ``host_cpu`` CPU units. A batch's duration is the longest of its
tasks' (the service holds its room until its last task ends); a task never seen ending
runs ``default_duration`` seconds. Times start at the trace's first submission.

- :func:`google_2011`: Google cluster-data 2011 ``task_events`` CSV, no header:
  timestamp (µs), missing info, job ID, task index, machine ID, event type (0 SUBMIT,
  1 SCHEDULE, 2 EVICT, 3 FAIL, 4 FINISH, 5 KILL, 6 LOST …), user, scheduling class,
  priority, CPU request, memory request, disk request, different-machine constraint.
- :func:`google_2019`: Google cluster-data 2019 ``instance_events`` as JSON lines (the
  BigQuery export): ``time`` (µs), ``type`` (``SUBMIT``/``SCHEDULE``/``FINISH`` … or
  their numbers), ``collection_id``, ``instance_index``, ``resource_request`` with
  ``cpus`` and ``memory``.
- :func:`alibaba_2018`: Alibaba cluster-trace-v2018 ``batch_task.csv``, no header:
  task_name, instance_num, job_name, task_type, status, start_time, end_time (s),
  plan_cpu (100 = one core), plan_mem (a share of a machine, 0-100).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from skedlib.errors import ValidationError
from skedlib.sim.trace import Batch

__all__ = ["IMPORTERS", "alibaba_2018", "google_2011", "google_2019"]

_END_2011 = {2, 3, 4, 5, 6}
_END_2019 = {"EVICT", "FAIL", "FINISH", "KILL", "LOST", "2", "3", "6", "7", "8"}
_SUBMIT_2019 = {"SUBMIT", "0"}


@dataclass
class _Job:
    submit: float
    memory: float
    cpu: float
    constraints: list[str]
    tasks: dict[str, float | None] = field(default_factory=dict)
    """Task → end time (None: not seen ending)."""


@dataclass
class _TaskEvents:
    """Jobs built from a trace's task events: a submission adds the task to its job, the
    task's first end sets its end time (the Google traces' shared bookkeeping)."""

    jobs: dict[str, _Job] = field(default_factory=dict)
    owner: dict[str, str] = field(default_factory=dict)

    def submitted(self, key: str, task: str, job: _Job) -> None:
        self.jobs.setdefault(key, job).tasks[task] = None
        self.owner[task] = key

    def ended(self, task: str, at: float) -> None:
        key = self.owner.get(task)
        if key is not None and self.jobs[key].tasks[task] is None:
            self.jobs[key].tasks[task] = at


def _scale(share: float, capacity: int) -> int:
    return max(1, round(share * capacity))


def _batches(jobs: Iterable[tuple[str, _Job]], *, host_memory: int, host_cpu: int,
             default_duration: float, time_unit: float) -> Iterator[Batch]:
    items = sorted(jobs, key=lambda kv: (kv[1].submit, kv[0]))
    if not items:
        return
    t0 = items[0][1].submit
    for name, job in items:
        ends = [e for e in job.tasks.values() if e is not None]
        longest = max(ends, default=None)
        duration = (longest - job.submit) / time_unit if longest is not None and \
            len(ends) == len(job.tasks) else default_duration
        yield Batch(t=round((job.submit - t0) / time_unit, 3), service=name,
                    count=len(job.tasks), memory=_scale(job.memory, host_memory),
                    cpu=_scale(job.cpu, host_cpu), duration=round(max(duration, 0.0), 3),
                    constraints=list(job.constraints))


def _float(text: str, where: str, column: str) -> float:
    try:
        return float(text) if text != "" else 0.0
    except ValueError:
        raise ValidationError(f"{where}: {column} is not a number: {text!r}") from None


def google_2011(path: str | Path, *, host_memory: int = 16_384, host_cpu: int = 8_192,
                default_duration: float = 3600.0) -> list[Batch]:
    """Batches of a Google 2011 ``task_events`` CSV file (see the module's docstring)."""
    events = _TaskEvents()
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row:
                continue
            where = f"{path}:{n}"
            if len(row) < 13:
                raise ValidationError(f"{where}: expected 13 columns, found {len(row)}")
            ts = _float(row[0], where, "timestamp")
            event = int(_float(row[5], where, "event type"))
            tid = f"{row[2]}/{row[3]}"
            if event == 0:
                cpu = _float(row[9], where, "CPU request")
                mem = _float(row[10], where, "memory request")
                key = f"job{row[2]}-{ts:.0f}-{cpu:g}-{mem:g}"
                distinct = ["distinct_host"] if row[12] in ("1", "True", "true") else []
                events.submitted(key, tid, _Job(ts, mem, cpu, distinct))
            elif event in _END_2011:
                events.ended(tid, ts)
    return list(_batches(events.jobs.items(), host_memory=host_memory, host_cpu=host_cpu,
                         default_duration=default_duration, time_unit=1e6))


def google_2019(path: str | Path, *, host_memory: int = 16_384, host_cpu: int = 8_192,
                default_duration: float = 3600.0) -> list[Batch]:
    """Batches of a Google 2019 ``instance_events`` JSON-lines file."""
    events = _TaskEvents()
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise ValidationError(f"{where}: not JSON: {exc}") from None
            if not isinstance(rec, dict):
                raise ValidationError(f"{where}: not a JSON object")
            ts = _float(str(rec.get("time", "")), where, "time")
            kind = str(rec.get("type", ""))
            tid = f"{rec.get('collection_id')}/{rec.get('instance_index')}"
            if kind in _SUBMIT_2019:
                req = rec.get("resource_request") or {}
                cpu = _float(str(req.get("cpus", 0) or 0), where, "resource_request.cpus")
                mem = _float(str(req.get("memory", 0) or 0), where,
                             "resource_request.memory")
                key = f"coll{rec.get('collection_id')}-{ts:.0f}-{cpu:g}-{mem:g}"
                events.submitted(key, tid, _Job(ts, mem, cpu, []))
            elif kind in _END_2019:
                events.ended(tid, ts)
    return list(_batches(events.jobs.items(), host_memory=host_memory, host_cpu=host_cpu,
                         default_duration=default_duration, time_unit=1e6))


def alibaba_2018(path: str | Path, *, host_memory: int = 16_384, host_cpu: int = 8_192,
                 default_duration: float = 3600.0) -> list[Batch]:
    """Batches of an Alibaba 2018 ``batch_task.csv`` file: one per task row (its
    ``instance_num`` instances); ``plan_cpu`` is in hundredths of a core and scaled to
    ``host_cpu`` as 1024 units a core, at most a whole host."""
    jobs: dict[str, _Job] = {}
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row:
                continue
            where = f"{path}:{n}"
            if len(row) < 9:
                raise ValidationError(f"{where}: expected 9 columns, found {len(row)}")
            count = int(_float(row[1], where, "instance_num"))
            start = _float(row[5], where, "start_time")
            end = _float(row[6], where, "end_time")
            if count < 1 or start <= 0:
                continue  # never started: nothing to replay
            cores = _float(row[7], where, "plan_cpu") / 100
            mem = _float(row[8], where, "plan_mem") / 100
            job = _Job(start, mem, min(1.0, cores * 1024 / host_cpu), [])
            for i in range(count):
                job.tasks[str(i)] = end if end >= start else None
            jobs[f"{row[2]}-{row[0]}"] = job
    return list(_batches(jobs.items(), host_memory=host_memory, host_cpu=host_cpu,
                         default_duration=default_duration, time_unit=1.0))


IMPORTERS = {"google-2011": google_2011, "google-2019": google_2019,
             "alibaba-2018": alibaba_2018}
"""Importer by the name ``sked sim trace --from`` takes."""
