"""Service status records: what the scheduler daemon made of each service.

After every run for a ``(cluster, service)`` pair the daemon writes a
:class:`~skedlib.models.ServiceStatus` under ``state/services/<cluster>/<service>``, only
when it changed (``updated_at`` and ``revision`` aside), fenced by the pair's lock.
``sked get services`` and ``sked up`` read these records to say why a service is not
placed.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping

import msgspec

from skedlib.codecs import decode_record
from skedlib.errors import ValidationError
from skedlib.keys import Keyspace, ServiceStatusKey
from skedlib.models import Service, ServiceState, ServiceStatus
from skedlib.scheduling import CommitResult, Plan, PlanProblem, SchedulingResult, Snapshot
from skedlib.store.base import KeyValue

__all__ = ["MAX_REASONS", "compute_status", "describe", "read_statuses", "reasons_of",
           "same_status"]

MAX_REASONS = 10


def reasons_of(unschedulable: Mapping[str, str]) -> list[str]:
    """Distinct reasons, most frequent first, each with its count (at most 10)."""
    counts = Counter(unschedulable.values())
    return [f"{n} task(s): {reason}" for reason, n in counts.most_common(MAX_REASONS)]


def same_status(a: ServiceStatus | None, b: ServiceStatus | None) -> bool:
    """Equal but for ``updated_at`` and ``revision``."""
    if a is None or b is None:
        return a is b
    return msgspec.structs.replace(a, updated_at=0.0, revision=0) == \
        msgspec.structs.replace(b, updated_at=0.0, revision=0)


def describe(status: ServiceStatus | None) -> str:
    """One short cell for a table: ``ok``, ``progressing (1/2 healthy)``,
    ``unschedulable: …``, ``error: …``."""
    if status is None:
        return "no scheduler has run yet"
    if status.state == "progressing":
        detail = status.message or f"{status.healthy}/{status.desired} healthy"
        return f"progressing ({detail})"
    if status.message:
        return f"{status.state}: {status.message}"
    return status.state


def read_statuses(items: Iterable[KeyValue], keys: Keyspace
                  ) -> dict[tuple[str, str], ServiceStatus]:
    """The status records among ``items`` (a listing of ``keys``), by
    ``(cluster, service)``."""
    ks = keys
    found: dict[tuple[str, str], ServiceStatus] = {}
    for kv in items:
        if not kv.key.startswith(ks.service_statuses):
            continue
        try:
            key = ks.parse(kv.key)
        except ValidationError:
            continue  # not ours: ignore
        if isinstance(key, ServiceStatusKey):
            status = decode_record(kv, ServiceStatus, key)  # decode or quarantine
            if status is not None:
                found[(key.cluster, key.service)] = status
    return found


def compute_status(pair: tuple[str, str], service: Service, snap: Snapshot, *,
                   result: SchedulingResult | None = None, plan: Plan | None = None,
                   commit: CommitResult | None = None,
                   problems: list[PlanProblem] | None = None,
                   state: ServiceState | None = None, message: str = "",
                   external: bool = False) -> ServiceStatus:
    """The status of ``pair`` after a run: its tasks as ``snap`` holds them with the
    committed part of ``plan`` applied; placed means on a live host and not rejected,
    healthy is :meth:`Snapshot.is_healthy` (a task placed by this very plan is not
    healthy yet). ``state`` and ``message`` given: that state (an error), else derived.
    ``external``: the service's tasks are placed by something outside the daemon
    (``scheduler: external``); the message says "placed externally"."""
    cluster_name, service_name = pair
    final = snap.service_tasks_by_id(cluster_name, service_name)
    fresh: set[str] = set()
    placed = plan.by_id() if plan is not None else {}
    if plan is not None and commit is not None:
        for tid in commit.committed:
            if tid in placed:
                final[tid] = placed[tid]
                fresh.add(tid)
            else:
                final.pop(tid, None)
    running = [tid for tid, t in final.items() if not t.rejected and t.host in snap.hosts]
    healthy = sum(1 for tid in running if tid not in fresh and snap.is_healthy(tid))
    unschedulable = result.unschedulable if result is not None else {}
    if plan is not None:
        wanted = ({tid for tid in final if tid not in plan.stop}
                  | placed.keys() | set(unschedulable))
        desired = len(wanted)
    else:
        desired = service.desired
    if not state:
        if unschedulable:
            state, message = "unschedulable", result.message if result else ""
        elif len(running) == desired and healthy == desired and not problems and \
                not (commit and commit.conflicts):
            state = "ok"
        else:
            state = "progressing"
            waiting = desired - healthy
            message = (f"{healthy}/{desired} healthy" if waiting > 0 else
                       f"{len(running)} placed, {desired} wanted")
    if external:
        message = f"placed externally: {message}" if message else "placed externally"
    return ServiceStatus(
        cluster=cluster_name, service=service_name, scheduler=service.scheduler,
        task_version=service.task_version, state=state,
        desired=desired, placed=len(running), healthy=healthy,
        unschedulable=len(unschedulable), message=message,
        reasons=reasons_of(unschedulable), revision=snap.revision,
        updated_at=time.time())
