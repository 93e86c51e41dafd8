"""Strict manifests and the bounds of desired state (at apply, at scale, in planning)."""

from __future__ import annotations

from pathlib import Path

import pytest

from skedlib.cli.main import main
from skedlib.client import Client
from skedlib.codecs import encode, parse_manifest
from skedlib.errors import ValidationError
from skedlib.keys import Keyspace, TaskKey
from skedlib.models import Cluster, Host, Resources, Service, TaskDefinition
from skedlib.plugins import open_backend
from skedlib.runtime import Store
from skedlib.scheduling import Snapshot
from skedlib.scheduling.scheduler import MAX_REPORTED
from skedlib.validation import Limits
from tests.scheduling.test_commit import Binpack

TD = """
  - name: web
    version: {version}
    memory: {memory}
    cpu_units: {cpu}
    containers:
      - name: main
        type: process
        disk_use: {disk}
        executor: {{argv: [sleep, "60"]}}
"""


def _manifest(desired: int = 1, max_: int = 0, version: int = 1, memory: int = 10,
              cpu: int = 10, disk: int = 0) -> str:
    return f"""
clusters:
  - name: default
    services: [web]
services:
  - name: web
    task_name: web
    task_version: {version}
    desired: {desired}
    max: {max_}
task_definitions:{TD.format(version=version, memory=memory, cpu=cpu, disk=disk)}"""


@pytest.fixture
def client() -> Client:
    return Client(Store(open_backend("memory://")))


# -- strict manifests ----------------------------------------------------------------------
def test_duplicate_keys_are_refused_with_their_line() -> None:
    text = "services:\n  - name: web\n    desired: 1\n    task_name: web\n    desired: 3\n"
    with pytest.raises(ValidationError) as err:
        parse_manifest(text, "m.yml")
    assert str(err.value) == ("m.yml: line 5 column 5: malformed YAML: duplicate key "
                              "'desired' (first on line 3)")
    with pytest.raises(ValidationError, match=r"line 3 .*duplicate key 'services' \(first "
                                              r"on line 1\)"):
        parse_manifest("services: []\nclusters: []\nservices: []\n", "m.yml")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n...\n", "\n\n"])
def test_an_empty_manifest_is_an_error(text: str) -> None:
    with pytest.raises(ValidationError, match=r"^m.yml: empty manifest"):
        parse_manifest(text, "m.yml")


@pytest.mark.parametrize("text", ["foo: 1\n", "- a\n- b\n", "just text\n"])
def test_an_unknown_shape_is_an_error(text: str) -> None:
    with pytest.raises(ValidationError, match=r"^m.yml: (not a manifest|expected a mapping)"):
        parse_manifest(text, "m.yml")


def test_cli_refuses_an_empty_manifest_in_one_line(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.yml"
    empty.write_text("# nothing here\n")
    url = f"sqlite://{tmp_path}/x.db"
    for argv in (["apply", "-f", str(empty)], ["up", "--once", "-f", str(empty)]):
        assert main(["--backend", url, *argv]) == 1
        assert capsys.readouterr().err == f"sked: error: {empty}: empty manifest (expected a " \
            "mapping with clusters, services, task_definitions)\n"


def test_manifest_size_and_object_count_are_bounded(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"^m.yml: manifest larger than 100 bytes"):
        parse_manifest(_manifest(), "m.yml", max_bytes=100)
    with pytest.raises(ValidationError, match=r"^m.yml: 3 objects, more than 2 \(the manifest "
                                              "object limit\\)"):
        parse_manifest(_manifest(), "m.yml", max_objects=2)
    big = tmp_path / "big.yml"
    with big.open("wb") as f:  # sparse: refused by its size, never read
        f.truncate(16 * 1024 * 1024 + 1)
    url = f"sqlite://{tmp_path}/x.db"
    assert main(["--backend", url, "apply", "-f", str(big)]) == 1


# -- bounds --------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "field"), [
    ({"desired": 100_001}, 'services[0] "web": field desired: 100001 is above the limit 100000'),
    ({"desired": 1, "max_": 10**12}, 'services[0] "web": field max: 1000000000000 is above'),
    ({"version": 2**63 - 1},
     'task_definitions[0] "web": field version: 9223372036854775807 is above the limit'),
    ({"memory": 2**40}, 'task_definitions[0] "web": field memory: 1099511627776 is above'),
    ({"cpu": 2**40}, 'task_definitions[0] "web": field cpu_units: 1099511627776 is above'),
    ({"disk": 2**62}, 'task_definitions[0] "web": field containers[0].disk_use: '),
])
def test_bounds_are_enforced_at_apply(client: Client, kwargs: dict[str, int],
                                      field: str) -> None:
    with pytest.raises(ValidationError) as err:
        client.apply(parse_manifest(_manifest(**kwargs), "m.yml"))
    assert str(err.value).startswith("m.yml: ") and field in str(err.value), err.value
    assert "\n" not in str(err.value)
    assert client.services() == []  # nothing written


def test_bounds_are_store_wide_and_enforced_by_scale(client: Client) -> None:
    client.apply(parse_manifest(_manifest(desired=2), "m.yml"))
    with pytest.raises(ValidationError, match=r'^service "web": field desired: 100001 is '
                                              "above the limit 100000$"):
        client.scale("web", 100_001)
    client.backend.put(client.limits_key, encode(Limits(desired=5)))
    assert client.limits() == Limits(desired=5)
    with pytest.raises(ValidationError, match="field desired: 6 is above the limit 5"):
        client.scale("web", 6)
    with pytest.raises(ValidationError, match="field desired: 6 is above the limit 5"):
        client.apply(parse_manifest(_manifest(desired=6), "m.yml"))
    assert client.scale("web", 5).service.desired == 5


def test_planning_a_huge_service_materialises_only_what_it_places() -> None:
    td = TaskDefinition(name="web", version=1, memory=100)
    cluster = Cluster(name="c", services=["web"])
    service = Service(name="web", task_name="web", task_version=1, desired=10**12)
    hosts = [Host(name=f"h{i}", total=Resources(memory=1000, cpu_units=1000))
             for i in range(2)]
    snap = Snapshot(1, clusters=[cluster], services=[service], task_definitions=[td],
                    hosts=hosts)
    result = Binpack().plan(snap, cluster, service)
    assert len(result.plan.place) == 20  # what fits
    assert len(result.unschedulable) == MAX_REPORTED  # then it stops trying
    assert result.retry_after is not None


def test_planning_never_places_onto_a_key_holding_an_invalid_record() -> None:
    td = TaskDefinition(name="web", version=1, memory=100)
    cluster = Cluster(name="c", services=["web"])
    service = Service(name="web", task_name="web", task_version=1, desired=3)
    snap = Snapshot(1, clusters=[cluster], services=[service], task_definitions=[td],
                    hosts=[Host(name="h", total=Resources(memory=1000, cpu_units=1000))])
    snap.put_invalid(Keyspace().task("c-web-1-1"), TaskKey("c-web-1-1"), "bad")
    result = Binpack().plan(snap, cluster, service)
    assert sorted(t.id for t in result.plan.place) == ["c-web-1-0", "c-web-1-2"]
    assert "invalid record" in result.unschedulable["c-web-1-1"]
    assert snap.invalid_count("c", "web") == 1
    # the key cleared: planned again like any missing instance
    snap.put_invalid(Keyspace().task("c-web-1-1"), TaskKey("c-web-1-1"), None)
    placed = Binpack().plan(snap, cluster, service).plan.place
    assert "c-web-1-1" in {t.id for t in placed}
