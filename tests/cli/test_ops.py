"""Operator commands: drain/undrain, scale, rollout status/history, apply --wait."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import msgspec
import pytest

from skedlib.cli import ops
from skedlib.cli.main import main
from skedlib.client import Client
from skedlib.codecs import encode, parse_manifest
from skedlib.errors import ConflictError
from skedlib.models import (
    Cluster,
    Host,
    HostConfig,
    Rollout,
    RolloutHistory,
    ServiceStatus,
    Task,
    TaskDefinition,
    TaskHealth,
)
from skedlib.store.base import Compare, Op, Put, TxnResult

MANIFEST = """
task_definitions:
{tds}
services:
  - {{name: web, task_name: web, task_version: {version}, desired: 2, min: 1, max: 5}}
clusters:
  - {{name: default, services: [web]}}
"""
TD = ("  - {{name: web, version: {v}, containers: [{{name: c, type: bash, "
      "executor: {{start: run}}}}]}}")


def _manifest(version: int = 1, versions: Sequence[int] = (1,)) -> str:
    return MANIFEST.format(version=version,
                           tds="\n".join(TD.format(v=v) for v in versions))


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/ops.db"
    return f"memory://ops-{uuid.uuid4().hex}"


@pytest.fixture
def client(url: str) -> Iterator[Client]:
    with Client.open(url) as c:
        yield c


@pytest.fixture
def manifest(tmp_path: Path) -> Callable[..., str]:
    def write(version: int = 1, versions: Sequence[int] = (1,), name: str = "m.yml") -> str:
        path = tmp_path / name
        path.write_text(_manifest(version, versions))
        return str(path)
    return write


def sked(url: str, *argv: str) -> int:
    return main(["--backend", url, *argv])


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sked: error: "), err
    return err


def _in_background(fn: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


def _wait_for(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


# -- drain / undrain ----------------------------------------------------------------------
def test_drain_keeps_attributes_and_undrain_clears(url: str, client: Client,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    client.put_host_config(HostConfig(name="h1", attributes={"zone": "a"}))
    assert sked(url, "drain", "h1") == 0
    assert "host h1 draining" in capsys.readouterr().out
    assert client.host_config("h1") == HostConfig(name="h1", attributes={"zone": "a"},
                                                  draining=True)
    assert sked(url, "drain", "h1") == 0
    assert "already draining" in capsys.readouterr().out
    assert sked(url, "undrain", "h1") == 0
    assert "no longer draining" in capsys.readouterr().out
    assert client.host_config("h1") == HostConfig(name="h1", attributes={"zone": "a"})


def test_drain_a_live_host_creates_its_settings(url: str, client: Client) -> None:
    client.backend.put(client.keys.agent("h2"), encode(Host(name="h2", attributes={"x": "1"})))
    assert sked(url, "drain", "h2") == 0
    assert client.host_config("h2") == HostConfig(name="h2", draining=True)
    assert sked(url, "undrain", "h2") == 0
    assert client.host_config("h2") == HostConfig(name="h2")


def test_drain_of_an_unknown_host_writes_nothing(url: str, client: Client,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    before = client.backend.current_revision()
    assert sked(url, "drain", "nope") == 1
    assert 'host "nope": unknown host' in _one_line_error(capsys)
    assert sked(url, "undrain", "nope") == 1
    assert 'host "nope"' in _one_line_error(capsys)
    assert client.backend.current_revision() == before
    assert client.host_configs() == []


def _issue(client: Client, host: str, instance: int) -> Task:
    task = Task(cluster=Cluster(name="default", services=["web"]),
                task_definition=TaskDefinition(name="web", version=1), service="web",
                instance=instance, host=host, scheduled=True)
    client.backend.put(client.keys.task(task.id), encode(task))
    client.backend.put(client.keys.host_task(host, task.id), encode(task))
    return task


def test_drain_wait_returns_once_the_host_is_empty(url: str, client: Client,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    client.put_host_config(HostConfig(name="h1"))
    tasks = [_issue(client, "h1", i) for i in range(2)]

    def scheduler() -> None:  # moves the tasks off once the host is draining
        _wait_for(lambda: bool((c := client.host_config("h1")) and c.draining))
        for t in tasks:
            time.sleep(0.05)
            client.backend.delete(client.keys.host_task("h1", t.id))

    thread = _in_background(scheduler)
    assert sked(url, "drain", "h1", "--wait", "--timeout", "10") == 0
    thread.join(5)
    out = capsys.readouterr().out
    assert "2 task(s) left" in out and out.rstrip().endswith("host h1 drained")


def test_drain_wait_times_out_naming_the_tasks_and_why(url: str, client: Client,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    client.put_host_config(HostConfig(name="h1"))
    task = _issue(client, "h1", 0)
    client.backend.put(client.keys.service_status("default", "web"), encode(ServiceStatus(
        cluster="default", service="web", task_version=1, state="unschedulable",
        message="0/1 hosts fit: host is draining")))
    started = time.monotonic()
    assert sked(url, "drain", "h1", "--wait", "--timeout", "0.3") == 1
    assert time.monotonic() - started < 30  # its 0.3 s, not the default 300 s
    err = _one_line_error(capsys)
    assert f'host "h1": 1 task(s) still on it after 0.3s: {task.id}' in err
    assert "unschedulable: 0/1 hosts fit: host is draining" in err


# -- scale --------------------------------------------------------------------------------
def test_scale_within_bounds(url: str, client: Client, manifest: Callable[..., str],
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert sked(url, "apply", "-f", manifest()) == 0
    assert sked(url, "scale", "web", "5") == 0
    assert "desired 2 → 5" in capsys.readouterr().out
    svc = client.service("web")
    assert svc is not None and (svc.desired, svc.min, svc.max) == (5, 1, 5)
    assert sked(url, "scale", "web", "1") == 0
    assert sked(url, "scale", "web", "1") == 0
    assert "already 1" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["web", "-1"], 'service "web": field desired: must be ≥ 0, got -1'),
    (["web", "0"], 'service "web": field desired: 0 is below the service\'s min (1)'),
    (["web", "6"], 'service "web": field desired: 6 is above the service\'s max (5)'),
    (["nope", "3"], "service 'nope' not found"),
])
def test_scale_out_of_bounds_changes_nothing(url: str, client: Client,
                                             manifest: Callable[..., str],
                                             capsys: pytest.CaptureFixture[str],
                                             argv: list[str], message: str) -> None:
    assert sked(url, "apply", "-f", manifest()) == 0
    capsys.readouterr()
    before = client.backend.current_revision()
    assert sked(url, "scale", *argv) == 1
    assert message in _one_line_error(capsys)
    assert client.backend.current_revision() == before


def test_scale_never_overwrites_a_concurrent_change(client: Client) -> None:
    client.apply(parse_manifest(_manifest(), "m.yml"))
    real_txn = client.backend.txn
    raced: list[int] = []

    def racing_txn(compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        if not raced:  # another operator changes min between scale's read and write
            svc = client.service("web")
            assert svc is not None
            changed = msgspec.structs.replace(svc, min=2)
            raced.append(real_txn([], [Put(client.keys.service("web"), encode(changed))])
                         .revision)
        return real_txn(compares, ops)

    client.backend.txn = racing_txn  # type: ignore[method-assign]
    result = client.scale("web", 4)
    assert raced and result.revision > raced[0]
    svc = client.service("web")
    assert svc is not None and (svc.desired, svc.min) == (4, 2)  # both changes kept

    client.backend.txn = lambda c, o: TxnResult(False, 0)  # type: ignore[method-assign,assignment]
    with pytest.raises(ConflictError, match=r'service "web": field desired: .* kept changing'):
        client.scale("web", 3)


# -- delete service -----------------------------------------------------------------------
def test_delete_service_removes_it_from_its_clusters(url: str, client: Client,
                                                     manifest: Callable[..., str]) -> None:
    assert sked(url, "apply", "-f", manifest()) == 0
    assert sked(url, "delete", "service", "web") == 0
    cluster = client.cluster("default")
    assert client.service("web") is None and cluster is not None and cluster.services == []


# -- rollout status / history -------------------------------------------------------------
def _history(client: Client, *rollouts: Rollout, cluster: str = "default") -> None:
    client.backend.put(client.keys.rollout(cluster, "web"), encode(
        RolloutHistory(cluster=cluster, service="web", rollouts=list(rollouts))))


OK_1_2 = Rollout(from_version=1, to_version=2, state="succeeded", started_at=1000.0,
                 finished_at=1090.0, desired=2, updated=2, old=0)
FAILED_2_3 = Rollout(from_version=2, to_version=3, state="failed", started_at=2000.0,
                     finished_at=2600.0, desired=2, updated=1, old=1,
                     message="deadline 10m0s passed: 1/2 updated", reverted_to=2)


def test_rollout_status_and_history(url: str, client: Client, manifest: Callable[..., str],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert sked(url, "apply", "-f", manifest()) == 0
    capsys.readouterr()
    assert sked(url, "rollout", "status", "web") == 0
    assert "service web in cluster default: no rollout recorded" in capsys.readouterr().out

    _history(client, OK_1_2)
    assert sked(url, "rollout", "status", "web") == 0
    out = capsys.readouterr().out
    assert "rollout v1 → v2 succeeded" in out and "duration:    1m30s" in out

    _history(client, OK_1_2, FAILED_2_3)
    assert sked(url, "rollout", "status", "web", "--cluster", "default") == 1
    out = capsys.readouterr().out
    assert "rollout v2 → v3 failed" in out
    assert "updated:     1/2 healthy on v3" in out and "old tasks:   1" in out
    assert "message:     deadline 10m0s passed: 1/2 updated" in out
    assert "reverted to: v2" in out and "duration:    10m\n" in out

    assert sked(url, "rollout", "status", "web", "-o", "json") == 1
    data = json.loads(capsys.readouterr().out)
    assert data["cluster"] == "default" and data["rollout"]["state"] == "failed"
    assert data["rollout"]["reverted_to"] == 2

    assert sked(url, "rollout", "history", "web") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["#", "from", "to", "state"]
    assert lines[2].split()[:4] == ["1", "v1", "v2", "succeeded"]
    assert lines[3].split()[:4] == ["2", "v2", "v3", "failed"]
    assert "v2" in lines[3] and lines[3].endswith("deadline 10m0s passed: 1/2 updated")

    assert sked(url, "rollout", "history", "web", "-o", "json") == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["to_version"] for r in data["rollouts"]] == [2, 3]


def test_rollout_needs_a_cluster_when_ambiguous(url: str, client: Client,
                                                manifest: Callable[..., str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert sked(url, "apply", "-f", manifest()) == 0
    client.backend.put(client.keys.cluster("eu"), encode(Cluster(name="eu", services=["web"])))
    capsys.readouterr()
    assert sked(url, "rollout", "status", "web") == 1
    assert 'service "web" is in clusters default, eu; pass --cluster' in _one_line_error(capsys)
    _history(client, OK_1_2, cluster="eu")
    assert sked(url, "rollout", "status", "web", "--cluster", "eu") == 0
    assert "v1 → v2 succeeded" in capsys.readouterr().out
    assert sked(url, "rollout", "history", "nope") == 1
    assert "service 'nope' not found" in _one_line_error(capsys)
    assert sked(url, "rollout", "status", "web", "--cluster", "us") == 1
    assert "cluster 'us' not found" in _one_line_error(capsys)


# -- apply: bad versions ------------------------------------------------------------------
def test_apply_refuses_a_missing_task_version(url: str, client: Client,
                                              manifest: Callable[..., str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = manifest(version=2, versions=(1,))
    assert sked(url, "apply", "-f", path, "--wait") == 1
    err = _one_line_error(capsys)
    assert f'{path}: services[0] "web": field task_version: task definition "web" version 2 ' \
           "does not exist" in err
    assert client.backend.list("").items == []


# -- apply --wait -------------------------------------------------------------------------
def _status(client: Client, version: int, state: str = "ok", message: str = "",
            healthy: int = 2) -> None:
    client.backend.put(client.keys.service_status("default", "web"), encode(ServiceStatus(
        cluster="default", service="web", task_version=version,
        state=state,  # type: ignore[arg-type]
        desired=2, placed=2, healthy=healthy, message=message,
        revision=client.backend.current_revision())))


def _when_applied(client: Client, version: int) -> None:
    _wait_for(lambda: (s := client.service("web")) is not None and s.task_version == version)


def test_apply_wait_succeeds_when_the_scheduler_reports_ok(
        url: str, client: Client, manifest: Callable[..., str],
        capsys: pytest.CaptureFixture[str]) -> None:
    assert sked(url, "apply", "-f", manifest()) == 0
    _status(client, 1)  # an ok status for the old version: not enough

    def scheduler() -> None:
        _when_applied(client, 2)
        _status(client, 2, "progressing", "1/2 healthy", healthy=1)
        time.sleep(0.1)
        _history(client, Rollout(from_version=1, to_version=2, state="succeeded",
                                 desired=2, updated=2))
        _status(client, 2)

    thread = _in_background(scheduler)
    # exit 0: it saw the ok status (running out of its time would exit 1)
    assert sked(url, "apply", "-f", manifest(2, (1, 2)), "--wait", "--timeout", "60") == 0
    thread.join(30)
    out = capsys.readouterr().out
    assert "services/web configured" in out
    assert "web v2: 1/2 healthy [#####-----]" in out
    assert "web v2: 2/2 healthy [##########] ok" in out
    assert "converged: 1 service(s)" in out


def test_apply_wait_fails_with_a_failed_rollout(url: str, client: Client,
                                                manifest: Callable[..., str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert sked(url, "apply", "-f", manifest()) == 0
    _status(client, 1)

    def scheduler() -> None:
        _when_applied(client, 2)
        _history(client, Rollout(from_version=1, to_version=2, state="failed", desired=2,
                                 updated=0, old=2, message="deadline passed: 0/2 healthy",
                                 reverted_to=1))

    thread = _in_background(scheduler)
    assert sked(url, "apply", "-f", manifest(2, (1, 2)), "--wait", "--timeout", "10") == 1
    thread.join(5)
    err = _one_line_error(capsys)
    assert ("service 'web' in cluster 'default': rollout v1 → v2 failed: deadline passed: "
            "0/2 healthy; reverted to v1") in err


def test_apply_wait_ignores_a_failed_rollout_from_before_the_apply(
        url: str, client: Client, manifest: Callable[..., str]) -> None:
    assert sked(url, "apply", "-f", manifest()) == 0
    _history(client, Rollout(from_version=1, to_version=2, state="failed", started_at=5.0,
                             reverted_to=1))  # an earlier attempt at v2, reverted

    def scheduler() -> None:
        _when_applied(client, 2)
        _status(client, 2)

    thread = _in_background(scheduler)
    assert sked(url, "apply", "-f", manifest(2, (1, 2)), "--wait", "--timeout", "10") == 0
    thread.join(5)


def test_apply_wait_fails_on_a_scheduler_error(url: str, client: Client,
                                               manifest: Callable[..., str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    def scheduler() -> None:
        _when_applied(client, 1)
        _status(client, 1, "error", "no scheduler named 'binpack' is installed")

    thread = _in_background(scheduler)
    assert sked(url, "apply", "-f", manifest(), "--wait", "--timeout", "10") == 1
    thread.join(5)
    assert "error: no scheduler named 'binpack' is installed" in _one_line_error(capsys)


def test_apply_wait_times_out_with_the_status_message(url: str, client: Client,
                                                      manifest: Callable[..., str],
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    def scheduler() -> None:
        _when_applied(client, 1)
        _status(client, 1, "unschedulable", "0/3 hosts fit: not enough memory on 3 hosts",
                healthy=0)

    thread = _in_background(scheduler)
    started = time.monotonic()
    assert sked(url, "apply", "-f", manifest(), "--wait", "--timeout", "0.5") == 1
    assert time.monotonic() - started < 30  # its 0.5 s, not the default 300 s
    thread.join(5)
    err = _one_line_error(capsys)
    assert "timed out after 0.5s: service 'web' in cluster 'default' v1: unschedulable: " \
           "0/3 hosts fit: not enough memory on 3 hosts" in err
    out = capsys.readouterr().out
    assert "Traceback" not in out


def test_wait_accepts_an_unchanged_ok_status_the_tasks_confirm(client: Client) -> None:
    """A change the scheduler's status does not show (here: ``min``) leaves the old
    status in place; after ``settle`` the issued tasks and their health confirm it."""
    client.apply(parse_manifest(_manifest(), "m.yml"))
    changed = _manifest().replace("min: 1", "min: 2")
    client.backend.put(client.keys.agent("h1"), encode(Host(name="h1")))
    for i in range(2):
        t = _issue(client, "h1", i)
        client.backend.put(client.keys.task_health(t.id), encode(
            TaskHealth(task_id=t.id, host="h1", state="healthy", healthy=True)))
    client.backend.put(client.keys.service_status("default", "web"), encode(ServiceStatus(
        cluster="default", service="web", task_version=1, state="ok", desired=2, placed=2,
        healthy=2, revision=client.backend.current_revision())))
    svc = parse_manifest(changed, "m.yml").manifest.services
    conv = client.convergence(svc, settle=0.2)
    assert client.apply(parse_manifest(changed, "m.yml")).configured == ("services/web",)
    conv.applied()
    assert [p.state for p in conv.check()] == ["waiting"]
    progress = client.wait_converged(conv, timeout=5)
    assert [p.state for p in progress] == ["converged"]
    assert "the tasks confirm it" in progress[0].message

    client.backend.delete(client.keys.task_health("default-web-1-0"))
    assert [p.state for p in conv.check()] == ["waiting"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_one_rewritten_line(client: Client) -> None:
    client.apply(parse_manifest(_manifest(), "m.yml"))
    services = parse_manifest(_manifest(2, (1, 2)), "m.yml").manifest.services
    conv = client.convergence(services)
    client.apply(parse_manifest(_manifest(2, (1, 2)), "m.yml"))
    conv.applied()
    _status(client, 2, "progressing", "1/2 healthy", healthy=1)

    def scheduler() -> None:
        time.sleep(0.05)
        _status(client, 2)

    thread = _in_background(scheduler)
    out = _Terminal()
    assert ops.wait_for_apply(client, conv, timeout=5, out=out) == 0
    thread.join(5)
    text = out.getvalue()
    assert "\rweb v2: 1/2 healthy [#####-----]\x1b[K" in text
    assert "\rweb v2: 2/2 healthy [##########] ok\x1b[K\nconverged: 1 service(s)" in text
    assert text.count("\n") == 2  # the progress line, then the summary


def test_an_error_from_before_the_apply_fails_only_if_it_stays(client: Client) -> None:
    client.apply(parse_manifest(_manifest(), "m.yml"))
    _status(client, 1, "error", "the scheduler failed: boom")
    changed = _manifest().replace("min: 1", "min: 2")
    services = parse_manifest(changed, "m.yml").manifest.services

    conv = client.convergence(services, settle=0.2)  # the scheduler fixes it
    client.apply(parse_manifest(changed, "m.yml"))
    conv.applied()
    assert [p.state for p in conv.check()] == ["waiting"]
    _status(client, 1)
    assert [p.state for p in client.wait_converged(conv, timeout=5)] == ["converged"]

    _status(client, 1, "error", "the scheduler failed: boom")
    conv = client.convergence(services, settle=0.2)  # nothing rewrites it: it stands
    client.apply(parse_manifest(changed.replace("min: 2", "min: 0"), "m.yml"))
    conv.applied()
    assert [p.state for p in conv.check()] == ["waiting"]
    progress = client.wait_converged(conv, timeout=5)
    assert [(p.state, p.message) for p in progress] == [
        ("failed", "error: the scheduler failed: boom")]
