"""Environments and deployments on the in-memory store, without processes: the
compare-and-swap writes, deployment tokens, rollback, delete, pagination, and the
deployment tracker's status derivation."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import msgspec
import pytest

from skedlib.client import Client
from skedlib.codecs import decode, encode, parse_manifest
from skedlib.environments import (
    Deployment,
    EnvironmentCreate,
    Environments,
    EnvironmentUpdate,
    Observed,
    environment_health,
    evaluate,
)
from skedlib.environments.keys import EnvironmentKeyspace
from skedlib.environments.models import HISTORY_LIMIT
from skedlib.errors import ConflictError, NotFound, ValidationError
from skedlib.models import (
    Cluster,
    Container,
    Rollout,
    RolloutHistory,
    Service,
    ServiceStatus,
    Task,
    TaskDefinition,
    TaskHealth,
)
from skedlib.store.base import ListResult

MANIFEST = """
clusters: [{name: default, services: []}, {name: other, services: []}]
task_definitions:
  - {name: d, version: 1, containers: [{name: x, type: process, executor: {argv: [sleep, "9"]}}]}
  - {name: d, version: 2, containers: [{name: x, type: process, executor: {argv: [sleep, "9"]}}]}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def client() -> Iterator[Client]:
    with Client.open(f"memory://{uuid.uuid4().hex}") as c:
        c.apply(parse_manifest(MANIFEST, "m.yml"))
        yield c


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def envs(client: Client, clock: Clock) -> Environments:
    return Environments(client.store, clock=clock, settle=3.0)


def _create(envs: Environments, name: str = "agentd", cluster: str = "default",
            version: int = 1, **extra: object) -> str:
    return envs.create(EnvironmentCreate(name=name, cluster=cluster, task_name="d",
                                         task_version=version, **extra)  # type: ignore[arg-type]
                       ).deployment_token


def _store(client: Client) -> list[tuple[str, bytes]]:
    return [(kv.key, kv.value) for kv in client.backend.list(client.keys.prefix).items]


def _complete(client: Client, envs: Environments, name: str = "agentd") -> Deployment:
    """Mark the current deployment completed, as the tracker would."""
    env = envs.get(name)
    key = EnvironmentKeyspace(client.keys).deployment(name, env.current_deployment)
    kv = client.backend.get(key)
    assert kv is not None
    dep = msgspec.structs.replace(decode(kv.value, Deployment), status="completed")
    client.backend.put(key, encode(dep))
    return dep


def test_create_validates_and_refuses_duplicates(client: Client, envs: Environments) -> None:
    token = _create(envs, constraints=["attribute:zone == a"], max_parallel=2)
    view = envs.get("agentd")
    assert (view.health, view.deployment_status, view.deployment_token) == ("unknown", "",
                                                                            token)
    assert client.service("agentd") is None, "nothing runs before the first deployment"
    before = _store(client)
    with pytest.raises(ConflictError, match='environment "agentd" already exists'):
        _create(envs)
    with pytest.raises(ValidationError, match='field task_version: task definition "d" '
                                              "version 5 does not exist"):
        _create(envs, name="x", version=5)
    with pytest.raises(ValidationError, match='field cluster: cluster "nope" does not exist'):
        _create(envs, name="x", cluster="nope")
    with pytest.raises(ValidationError, match="field name: invalid environment name"):
        _create(envs, name="a..b")
    with pytest.raises(ValidationError, match=r"field constraints\[0\]: constraint"):
        _create(envs, name="x", constraints=["zone is a"])
    client.backend.put(client.keys.service("taken"), encode(Service(
        name="taken", task_name="d", task_version=1)))
    before.append((client.keys.service("taken"), client.backend.get(
        client.keys.service("taken")).value))  # type: ignore[union-attr]
    with pytest.raises(ConflictError, match='a service named "taken" already exists'):
        _create(envs, name="taken")
    assert sorted(_store(client)) == sorted(before)


