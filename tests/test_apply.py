"""``apply``: validation against the store, all-or-nothing writes, immutable versions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from skedlib.client import Client
from skedlib.codecs import parse_manifest
from skedlib.errors import ConflictError, NotFound, ValidationError

TD = """
task_definitions:
  - name: web
    version: {version}
    containers:
      - name: c
        type: bash
        executor: {{start: "{start}"}}
        checks: [{{http: "http://127.0.0.1:$PROVIDED_PORT"}}]
"""
SVC = """
services:
  - {{name: web, task_name: web, task_version: {version}, desired: {desired}, min: {min}}}
clusters:
  - {{name: default, services: [web]}}
"""


@pytest.fixture(params=["memory", "sqlite"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Client]:
    url = "memory://" if request.param == "memory" else f"sqlite://{tmp_path}/s.db"
    with Client.open(url) as c:
        yield c


def _manifest(version: int = 1, start: str = "run", desired: int = 2, minimum: int = 1) -> str:
    return TD.format(version=version, start=start) + SVC.format(
        version=version, desired=desired, min=minimum)


def test_apply_writes_then_is_a_no_op(client: Client) -> None:
    first = client.apply(parse_manifest(_manifest(), "m.yml"))
    assert set(first.created) == {"task_definitions/web:1", "services/web", "clusters/default"}
    rev = client.backend.current_revision()
    again = client.apply(parse_manifest(_manifest(), "m.yml"))
    assert again.created == again.configured == ()
    assert len(again.unchanged) == 3
    assert client.backend.current_revision() == rev
    td = client.task_definition("web", 1)
    assert td is not None
    assert td.grace_period == 60 * 10**9 and td.max_attempts == 10  # defaults applied
    assert td.containers[0].checks[0].interval == "10s"
    svc = client.service("web")
    assert svc is not None and svc.max == 0  # 0: as many as desired, whatever it becomes


def test_changed_service_is_configured(client: Client) -> None:
    client.apply(parse_manifest(_manifest(), "m.yml"))
    res = client.apply(parse_manifest(_manifest(desired=3), "m.yml"))
    assert res.configured == ("services/web",)
    svc = client.service("web")
    assert svc is not None and svc.desired == 3


def test_task_definition_versions_are_immutable(client: Client) -> None:
    client.apply(parse_manifest(_manifest(), "m.yml"))
    rev = client.backend.current_revision()
    with pytest.raises(ValidationError, match='"web" version 1 already exists with different'):
        client.apply(parse_manifest(_manifest(start="other", desired=5), "m.yml"))
    assert client.backend.current_revision() == rev
    svc = client.service("web")
    assert svc is not None and svc.desired == 2  # the service change in the same file: not written


@pytest.mark.parametrize(("text", "message"), [
    (SVC.format(version=1, desired=2, min=1),
     'services[0] "web": field task_version: task definition "web" version 1 does not exist'),
    (_manifest(desired=1, minimum=3), "need 0 ≤ min ≤ desired ≤ max"),
    (TD.format(version=1, start="x") + "clusters: [{name: default, services: [nope]}]",
     'clusters[0] "default": field services[0]: service "nope" does not exist'),
    (TD.format(version=1, start="x").replace("name: web", "name: a/b", 1),
     "must not contain '/'"),
    (TD.format(version=1, start="x") + "clusters: [{name: prod-eu}]", "must not contain '-'"),
    (TD.format(version=1, start="x").replace("checks: [{http: \"http://127.0.0.1:$PROVIDED_PORT"
                                             "\"}]", "checks: [{tcp: a, http: b}]"),
     "a check needs exactly one of http, tcp, script, ttl"),
    (TD.format(version=1, start="x").replace('{start: "x"}', "{stop: 1}"),
     "field containers[0].executor: bash executor"),
])
def test_bad_input_is_one_line_and_writes_nothing(client: Client, text: str,
                                                  message: str) -> None:
    before = client.backend.list("").items
    with pytest.raises(ValidationError) as info:
        client.apply(parse_manifest(text, "m.yml"))
    assert "\n" not in str(info.value)
    assert message in str(info.value)
    assert client.backend.list("").items == before


def test_duplicate_cluster_message(client: Client) -> None:
    text = _manifest() + "  - {name: default, services: []}\n"
    with pytest.raises(ValidationError, match=r"clusters\[1\]: default appears twice"):
        client.apply(parse_manifest(text, "m.yml"))


def test_service_can_reference_a_stored_task_definition(client: Client) -> None:
    client.apply(parse_manifest(TD.format(version=4, start="x"), "a.yml"))
    res = client.apply(parse_manifest(SVC.format(version=4, desired=1, min=0), "b.yml"))
    assert "services/web" in res.created


def test_delete(client: Client) -> None:
    client.apply(parse_manifest(_manifest(), "m.yml"))
    with pytest.raises(ConflictError, match="used by service 'web'"):
        client.delete("task_definition", "web:1")
    client.delete("service", "web")
    assert client.service("web") is None
    cluster = client.cluster("default")
    assert cluster is not None and cluster.services == []
    client.delete("task_definition", "web")
    assert client.task_definitions() == []
    with pytest.raises(NotFound):
        client.delete("service", "web")


def test_large_manifest_on_a_limited_backend_is_chunked() -> None:
    tds = "task_definitions:\n" + "".join(
        f"  - {{name: t{i}, version: 1, containers: [{{name: c, type: bash, executor: "
        f"{{start: x}}}}]}}\n" for i in range(40))
    with Client.open("memory://?max_txn_ops=16") as c:
        res = c.apply(parse_manifest(tds, "big.yml"))
        assert len(res.created) == 40
        assert len(c.task_definitions()) == 40
