"""The environments API against a real store, real ``skedlib-agent`` processes (one per
host) and a real ``skedlib-scheduler``: create, deploy, hosts joining and leaving,
update rolled host by host, rollback, delete (tasks stop, or are kept), and bad input."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from skedlib.environments.keys import EnvironmentKeyspace
from skedlib.runtime import Store
from skedlib.scheduling import read_snapshot
from tests.api.conftest import Http, Loop, daemon_manifest
from tests.scheduler.conftest import wait_for

pytestmark = pytest.mark.slow


def _create(http: Http, name: str = "web", version: int = 1, **extra: Any) -> Any:
    status, env = http.post("/environments", {"name": name, "cluster": "default",
                                              "task_name": "web", "task_version": version,
                                              **extra})
    assert status == 201, env
    return env


def _deploy(http: Http, name: str = "web", rollback: bool = False) -> Any:
    token = http.ok("GET", f"/environments/{name}")["deployment_token"]
    status, dep = http.post(f"/environments/{name}/deployments",
                            {"token": token, "rollback": rollback})
    assert status == 201 and dep["status"] == "in_progress", dep
    return dep


def _wait_completed(loop: Loop, http: Http, dep: Any, timeout: float = 30) -> Any:
    path = f"/environments/{dep['environment']}/deployments/{dep['id']}"

    def done() -> Any:
        d = http.ok("GET", path)
        assert d["status"] != "failed", d
        return d if d["status"] == "completed" else None
    try:
        result = wait_for(done, timeout, f"deployment {dep['id']} to complete", every=0.2)
    except AssertionError:
        raise AssertionError(f"{http.ok('GET', path)}\n{loop.sked('tasks')[1]}\n"
                             f"{loop.log_text()}") from None
    return result


def _running(loop: Loop, service: str = "web") -> dict[str, int]:
    """host → version of the healthy tasks of ``service``."""
    return {t.host: t.task_definition.version for t in loop.healthy(service)}


def test_deploy_follow_hosts_update_rollback_delete(sqlite_loop: Loop, serve: Any) -> None:
    loop = sqlite_loop
    loop.apply(daemon_manifest())
    loop.start_agent(1, memory=256)
    leaving = loop.start_agent(2, memory=256)
    loop.start_scheduler()
    _, http = serve(loop)

    env = _create(http, max_parallel=1)
    assert env["health"] == "unknown" and env["current_deployment"] == ""
    first = _deploy(http)
    done = _wait_completed(loop, http, first)
    assert (done["hosts"], done["updated_hosts"]) == (2, 2)
    assert _running(loop) == {loop.host(1): 1, loop.host(2): 1}
    assert http.ok("GET", "/environments/web")["health"] == "healthy"

    # a retried request with the same token deploys nothing
    status, err = http.post("/environments/web/deployments", {"token": env["deployment_token"]})
    assert status == 409 and "token" in err["message"], err
    assert len(http.ok("GET", "/environments/web/deployments")["items"]) == 1

    # a host that joins gets its task (in about a second: the figure is printed, not
    # asserted, so a loaded machine does not fail it); a host that leaves loses it
    loop.start_agent(3, memory=256)
    joined = time.monotonic()
    wait_for(lambda: any(t.host == loop.host(3) for t in loop.tasks("web")), 20,
             "the joining host's task")
    print(f"\n[environments] task issued {time.monotonic() - joined:.2f}s after the host joined")
    loop.wait_healthy("web", 3)
    os.killpg(leaving.pid, signal.SIGKILL)  # the host is gone: its agent and its tasks
    leaving.wait(10)
    for p in loop.processes():
        if p.environ().get("SKED_HOST") == loop.host(2):
            os.killpg(os.getpgid(p.pid), signal.SIGKILL)
    wait_for(lambda: loop.backend.get(loop.keys.agent(loop.host(2))) is None, 10,
             "the killed host's lease to expire")
    wait_for(lambda: sorted(t.host for t in loop.tasks("web")) ==
             sorted([loop.host(1), loop.host(3)]), 20, "the gone host's task stopped")

    # an update changes nothing until it is deployed; then it is rolled host by host
    token = http.ok("GET", "/environments/web")["deployment_token"]
    updated = http.ok("PUT", "/environments/web", {"task_version": 2})
    assert updated["task_version"] == 2 and updated["deployment_token"] == token
    assert set(_running(loop).values()) == {1}
    second = _deploy(http)
    assert second["previous_version"] == 1
    samples, worst = 0, 0
    while http.ok("GET", f"/environments/web/deployments/{second['id']}")["status"] \
            == "in_progress":
        snap = read_snapshot(Store(loop.backend, loop.keys))  # one revision: tasks and health
        tasks = snap.service_tasks("default", "web")
        assert len({t.host for t in tasks}) == len(tasks), "two tasks on one host"
        down = [h for h in snap.hosts if not any(
            t.host == h and snap.is_healthy(t.id) for t in tasks)]
        worst = max(worst, len(down))
        assert len(down) <= 1, f"max_parallel 1, but hosts without a healthy task: {down}"
        samples += 1
        assert samples < 600, "the update did not complete"
        time.sleep(0.05)
    print(f"[environments] update sampled {samples} times; at most {worst} host(s) replaced "
          "at once")
    assert _wait_completed(loop, http, second)["updated_hosts"] == 2
    assert _running(loop) == {loop.host(1): 2, loop.host(3): 2}
    assert worst == 1

    # rollback: the previous completed deployment's task definition, host by host again
    back = _deploy(http, rollback=True)
    assert (back["rollback_to"], back["task_version"]) == (first["id"], 1)
    _wait_completed(loop, http, back)
    assert _running(loop) == {loop.host(1): 1, loop.host(3): 1}
    env = http.ok("GET", "/environments/web")
    assert (env["task_version"], env["current_deployment"]) == (1, back["id"])
    listed = http.ok("GET", "/environments/web/deployments")["items"]
    assert [d["id"] for d in listed] == [back["id"], second["id"], first["id"]]
    assert [d["status"] for d in listed] == ["completed"] * 3

    # delete stops the tasks
    pids = [p.pid for p in loop.processes()]
    assert pids
    deleted = http.ok("DELETE", "/environments/web")
    assert deleted["kept_tasks"] is False
    wait_for(lambda: not loop.tasks("web") and not loop.processes(), 15,
             "the environment's tasks to stop")
    assert loop.client.service("web") is None
    assert loop.client.cluster("default").services == []  # type: ignore[union-attr]
    assert http.get("/environments/web")[0] == 404
    assert http.get("/environments/web/deployments")[0] == 404


def test_bad_input_changes_nothing_and_delete_can_keep_tasks(sqlite_loop: Loop,
                                                            serve: Any) -> None:
    loop = sqlite_loop
    loop.apply(daemon_manifest(versions=(1,)))
    loop.start_agent(1, memory=256)
    loop.start_scheduler()
    _, http = serve(loop)
    env = _create(http)

    def stored() -> list[tuple[str, bytes]]:
        return [(kv.key, kv.value) for kv in loop.backend.list(loop.prefix + "config/").items
                + loop.backend.list(EnvironmentKeyspace(loop.keys).deployments).items]

    before = stored()
    cases: list[tuple[int, str, tuple[Any, ...]]] = [
        (409, "already exists", ("POST", "/environments", {
            "name": "web", "cluster": "default", "task_name": "web", "task_version": 1})),
        (400, 'field task_version: task definition "web" version 7 does not exist',
         ("POST", "/environments", {"name": "other", "cluster": "default",
                                    "task_name": "web", "task_version": 7})),
        (400, 'field cluster: cluster "nope" does not exist',
         ("POST", "/environments", {"name": "other", "cluster": "nope",
                                    "task_name": "web", "task_version": 1})),
        (400, "field max_parallel", ("POST", "/environments", {
            "name": "other", "cluster": "default", "task_name": "web", "task_version": 1,
            "max_parallel": 0})),
        (400, "field task_version: task definition", ("PUT", "/environments/web",
                                                       {"task_version": 9})),
        (400, "field colour: unknown field", ("PUT", "/environments/web", {"colour": "red"})),
        (404, 'environment "nope" not found', ("GET", "/environments/nope")),
        (404, 'environment "nope" not found', ("PUT", "/environments/nope",
                                                {"task_version": 1})),
        (404, 'environment "nope" not found', ("DELETE", "/environments/nope")),
        (404, 'environment "nope" not found', ("POST", "/environments/nope/deployments",
                                                {"token": "x"})),
        (404, 'deployment "00000009"', ("GET", "/environments/web/deployments/00000009")),
        (409, "field token", ("POST", "/environments/web/deployments", {"token": "stale"})),
        (409, "field rollback: there is no earlier completed deployment",
         ("POST", "/environments/web/deployments",
          {"token": env["deployment_token"], "rollback": True})),
        (400, "field tokn: unknown field", ("POST", "/environments/web/deployments",
                                             {"tokn": "x"})),
        (400, "missing required field `token`", ("POST", "/environments/web/deployments", {})),
        (400, "query parameter limit", ("GET", "/environments?limit=0")),
        (400, "query parameter next_token", ("GET", "/environments?next_token=%%%")),
        (400, "query parameter keep_tasks", ("DELETE", "/environments/web?keep_tasks=maybe")),
        (400, "invalid environment name", ("GET", "/environments/a..b")),
    ]
    for status, text, (method, path, *body) in cases:
        got, err = http.call(method, path, *body)
        assert (got, err["error"]) == (status, {400: "bad_request", 404: "not_found",
                                                409: "conflict"}[status]), (path, body, err)
        assert text in err["message"] and "\n" not in err["message"], (path, body, err)
    for raw in (b"{not json", b"", b"[1, 2]", b'{"name": 5}'):
        got, err = http.post("/environments", raw=raw)
        assert got == 400 and err["message"].startswith("request body: "), (raw, err)
    assert stored() == before, "a refused request changed the store"

    dep = _deploy(http)
    _wait_completed(loop, http, dep)
    # the token of the deployment just made is used up
    status, err = http.post("/environments/web/deployments", {"token": env["deployment_token"]})
    assert status == 409, err
    (task,) = loop.healthy("web")
    deleted = http.ok("DELETE", "/environments/web", keep_tasks="true")
    assert deleted["kept_tasks"] is True and "keep running" in deleted["message"]
    assert http.get("/environments/web")[0] == 404
    deployments = EnvironmentKeyspace(loop.keys).environment_deployments("web")
    assert loop.backend.list(deployments).items == []
    time.sleep(1.5)  # the scheduler had time to react: nothing is stopped
    assert [t.id for t in loop.healthy("web")] == [task.id]
    assert loop.processes(task.id)
    # the kept service is an ordinary daemon service now; a new environment of the same
    # name is refused rather than taking it over
    status, err = http.post("/environments", {"name": "web", "cluster": "default",
                                              "task_name": "web", "task_version": 1})
    assert status == 409 and 'a service named "web" already exists' in err["message"]


@pytest.mark.integration
def test_deploy_and_delete_on_etcd(etcd_loop: Loop, serve: Any) -> None:
    loop = etcd_loop
    loop.apply(daemon_manifest(versions=(1,)))
    loop.start_agent(1, memory=256)
    loop.start_agent(2, memory=256)
    loop.start_scheduler()
    _, http = serve(loop)
    _create(http)
    done = _wait_completed(loop, http, _deploy(http))
    assert (done["hosts"], done["updated_hosts"]) == (2, 2)
    assert _running(loop) == {loop.host(1): 1, loop.host(2): 1}
    http.ok("DELETE", "/environments/web")
    wait_for(lambda: not loop.tasks("web") and not loop.processes(), 15,
             "the environment's tasks to stop")
