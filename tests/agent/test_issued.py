"""``patch_task``: the agent's one way to write a task back (the port, rejections)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from skedlib.agent.issued import patch_task
from skedlib.errors import ConflictError, ValidationError
from skedlib.keys import Keyspace
from skedlib.store.base import Compare, Op, Put, TxnResult
from skedlib.store.memory import MemoryBackend
from tests.harness.common import DelegatingBackend

KEYS = Keyspace()
HOST_KEY, TASK_KEY = KEYS.host_task("h1", "default-web-1-0"), KEYS.task("default-web-1-0")


def _set_port(obj: dict[str, object]) -> None:
    obj["port"] = 20001


@pytest.fixture
def memory() -> MemoryBackend:
    backend = MemoryBackend()
    backend.put(HOST_KEY, b'{"id":"default-web-1-0","host":"h1","newer_field":1}')
    backend.put(TASK_KEY, b'{"id":"default-web-1-0","host":"h1"}')
    return backend


def test_patches_both_keys_keeping_unknown_fields(memory: MemoryBackend) -> None:
    revision = memory.get(HOST_KEY).revision  # type: ignore[union-attr]
    written = patch_task(memory, KEYS, "h1", "default-web-1-0", revision, _set_port)
    assert written > revision
    assert json.loads(memory.get(HOST_KEY).value) == {  # type: ignore[union-attr]
        "id": "default-web-1-0", "host": "h1", "newer_field": 1, "port": 20001}
    assert json.loads(memory.get(TASK_KEY).value)["port"] == 20001  # type: ignore[union-attr]


def test_the_task_key_of_another_host_is_left_alone(memory: MemoryBackend) -> None:
    memory.put(TASK_KEY, b'{"id":"default-web-1-0","host":"h2"}')
    revision = memory.get(HOST_KEY).revision  # type: ignore[union-attr]
    assert patch_task(memory, KEYS, "h1", "default-web-1-0", revision, _set_port)
    assert json.loads(memory.get(TASK_KEY).value) == {"id": "default-web-1-0", "host": "h2"}  # type: ignore[union-attr]


def test_a_changed_host_key_writes_nothing_and_returns_0(memory: MemoryBackend) -> None:
    old = memory.get(HOST_KEY).revision  # type: ignore[union-attr]
    memory.put(HOST_KEY, b'{"id":"default-web-1-0","host":"h1","instance":2}')
    before = memory.current_revision()
    assert patch_task(memory, KEYS, "h1", "default-web-1-0", old, _set_port) == 0
    assert memory.current_revision() == before
    memory.delete(HOST_KEY)
    assert patch_task(memory, KEYS, "h1", "default-web-1-0", old, _set_port) == 0


class _HostKeyMovesUnderTheWrite(DelegatingBackend):
    """Changes the host key between the read and the write: a lost race, not retried."""

    def __init__(self, inner: MemoryBackend) -> None:
        super().__init__(inner)
        self.txns = 0

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        self.txns += 1
        if ops and ops[0].key == HOST_KEY:
            self.inner.put(HOST_KEY, b'{"id":"default-web-1-0","host":"h1","instance":3}')
        return self.inner.txn(compares, ops)


def test_a_host_key_changed_during_the_write_is_not_retried(memory: MemoryBackend) -> None:
    backend = _HostKeyMovesUnderTheWrite(memory)
    revision = memory.get(HOST_KEY).revision  # type: ignore[union-attr]
    assert patch_task(backend, KEYS, "h1", "default-web-1-0", revision, _set_port) == 0
    assert "port" not in json.loads(memory.get(HOST_KEY).value)  # type: ignore[union-attr]


class _TaskKeyKeepsChanging(DelegatingBackend):
    """Writes state/tasks/default-web-1-0 before every transaction of the agent."""

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        if ops and isinstance(ops[0], Put) and ops[0].key == HOST_KEY:
            self.inner.put(TASK_KEY, b'{"id":"default-web-1-0","host":"h1"}')
        return self.inner.txn(compares, ops)


def test_a_task_key_that_keeps_changing_is_a_conflict(memory: MemoryBackend) -> None:
    backend = _TaskKeyKeepsChanging(memory)
    revision = memory.get(HOST_KEY).revision  # type: ignore[union-attr]
    with pytest.raises(ConflictError, match="state/tasks/default-web-1-0"):
        patch_task(backend, KEYS, "h1", "default-web-1-0", revision, _set_port, attempts=3)
    assert memory.get(HOST_KEY).revision == revision  # type: ignore[union-attr]


def test_a_host_key_that_is_not_an_object_is_refused(memory: MemoryBackend) -> None:
    memory.put(HOST_KEY, b"[1, 2]")
    revision = memory.get(HOST_KEY).revision  # type: ignore[union-attr]
    with pytest.raises(ValidationError, match="not a JSON object"):
        patch_task(memory, KEYS, "h1", "default-web-1-0", revision, _set_port)
