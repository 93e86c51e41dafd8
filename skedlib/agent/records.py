"""Writing tasks' health records (``state/health/<task_id>``) without blocking the agent.

The agent hands each new :class:`~skedlib.models.TaskHealth` to a :class:`HealthWriter`;
one background thread writes the latest record of each task (older ones queued for the
same task are dropped). Every write compares the revision this writer last wrote, so a
record changed by someone else (``pass_ttl_check``, or another host's agent after the
task moved) is read back and merged instead of overwritten: for each check, the entry
with the newer ``updated_at`` wins; a record naming another host is only overwritten
while the task is issued to this host. A delete only removes a record that this writer
last wrote, or that names this host.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Literal

from skedlib.agent.lifecycle import TaskState
from skedlib.codecs import decode, encode
from skedlib.errors import BackendError, ConflictError, ValidationError
from skedlib.keys import Keyspace
from skedlib.models import HealthState, TaskHealth
from skedlib.runtime import RETRY, Retry, retry_on_conflict
from skedlib.store.base import Backend, Compare, Delete, KeyValue, Put

__all__ = ["HealthWriter", "compose_health", "merge_checks"]

log = logging.getLogger(__name__)

_DELETE = None
_RETRY_AFTER = 1.0
_ATTEMPTS = 5


_STATES: dict[str, HealthState] = {
    "idle": "pending", "starting": "starting", "stopping": "exited", "backoff": "exited",
    "rejecting": "rejected", "rejected": "rejected"}
"""The record's state for a task that is not running, by lifecycle phase."""


def compose_health(state: TaskState, host: str, checks: TaskHealth | None,
                   force_state: HealthState | None = None, limits: str = "") -> TaskHealth:
    """The health record of a task in lifecycle ``state`` (``checks``: the health
    provider's last report; ``limits``: how its containers are contained)."""
    healthy = False
    record_state: HealthState
    if force_state is not None:
        record_state = force_state
    elif state.phase == "running":
        if state.healthy:
            record_state, healthy = "healthy", True
        elif not state.ever_healthy:
            record_state = "starting"
        else:
            record_state = "unhealthy"
    else:
        record_state = _STATES.get(state.phase, "stopped")
    return TaskHealth(task_id=state.task_id, host=host, state=record_state, healthy=healthy,
                      checks=list(checks.checks) if checks else [], attempts=state.attempts,
                      message=state.message, since=state.healthy_since or time.time(),
                      limits=limits, updated_at=time.time())


def merge_checks(ours: TaskHealth, stored: TaskHealth) -> TaskHealth:
    """``ours`` with each check replaced by the stored one when that one is newer."""
    newer = {c.name: c for c in stored.checks}
    ours.checks = [newer[c.name] if c.name in newer and newer[c.name].updated_at
                   > c.updated_at else c for c in ours.checks]
    return ours


class HealthWriter:
    """Writes health records from a background thread, latest record per task."""

    def __init__(self, backend: Backend, keyspace: Keyspace, host: str) -> None:
        self.backend = backend
        self.keys = keyspace
        self.host = host
        self._pending: dict[str, TaskHealth | None] = {}
        self._revisions: dict[str, int] = {}
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="health-writer", daemon=True)
        self._thread.start()

    def put(self, health: TaskHealth) -> None:
        """Write ``health`` soon (replacing a queued record of the same task)."""
        with self._cond:
            self._pending[health.task_id] = health
            self._cond.notify_all()

    def delete(self, task_id: str) -> None:
        """Remove the task's record soon, if this host still owns it."""
        with self._cond:
            self._pending[task_id] = _DELETE
            self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued is written; False when ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Flush for up to ``timeout`` seconds, then stop the thread."""
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                batch, self._pending = self._pending, {}
                self._busy = True
            failed: dict[str, TaskHealth | None] = {}
            for task_id, record in batch.items():
                try:
                    if record is _DELETE:
                        self._delete(task_id)
                    else:
                        self._write(record)
                except BackendError as exc:
                    log.warning("could not write the health of %s: %s", task_id, exc)
                    failed[task_id] = record
            with self._cond:
                for task_id, record in failed.items():
                    self._pending.setdefault(task_id, record)
                self._busy = False
                self._cond.notify_all()
                if failed and not self._closed:
                    self._cond.wait(_RETRY_AFTER)

    def _stored(self, key: str) -> tuple[int, TaskHealth | None]:
        kv: KeyValue | None = self.backend.get(key)
        if kv is None:
            return 0, None
        try:
            return kv.revision, decode(kv.value, TaskHealth, where=kv.key)
        except ValidationError:
            return kv.revision, None

    def _write(self, record: TaskHealth) -> None:
        key = self.keys.task_health(record.task_id)
        # the first try compares the revision this writer wrote last, without a read
        known = self._revisions.get(record.task_id)

        def attempt() -> Literal[Retry.RETRY] | None:
            nonlocal known, record
            revision, known = known, None
            compares: list[Compare] = []
            if revision is None:
                revision, stored = self._stored(key)
                if stored is not None and stored.host and stored.host != self.host:
                    # another host's record: overwrite it only while the task is issued
                    # here. A restarted agent that adopted a task from a listing older
                    # than its move would otherwise replace the new host's record, then
                    # delete it when it stops its stale copy.
                    issued = self.backend.get(self.keys.host_task(self.host, record.task_id))
                    if issued is None:
                        return None  # the task runs elsewhere now: the record is theirs
                    compares.append(Compare(issued.key, issued.revision))
                if stored is not None:
                    record = merge_checks(record, stored)
            res = self.backend.txn([Compare(key, revision), *compares],
                                   [Put(key, encode(record))])
            if not res.succeeded:
                return RETRY
            self._revisions[record.task_id] = res.revision
            return None

        try:
            retry_on_conflict(attempt, what=key, attempts=_ATTEMPTS)
        except ConflictError:
            log.warning("gave up writing the health of %s: the record kept changing",
                        record.task_id)

    def _delete(self, task_id: str) -> None:
        key = self.keys.task_health(task_id)
        known = self._revisions.pop(task_id, None)

        def attempt() -> Literal[Retry.RETRY] | None:
            nonlocal known
            revision, known = known, None
            if revision is None:
                revision, stored = self._stored(key)
                if revision == 0:
                    return None
                if stored is not None and stored.host and stored.host != self.host:
                    return None  # the task runs elsewhere now
            if self.backend.txn([Compare(key, revision)], [Delete(key)]).succeeded:
                return None
            return RETRY

        # when someone keeps writing it, it is theirs to remove
        with contextlib.suppress(ConflictError):
            retry_on_conflict(attempt, what=key, attempts=_ATTEMPTS)