def test_a_deployment_is_one_transaction_and_a_token_deploys_once(client: Client,
                                                                  envs: Environments) -> None:
    token = _create(envs, max_parallel=3, deployment_deadline=60)
    dep = envs.deploy("agentd", token)
    assert (dep.id, dep.status, dep.task_version, dep.previous_version) == (
        "00000001", "in_progress", 1, None)
    svc = client.service("agentd")
    assert svc is not None
    assert (svc.scheduler, svc.task_name, svc.task_version, svc.update.max_parallel,
            svc.update.deadline) == ("daemon", "d", 1, 3, 60 * 10**9)
    assert client.cluster("default").services == ["agentd"]  # type: ignore[union-attr]
    env = envs.get("agentd")
    assert env.current_deployment == dep.id and env.deployment_token != token
    before = _store(client)
    for stale in (token, "", "made-up"):
        with pytest.raises(ConflictError, match=r"field token: not the environment's current "
                                                r'deployment token .* deployment is "00000001"'):
            envs.deploy("agentd", stale)
    assert _store(client) == before, "a refused deployment changed the store"
    with pytest.raises(NotFound, match='environment "nope" not found'):
        envs.deploy("nope", token)


def test_a_new_deployment_supersedes_one_in_progress(client: Client,
                                                     envs: Environments) -> None:
    first = envs.deploy("agentd", _create(envs))
    envs.update("agentd", EnvironmentUpdate(task_version=2))
    second = envs.deploy("agentd", envs.get("agentd").deployment_token)
    assert second.previous_version == 1
    old = envs.deployment("agentd", first.id)
    assert old.status == "failed" and old.message == (
        "superseded by deployment 00000002 before it completed")


def test_update_keeps_the_token_and_applies_with_the_next_deployment(
        client: Client, envs: Environments) -> None:
    envs.deploy("agentd", _create(envs))
    token = envs.get("agentd").deployment_token
    view = envs.update("agentd", EnvironmentUpdate(task_version=2, max_parallel=2,
                                                   constraints=["attribute:zone == a"]))
    assert (view.task_version, view.max_parallel, view.deployment_token) == (2, 2, token)
    assert client.service("agentd").task_version == 1  # type: ignore[union-attr]
    before = _store(client)
    with pytest.raises(ValidationError, match="field task_version: task definition"):
        envs.update("agentd", EnvironmentUpdate(task_version=3))
    with pytest.raises(ValidationError, match=r"field constraints\[0\]"):
        envs.update("agentd", EnvironmentUpdate(constraints=["bad constraint"]))
    with pytest.raises(NotFound):
        envs.update("nope", EnvironmentUpdate(task_version=1))
    assert _store(client) == before
    envs.deploy("agentd", token)
    svc = client.service("agentd")
    assert svc is not None and (svc.task_version, svc.constraints) == (2, ["attribute:zone == a"])


def test_rollback_deploys_the_previous_completed_deployment(client: Client,
                                                            envs: Environments) -> None:
    token = _create(envs)
    with pytest.raises(ConflictError, match="no earlier completed deployment"):
        envs.deploy("agentd", token, rollback=True)
    first = envs.deploy("agentd", token)
    _complete(client, envs)
    envs.update("agentd", EnvironmentUpdate(task_version=2, max_parallel=4))
    envs.deploy("agentd", envs.get("agentd").deployment_token)
    back = envs.deploy("agentd", envs.get("agentd").deployment_token, rollback=True)
    assert (back.rollback_to, back.task_version, back.max_parallel, back.previous_version) \
        == (first.id, 1, 1, 2)
    env = envs.get("agentd")
    assert (env.task_version, env.max_parallel) == (1, 1), "the environment is set back"
    assert client.service("agentd").task_version == 1  # type: ignore[union-attr]


def test_delete_removes_the_service_or_keeps_it(client: Client, envs: Environments) -> None:
    envs.deploy("agentd", _create(envs))
    envs.deploy("keep", _create(envs, name="keep"))
    deleted = envs.delete("agentd")
    assert not deleted.kept_tasks and "the scheduler stops its tasks" in deleted.message
    assert client.service("agentd") is None
    assert client.cluster("default").services == ["keep"]  # type: ignore[union-attr]
    deployments = EnvironmentKeyspace(client.keys).environment_deployments("agentd")
    assert client.backend.list(deployments).items == []
    kept = envs.delete("keep", keep_tasks=True)
    assert kept.kept_tasks and "sked delete service keep" in kept.message
    assert client.service("keep") is not None
    assert client.cluster("default").services == ["keep"]  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        envs.get("keep")
    with pytest.raises(NotFound):
        envs.delete("keep")
    assert envs.delete(_create(envs, name="never") and "never").message == (
        'environment "never" deleted (nothing was running)')


