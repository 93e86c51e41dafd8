"""The deployment tracker's read (:func:`skedlib.environments.observe`) on every
backend: one listing of ``state/`` and the services checked unchanged around it, so what
it returns was all true at one revision."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from skedlib.codecs import encode
from skedlib.environments import observe
from skedlib.keys import Keyspace
from skedlib.models import Cluster, Container, Service, Task, TaskDefinition, TaskHealth
from skedlib.plugins import open_backend
from skedlib.runtime import Store
from skedlib.store.base import Backend, ListResult
from tests.harness import consul as consul_harness
from tests.harness import etcd as etcd_harness
from tests.harness.common import DelegatingBackend

etcd_single = etcd_harness.etcd_single
consul_dev = consul_harness.consul_dev

_TD = TaskDefinition(name="d", version=2, containers=[Container(name="x", type="process")])


class _Interleaving(DelegatingBackend):
    """Records every prefix listed; ``before_list`` runs before each listing."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.listed: list[str] = []
        self.before_list: Callable[[], None] = lambda: None

    def list(self, prefix: str) -> ListResult:
        self.listed.append(prefix)
        self.before_list()
        return self.inner.list(prefix)


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.integration),
                        pytest.param("consul", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[_Interleaving]:
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path}/store.db"
    else:
        fixture = "etcd_single" if request.param == "etcd" else "consul_dev"
        server = request.getfixturevalue(fixture)
        url = server.url()
    inner = open_backend(url)
    try:
        yield _Interleaving(inner)
    finally:
        inner.close()


def _service(version: int) -> bytes:
    return encode(Service(name="agentd", task_name="d", task_version=version,
                          scheduler="daemon"))


def test_observe_is_one_listing_at_one_revision(backend: _Interleaving) -> None:
    store = Store(backend, Keyspace(f"o{uuid.uuid4().hex[:8]}/"))
    keys = store.keys
    task = Task(cluster=Cluster(name="default", services=["agentd"]), task_definition=_TD,
                service="agentd", instance=0, host="h1")
    backend.put(keys.service("agentd"), _service(2))
    backend.put(keys.task(task.id), encode(task))
    backend.put(keys.task_health(task.id), encode(TaskHealth(task_id=task.id, host="h1",
                                                             healthy=True)))
    backend.put(keys.agent("h1"), b"{}")
    seen = observe(store, "default", "agentd", 7)
    assert backend.listed == [f"{keys.prefix}state/"], "one listing, of state/ only"
    assert seen.service is not None and seen.service.task_version == 2
    assert [t.id for t in seen.tasks] == [task.id] and set(seen.health) == {task.id}
    assert seen.hosts == {"h1"} and seen.deployment_revision == 7 and seen.revision > 0

    # the service changes between its read and the listing: read again, never a mix
    versions = iter([3])

    def change_service() -> None:
        version = next(versions, None)
        if version is not None:
            backend.put(keys.service("agentd"), _service(version))
    backend.before_list = change_service
    backend.listed.clear()
    seen = observe(store, "default", "agentd")
    assert len(backend.listed) == 2
    assert seen.service is not None and seen.service.task_version == 3
