"""Rollouts as the scheduler daemon keeps them: stored, reverted, told in the status.

A :class:`~skedlib.scheduling.ServiceScheduler` computes a service's rollout (which
version replaces which, how far it got, whether it failed) and reports it in its
:class:`~skedlib.scheduling.SchedulingResult`. After the plan is committed the daemon
hands it here:

- :func:`write_rollout` keeps the service's history under ``state/rollouts/<cluster>/
  <service>`` (the last 20 rollouts; a record is rewritten only when the rollout
  changed), fenced by the pair's lock; when the rollout failed and the service asks for
  ``update.auto_revert``, the service is set back to the version it came from in the same
  transaction (compared on the service record as read, so an edit made meanwhile wins);
- :func:`with_rollout` turns the rollout into the service status's state and message.
"""

from __future__ import annotations

import logging

import msgspec

from skedlib.codecs import decode, encode
from skedlib.models import Rollout, RolloutHistory, Service, ServiceStatus
from skedlib.scheduler.affected import Pair, label
from skedlib.scheduling import Snapshot, SnapshotCache
from skedlib.store.base import Compare, Op, Put

__all__ = ["HISTORY", "with_rollout", "write_rollout"]

log = logging.getLogger("skedlib.scheduler")

HISTORY = 20
"""Rollouts kept in a service's history."""


def write_rollout(cache: SnapshotCache, snap: Snapshot, pair: Pair, service: Service,
                  rollout: Rollout, fence: Compare) -> Rollout:
    """Store the rollout a plan reported in the service's history (when it changed); on
    a failed rollout with ``auto_revert``, set the service back to the version it came
    from. Returns the rollout as stored; the history is written through to ``cache``."""
    store = cache.store
    cluster, name = pair
    key = store.keys.rollout(cluster, name)
    history = snap.rollouts.get(pair) or RolloutHistory(cluster=cluster, service=name)
    rollouts = list(history.rollouts)
    current = rollouts[-1] if rollouts else None
    same = current is not None and current.to_version == rollout.to_version and \
        current.started_at == rollout.started_at
    ops: list[Op] = []
    compares = [fence]
    if rollout.state == "failed" and service.update.auto_revert and \
            not rollout.reverted_to and service.task_version == rollout.to_version and \
            (service.task_name, rollout.from_version) in snap.task_definitions:
        kv = store.get(store.keys.service(name))
        if kv is not None:
            stored = decode(kv.value, Service, where=kv.key)
            if stored.task_version == rollout.to_version:
                reverted = msgspec.structs.replace(stored, task_version=rollout.from_version)
                ops.append(Put(kv.key, encode(reverted)))
                compares.append(Compare(kv.key, kv.revision))
                rollout = msgspec.structs.replace(rollout, reverted_to=rollout.from_version)
    if same and current == rollout and not ops:
        return rollout
    if same:
        rollouts[-1] = rollout
    else:
        rollouts.append(rollout)
    history = RolloutHistory(cluster=cluster, service=name, rollouts=rollouts[-HISTORY:])
    ops.append(Put(key, encode(history)))
    res = store.txn(compares, ops)
    if not res.succeeded:
        log.warning("%s: the rollout record was not written (lock lost or the service "
                    "changed meanwhile)", label(pair))
        return rollout
    cache.record_rollouts(history, res.revision)
    if rollout != current:
        _log_progress(pair, current if same else None, rollout)
        if len(ops) > 1:
            log.warning("%s: auto_revert: service set back to version %d", label(pair),
                        rollout.reverted_to)
    return rollout


def _log_progress(pair: Pair, before: Rollout | None, rollout: Rollout) -> None:
    """Log a rollout that started (``before`` is None) or changed state."""
    if before is None:
        log.info("%s: rollout %d → %d started", label(pair), rollout.from_version,
                 rollout.to_version)
    elif rollout.state != before.state:
        (log.warning if rollout.state == "failed" else log.info)(
            "%s: rollout %d → %d %s%s", label(pair), rollout.from_version,
            rollout.to_version, rollout.state,
            f": {rollout.message}" if rollout.message else "")


def with_rollout(status: ServiceStatus, service: Service, rollout: Rollout | None
                 ) -> ServiceStatus:
    """``status`` told in terms of the service's rollout to its current version, when
    one is running (``progressing``) or failed (``error``)."""
    if rollout is None or rollout.to_version != service.task_version:
        return status
    if rollout.state == "running":
        return msgspec.structs.replace(
            status, state="progressing",
            message=(f"rolling out version {rollout.from_version} → {rollout.to_version}: "
                     f"{rollout.updated}/{rollout.desired} updated, {rollout.old} old left"
                     + (f"; {rollout.message}" if rollout.message else "")))
    if rollout.state == "failed":
        return msgspec.structs.replace(
            status, state="error",
            message=f"rollout to version {rollout.to_version} failed: " + (
                rollout.message + (f"; reverted to version {rollout.reverted_to}"
                                   if rollout.reverted_to else "")))
    return status