def test_history_is_bounded(client: Client, envs: Environments) -> None:
    token = _create(envs)
    for _ in range(HISTORY_LIMIT + 5):
        token = envs.deploy("agentd", token) and envs.get("agentd").deployment_token
    ids = [d.id for d in envs.deployments("agentd", limit=1000).items]
    assert len(ids) == HISTORY_LIMIT and ids[0] == f"{HISTORY_LIMIT + 5:08d}"


def test_pagination_and_cluster_filter(envs: Environments) -> None:
    for i in range(5):
        _create(envs, name=f"e{i}", cluster="other" if i % 2 else "default")
    names, token, pages = [], "", 0
    while True:
        page = envs.list(limit=2, next_token=token)
        names += [e.name for e in page.items]
        pages += 1
        token = page.next_token
        if not token:
            break
    assert (names, pages) == ([f"e{i}" for i in range(5)], 3)
    assert [e.name for e in envs.list(cluster="other").items] == ["e1", "e3"]
    assert envs.list(cluster="none").items == []
    for bad in ({"limit": 0}, {"limit": 1001}, {"next_token": "!!"},
                {"cluster": "a-b"}):
        with pytest.raises(ValidationError, match="query parameter"):
            envs.list(**bad)  # type: ignore[arg-type]
    token = _create(envs, name="deps")
    for _ in range(3):
        token = envs.deploy("deps", token) and envs.get("deps").deployment_token
    first = envs.deployments("deps", limit=2)
    rest = envs.deployments("deps", limit=2, next_token=first.next_token)
    assert [d.id for d in first.items + rest.items] == ["00000003", "00000002", "00000001"]
    assert rest.next_token == ""


# -- the tracker ----------------------------------------------------------------------------
_TD = {v: TaskDefinition(name="d", version=v, containers=[Container(name="x", type="process")])
       for v in (1, 2)}
_CLUSTER = Cluster(name="default", services=["agentd"])


def _dep(version: int = 2, **changes: object) -> Deployment:
    dep = Deployment(id="00000002", environment="agentd", cluster="default", task_name="d",
                     task_version=version, status="in_progress", started_at=1000.0,
                     deadline=60.0)
    return msgspec.structs.replace(dep, **changes)  # type: ignore[arg-type]


def _seen(tasks: dict[str, int], healthy: set[str] | None = None, *, status: str = "ok",
          status_version: int = 2, revision: int = 50, rejected: dict[str, str] | None = None,
          hosts: set[str] | None = None) -> Observed:
    """Tasks by host → version; ``healthy``: hosts whose task is healthy (default: all)."""
    out = []
    health = {}
    for i, (host, v) in enumerate(sorted(tasks.items())):
        reason = (rejected or {}).get(host, "")
        t = Task(cluster=_CLUSTER, task_definition=_TD[v], service="agentd", instance=i,
                 host=host, rejected=bool(reason), reject_reason=reason)
        out.append(t)
        good = healthy is None or host in healthy
        health[t.id] = TaskHealth(task_id=t.id, host=host, healthy=good,
                                  state="healthy" if good else "unhealthy",
                                  message="" if good else "check failed: connection refused")
    return Observed(
        service=Service(name="agentd", task_name="d", task_version=2, scheduler="daemon"),
        status=ServiceStatus(cluster="default", service="agentd", task_version=status_version,
                             state=status, desired=len(tasks),  # type: ignore[arg-type]
                             revision=revision),
        tasks=out, health=health, hosts=set(tasks) if hosts is None else hosts,
        deployment_revision=40)


def test_completed_when_every_host_runs_the_version_healthy() -> None:
    done = evaluate(_dep(), _seen({"h1": 2, "h2": 2}), now=1001.0)
    assert (done.status, done.hosts, done.updated_hosts, done.ended_at) == (
        "completed", 2, 2, 1001.0)
    assert environment_health(_seen({"h1": 2, "h2": 2})) == "healthy"


@pytest.mark.parametrize(("seen", "why"), [
    (_seen({"h1": 2, "h2": 1}, status="progressing"), "1/2 host(s) updated, 1 still on"),
    (_seen({"h1": 2, "h2": 2}, healthy={"h1"}, status="progressing"), "1/2 host(s) healthy"),
    (_seen({"h1": 1, "h2": 1}, status_version=1), "waiting for the scheduler"),
    (_seen({"h1": 2, "h2": 2}, revision=30), "2/2 host(s) healthy"),  # status from before
])
def test_in_progress_until_then(seen: Observed, why: str) -> None:
    dep = evaluate(_dep(), seen, now=1001.0)
    assert dep.status == "in_progress" and why in dep.message, dep


