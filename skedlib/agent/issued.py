"""The agent's side of the issued state: writing its host's tasks back.

The agent follows ``state/hosts/<host>/`` with an :class:`~skedlib.runtime.Informer`
(list, watch from the listing's revision + 1, list again after a compaction, back off
while the store is away).

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
from collections.abc import Callable
from typing import Any, Literal

from skedlib.errors import ValidationError
from skedlib.keys import Keyspace
from skedlib.runtime import RETRY, Retry, retry_on_conflict
from skedlib.store.base import Backend, Compare, Op, Put

__all__ = ["patch_task"]


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
    of the write, or 0 when the host key changed or vanished (nothing written, not
    retried). Raises :class:`~skedlib.errors.ConflictError` if ``state/tasks/<id>`` kept
    changing, and :class:`~skedlib.errors.ValidationError` when the host key's value is
    not a JSON object.
    """
    host_key = keys.host_task(host, task_id)
    task_key = keys.task(task_id)

    def attempt() -> int | Literal[Retry.RETRY]:
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
        return res.revision if res.succeeded else RETRY

    return retry_on_conflict(attempt, what=f"{task_key} (written back by host {host})",
                             attempts=attempts)
