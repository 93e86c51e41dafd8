"""blox's daemon-scheduler v1 API (``/blox/v1``) as a blox client uses it, against a SQLite
store: create an environment, list it (paging), read it, deploy it with its token, list
and read deployments, delete it; and what is refused, with blox's string error bodies."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from skedlib.api import ApiServer, blox
from skedlib.client import Client
from skedlib.codecs import parse_manifest
from skedlib.errors import NotFound, ValidationError
from tests.api.conftest import READ_TOKEN, TOKEN, Http, daemon_manifest

TD_ARN = "arn:aws:ecs:us-west-2:123456789012:task-definition/web:2"
CLUSTER_ARN = "arn:aws:ecs:us-west-2:123456789012:cluster/default"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[Client, Http, Http, str]]:
    """The API over a SQLite store holding cluster ``default`` and task definition
    ``web`` 1 and 2 (no agent: nothing runs): (client, admin, read-only, blox base URL)."""
    with Client.open(f"sqlite://{tmp_path / 'store.db'}", f"t{uuid.uuid4().hex[:6]}/") \
            as client:
        client.apply(parse_manifest(daemon_manifest(), "m.yml"))
        with ApiServer(client, "127.0.0.1", 0, token=TOKEN, read_token=READ_TOKEN,
                       track_every=60) as server:
            base = server.url.removesuffix("/v1") + blox.BASE_PATH
            yield client, Http(base, TOKEN), Http(base, READ_TOKEN), base


def _create(http: Http, name: str, task_definition: str = "web:1",
            cluster: str = "default") -> Any:
    status, env = http.post("/environments", {"name": name, "taskDefinition": task_definition,
                                              "instanceGroup": {"cluster": cluster}})
    assert status == 200, env
    return env


def test_a_blox_clients_flow(api: tuple[Client, Http, Http, str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    client, http, _, _ = api
    assert http.get("/ping") == (200, {"status": "ok"})

    env = _create(http, "web")
    assert set(env) == {"name", "deploymentToken", "instanceGroup", "taskDefinition",
                        "health"}
    assert (env["name"], env["instanceGroup"], env["taskDefinition"], env["health"]) == \
        ("web", {"cluster": "default"}, "web:1", "healthy")
    assert len(env["deploymentToken"]) >= 16
    # ECS ARNs name the family:revision and the cluster; a bare family is its latest
    assert _create(http, "by-arn", TD_ARN, CLUSTER_ARN)["taskDefinition"] == "web:2"
    assert _create(http, "latest", "web")["taskDefinition"] == "web:2"
    assert client.service("web") is None  # nothing runs before a deployment

    # listing, a page at a time
    monkeypatch.setattr(blox, "PAGE_SIZE", 2)
    status, first = http.get("/environments")
    assert status == 200 and [e["name"] for e in first["items"]] == ["by-arn", "latest"]
    status, last = http.get("/environments", nextToken=first["nextToken"])
    assert status == 200 and [e["name"] for e in last["items"]] == ["web"]
    assert "nextToken" not in last
    assert [e["name"] for e in http.ok("GET", "/environments", cluster=CLUSTER_ARN)["items"]
            ] == ["by-arn", "latest"]
    assert http.ok("GET", "/environments", cluster="other")["items"] == []

    assert http.ok("GET", "/environments/web") == env

    # a deployment with the token; the token is then spent
    status, dep = http.call("POST", "/environments/web/deployments",
                            deploymentToken=env["deploymentToken"])
    assert status == 200, dep
    assert dep == {"id": "00000001", "status": "running", "taskDefinition": "web:1",
                   "environmentName": "web", "failedInstances": []}
    service = client.service("web")
    assert service is not None and (service.task_name, service.task_version) == ("web", 1)
    status, err = http.call("POST", "/environments/web/deployments",
                            deploymentToken=env["deploymentToken"])
    assert status == 400 and "token" in err and isinstance(err, str), err
    token = http.ok("GET", "/environments/web")["deploymentToken"]
    assert token != env["deploymentToken"]
    second = http.ok("POST", "/environments/web/deployments", deploymentToken=token)
    assert second["id"] == "00000002"

    page = http.ok("GET", "/environments/web/deployments")
    assert [d["id"] for d in page["items"]] == ["00000002", "00000001"]
    # the first was superseded (failed): blox has no failed state, its deployments complete
    assert [d["status"] for d in page["items"]] == ["running", "completed"]
    assert "nextToken" not in page
    monkeypatch.setattr(blox, "PAGE_SIZE", 1)
    page = http.ok("GET", "/environments/web/deployments")
    assert [d["id"] for d in page["items"]] == ["00000002"]
    rest = http.ok("GET", "/environments/web/deployments", nextToken=page["nextToken"])
    assert [d["id"] for d in rest["items"]] == ["00000001"]
    assert http.ok("GET", "/environments/web/deployments/00000002")["status"] == "running"

    # delete: the service goes; deleting again still succeeds, as in blox's document
    assert http.delete("/environments/web") == (200, None)
    assert client.service("web") is None
    status, err = http.get("/environments/web")
    assert (status, err) == (404, 'environment "web" not found')
    assert http.delete("/environments/web") == (200, None)


def test_refusals_are_blox_string_bodies(api: tuple[Client, Http, Http, str]) -> None:
    client, http, reader, base = api
    env = _create(http, "web")
    bad = {"name": "x", "taskDefinition": "web:1", "instanceGroup": {"cluster": "default"}}
    cases: list[tuple[int, str, tuple[Any, ...]]] = [
        (404, 'field instanceGroup.cluster: cluster "nope" does not exist',
         ("POST", "/environments", {**bad, "instanceGroup": {"cluster": "nope"}})),
        (404, 'field taskDefinition: task definition "web" version 7 does not exist',
         ("POST", "/environments", {**bad, "taskDefinition": "web:7"})),
        (404, 'task definition "db" has no version',
         ("POST", "/environments", {**bad, "taskDefinition": "db"})),
        (400, "field taskDefinition: 'arn:aws:ecs:r:1:service/x' is not an ECS "
              "task-definition ARN",
         ("POST", "/environments", {**bad, "taskDefinition": "arn:aws:ecs:r:1:service/x"})),
        (400, "field taskDefinition: 'web:v2': expected NAME:VERSION",
         ("POST", "/environments", {**bad, "taskDefinition": "web:v2"})),
        (400, "field instanceGroup.cluster: required",
         ("POST", "/environments", {**bad, "instanceGroup": {}})),
        (400, "field instanceGroup.cluster: invalid cluster name 'my-cluster'",
         ("POST", "/environments", {**bad, "instanceGroup": {
             "cluster": "arn:aws:ecs:us-east-1:1:cluster/my-cluster"}})),
        (400, "field name: Expected `str` matching regex",
         ("POST", "/environments", {**bad, "name": "a" * 31})),
        (400, "field instanceGroup.zone: unknown field (expected cluster)",
         ("POST", "/environments", {**bad, "instanceGroup": {"cluster": "default",
                                                             "zone": "a"}})),
        (400, "field task_definition: unknown field (expected name, instanceGroup, "
              "taskDefinition)", ("POST", "/environments", {**bad, "task_definition": "x"})),
        (400, 'environment "web" already exists',
         ("POST", "/environments", {**bad, "name": "web"})),
        (400, "query parameter deploymentToken: required",
         ("POST", "/environments/web/deployments")),
        (400, "field token: not the environment's current deployment token",
         ("POST", "/environments/web/deployments?deploymentToken=stale")),
        (404, 'environment "nope" not found',
         ("POST", "/environments/nope/deployments?deploymentToken=x")),
        (404, 'environment "nope" not found', ("GET", "/environments/nope/deployments")),
        (404, 'deployment "00000009" of environment "web" not found',
         ("GET", "/environments/web/deployments/00000009")),
        (400, "query parameter nextToken: not a token from an earlier page",
         ("GET", "/environments?nextToken=%25%25")),
        (400, "query parameter limit: unknown", ("GET", "/environments?limit=3")),
        (400, "query parameter cluster: 'arn:aws:ecs:r:1:task/x' is not an ECS cluster ARN",
         ("GET", "/environments?cluster=arn:aws:ecs:r:1:task/x")),
        (404, "no such path '/blox/v1/clusters'", ("GET", "/clusters")),
        (405, "PUT is not allowed on /blox/v1/environments/web", ("PUT", "/environments/web",
                                                                  {})),
    ]
    for status, text, (method, path, *body) in cases:
        got, err = http.call(method, path, *body)
        assert got == status and isinstance(err, str), (method, path, body, got, err)
        assert text in err and "\n" not in err, (method, path, body, err)
    assert http.ok("GET", "/environments/web") == env  # nothing changed
    assert [e["name"] for e in http.ok("GET", "/environments")["items"]] == ["web"]
    assert client.service("web") is None

    # the same authentication as the rest of the API
    status, err = Http(base).get("/environments")
    assert status == 401 and "bearer token" in err
    assert Http(base).get("/ping")[0] == 200  # liveness is public, as /v1/ping
    assert reader.get("/environments/web")[0] == 200
    status, err = reader.call("POST", "/environments/web/deployments",
                              deploymentToken=env["deploymentToken"])
    assert status == 403 and "may only read" in err
    assert client.service("web") is None


def test_task_definitions_and_clusters_as_blox_names_them() -> None:
    def latest(name: str) -> int | None:
        return {"web": 4}.get(name)

    assert blox.task_definition("web:3", latest) == ("web", 3)
    assert blox.task_definition("web", latest) == ("web", 4)
    assert blox.task_definition(
        "arn:aws-cn:ecs:cn-north-1:123456789012:task-definition/web:12", latest) == ("web", 12)
    for wrong in ("web:", "web:-1", "web:\uff11", ":3", "arn:aws:ecs:r:1:task-definition/web",
                  "a/b:1", f"web:{2**53 + 1}", "web:" + "9" * 5000):
        with pytest.raises(ValidationError, match="field taskDefinition"):
            blox.task_definition(wrong, latest)
    with pytest.raises(NotFound):
        blox.task_definition("db", latest)
    assert blox.cluster_name("default", "f") == "default"
    assert blox.cluster_name("arn:aws:ecs:us-west-2:123456789012:cluster/prod", "f") == "prod"
    for wrong in ("arn:aws:ecs:r:1:cluster/", "a-b", "arn:aws:s3:::bucket", ""):
        with pytest.raises(ValidationError, match=r"^f: "):
            blox.cluster_name(wrong, "f")