def test_an_unchanged_ok_status_counts_after_settling() -> None:
    seen = _seen({"h1": 2}, revision=30)
    assert evaluate(_dep(), seen, now=1002.9).status == "in_progress"
    assert evaluate(_dep(), seen, now=1003.0).status == "completed"


def test_failed_when_a_host_rejects_the_version() -> None:
    seen = _seen({"h1": 2, "h2": 2}, rejected={"h2": "port 80 is in use"},
                 status="unschedulable")
    dep = evaluate(_dep(), seen, now=1001.0)
    assert dep.status == "failed" and dep.ended_at == 1001.0
    assert [(f.host, f.reason) for f in dep.failed_hosts] == [("h2", "port 80 is in use")]
    assert dep.message.startswith("1 host(s) rejected task definition 'd' version 2")
    assert environment_health(seen) == "unhealthy"


def test_failed_at_the_deadline_naming_every_host_behind() -> None:
    seen = _seen({"h1": 2, "h2": 2, "h3": 1}, healthy={"h1", "h3"}, status="progressing")
    assert evaluate(_dep(), seen, now=1059.0).status == "in_progress"
    dep = evaluate(_dep(), seen, now=1060.0)
    assert dep.status == "failed" and dep.message.startswith(
        "deadline of 60s passed with 1/3 host(s) running version 2 healthy")
    assert [(f.host, f.reason.split(":")[0]) for f in dep.failed_hosts] == [
        ("h2", "task default-agentd-2-1 is unhealthy"), ("h3", "still runs version 1")]


def test_failed_when_the_service_changes_behind_its_back_or_the_scheduler_errs() -> None:
    seen = _seen({"h1": 2})
    seen.service = None
    assert "was deleted" in evaluate(_dep(), seen, now=1001.0).message
    seen.service = Service(name="agentd", task_name="d", task_version=1)
    assert "changed to task definition 'd' version 1" in evaluate(_dep(), seen, 1001.0).message
    seen = _seen({"h1": 2}, status="error")
    seen.status.message = "no scheduler named 'daemon'"  # type: ignore[union-attr]
    assert evaluate(_dep(), seen, 1001.0).message == (
        "the scheduler reports an error: no scheduler named 'daemon'")
    seen = _seen({"h1": 2}, status="progressing")
    seen.rollouts = RolloutHistory(cluster="default", service="agentd", rollouts=[
        Rollout(from_version=1, to_version=2, state="failed", started_at=1000.5,
                message="boom")])
    assert evaluate(_dep(), seen, 1001.0).message == "the rollout to version 2 failed: boom"


def test_a_finished_deployment_is_left_alone() -> None:
    for status in ("completed", "failed"):
        dep = _dep(status=status)
        assert evaluate(dep, _seen({"h1": 1}, status="error"), now=9999.0) is dep


def test_tracking_stores_the_outcome_once(client: Client, envs: Environments,
                                          clock: Clock) -> None:
    dep = envs.deploy("agentd", _create(envs, deployment_deadline=30))
    assert envs.track_all() == 1
    assert envs.deployment("agentd", dep.id).status == "in_progress"
    clock.now += 31
    assert envs.track_all() == 1
    stored = client.backend.get(EnvironmentKeyspace(client.keys).deployment("agentd", dep.id))
    assert stored is not None
    failed = decode(stored.value, Deployment)
    assert failed.status == "failed" and "is one running?" in failed.message
    assert envs.track_all() == 0
    assert envs.get("agentd").deployment_status == "failed"



def test_a_page_of_environments_is_observed_in_one_read(client: Client,
                                                        envs: Environments) -> None:
    for name in ("a1", "a2", "a3"):
        envs.deploy(name, _create(envs, name=name))
    lists: list[str] = []
    real = client.backend.list

    def counting(prefix: str) -> ListResult:
        lists.append(prefix)
        return real(prefix)
    client.backend.list = counting  # type: ignore[method-assign]
    page = envs.list()
    assert [v.name for v in page.items] == ["a1", "a2", "a3"]
    assert lists.count(f"{client.keys.prefix}state/") == 1
    lists.clear()
    assert envs.track_all() == 3
    assert lists.count(f"{client.keys.prefix}state/") == 1
    for name in ("a1", "a2", "a3"):
        _complete(client, envs, name)
    lists.clear()
    assert envs.track_all() == 0
    assert f"{client.keys.prefix}state/" not in lists, "nothing in progress: nothing read"
