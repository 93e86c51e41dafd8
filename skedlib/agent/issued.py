"""The agent's side of the issued state: following its host's tasks and writing back.

:class:`IssuedWatcher` follows ``state/hosts/<host>/`` without gaps: list, then watch from
the list's revision + 1; after a :class:`~skedlib.errors.Compacted` it lists again (the
agent diffs the new list against what it knew); while the backend is unreachable it
retries with backoff and resumes from the last revision it saw.

:func:`patch_task` is the only way the agent writes a task: the provided port and
rejections. It edits the stored JSON objects in place (fields it does not know survive,
so a newer scheduler's fields are kept) at both ``state/hosts/<host>/<id>`` and
``state/tasks/<id>``, in one transaction comparing both keys' revisions. When the host
key changed since the agent read it, nothing is written and the caller waits for the
watch to deliver the new version. ``state/tasks/<id>`` is left alone when it is absent or
places the task on another host.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from skedlib.errors import BackendError, Compacted, ConflictError, ValidationError
from skedlib.keys import Keyspace
from skedlib.store.base import Backend, Compare, ListResult, Op, Put, Watch, WatchEvent

__all__ = ["IssuedWatcher", "patch_task"]

log = logging.getLogger(__name__)


class IssuedWatcher:
    """Calls ``on_list`` with every (re)listing and ``on_events`` with every watch batch."""

    def __init__(self, backend: Backend, prefix: str, on_list: Callable[[ListResult], None],
                 on_events: Callable[[list[WatchEvent]], None],
                 poll_timeout: float = 1.0) -> None:
        self.backend = backend
        self.prefix = prefix
        self.on_list = on_list
        self.on_events = on_events
        self.poll_timeout = poll_timeout
        self._stop = threading.Event()
        self._watch: Watch | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="issued-watcher", daemon=True)

    def start(self) -> None:
        """Start following the prefix."""
        self._thread.start()

    def stop(self) -> None:
        """Stop following (a blocked watch returns at once)."""
        self._stop.set()
        with self._lock:
            watch = self._watch
        if watch is not None:
            watch.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        next_revision = 0
        backoff = 0.2
        while not self._stop.is_set():
            try:
                if next_revision == 0:
                    listed = self.backend.list(self.prefix)
                    self.on_list(listed)
                    next_revision = listed.revision + 1
                watch = self.backend.watch(self.prefix, next_revision)
                with self._lock:
                    self._watch = watch
                if self._stop.is_set():
                    watch.close()
                    return
                with watch:
                    while not self._stop.is_set():
                        events = watch.next(timeout=self.poll_timeout)
                        if events:
                            self.on_events(events)
                            next_revision = events[-1].revision + 1
                            backoff = 0.2
            except Compacted as exc:
                log.info("watch of %s fell behind compaction (%s): listing again",
                         self.prefix, exc)
                next_revision = 0
            except BackendError as exc:
                if self._stop.is_set():
                    return
                log.warning("watching %s failed: %s (retrying in %.1fs)", self.prefix, exc,
                            backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with self._lock:
                    self._watch = None


def _patched(value: bytes, patch: Callable[[dict[str, Any]], None]) -> bytes | None:
    try:
        obj = json.loads(value)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    patch(obj)
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def patch_task(backend: Backend, keys: Keyspace, host: str, task_id: str, revision: int,
               patch: Callable[[dict[str, Any]], None], attempts: int = 5) -> int:
    """Apply ``patch`` to the task's JSON object at both keys (see the module docstring).

    ``revision`` is the host key's revision the caller decided on. Returns the revision
    of the write, or 0 when the host key changed or vanished (nothing written). Raises
    :class:`ConflictError` if ``state/tasks/<id>`` kept changing, and
    :class:`~skedlib.errors.ValidationError` when the host key's value is not a JSON object.
    """
    host_key = keys.host_task(host, task_id)
    task_key = keys.task(task_id)
    for _ in range(attempts):
        hkv = backend.get(host_key)
        if hkv is None or hkv.revision != revision:
            return 0
        new_host = _patched(hkv.value, patch)
        if new_host is None:
            raise ValidationError(f"{host_key}: not a JSON object; cannot write it back")
        compares = [Compare(host_key, hkv.revision)]
        ops: list[Op] = [Put(host_key, new_host)]
        tkv = backend.get(task_key)
        compares.append(Compare(task_key, tkv.revision if tkv else 0))
        if tkv is not None:
            try:
                placed = json.loads(tkv.value).get("host", "")
            except (ValueError, AttributeError):
                placed = None
            new_task = _patched(tkv.value, patch) if placed in ("", host) else None
            if new_task is not None:
                ops.append(Put(task_key, new_task))
        res = backend.txn(compares, ops)
        if res.succeeded:
            return res.revision
    raise ConflictError(f"{task_key} kept changing while the agent wrote {task_id} back")
