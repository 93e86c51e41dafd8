"""A blox client's deployment end to end: real ``skedlib-agent`` processes (one per host)
and a real ``skedlib-scheduler``, driven only through ``/blox/v1``. The environment is
created with ECS ARNs, deployed with its token, and ends with a healthy task on every
host; deleting it stops them."""

from __future__ import annotations

from typing import Any

import pytest

from skedlib.api import blox
from tests.api.conftest import TOKEN, Http, Loop, daemon_manifest
from tests.scheduler.conftest import wait_for

pytestmark = pytest.mark.slow


def test_a_blox_deployment_runs_a_healthy_task_on_each_host(sqlite_loop: Loop,
                                                            serve: Any) -> None:
    loop = sqlite_loop
    loop.apply(daemon_manifest())
    loop.start_agent(1, memory=256)
    loop.start_agent(2, memory=256)
    loop.start_scheduler()
    server, _ = serve(loop)
    http = Http(server.url.removesuffix("/v1") + blox.BASE_PATH, TOKEN)

    env = http.ok("POST", "/environments", {
        "name": "monitor",
        "taskDefinition": "arn:aws:ecs:us-west-2:123456789012:task-definition/web:2",
        "instanceGroup": {"cluster": "arn:aws:ecs:us-west-2:123456789012:cluster/default"}})
    assert (env["taskDefinition"], env["instanceGroup"]) == ("web:2", {"cluster": "default"})
    dep = http.ok("POST", "/environments/monitor/deployments",
                  deploymentToken=env["deploymentToken"])
    assert dep["status"] in ("pending", "running"), dep

    def completed() -> Any:
        d = http.ok("GET", f"/environments/monitor/deployments/{dep['id']}")
        return d if d["status"] == "completed" else None
    try:
        done = wait_for(completed, 30, "the blox deployment to complete", every=0.2)
    except AssertionError:
        raise AssertionError(f"{loop.sked('tasks')[1]}\n{loop.log_text()}") from None
    assert done["failedInstances"] == [] and done["taskDefinition"] == "web:2"
    healthy = {t.host: t.task_definition.version for t in loop.healthy("monitor")}
    assert healthy == {loop.host(1): 2, loop.host(2): 2}
    assert http.ok("GET", "/environments/monitor")["health"] == "healthy"
    listed = http.ok("GET", "/environments/monitor/deployments")
    assert [d["id"] for d in listed["items"]] == [dep["id"]]

    assert http.delete("/environments/monitor") == (200, None)
    wait_for(lambda: not loop.tasks("monitor") and not loop.processes(), 15,
             "the environment's tasks to stop")
    assert http.get("/environments/monitor")[0] == 404

