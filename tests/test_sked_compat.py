"""The original Sked / consul-scheduler shapes: its example manifests apply unmodified,
its JSON (Go's encoding) decodes, its field names and meanings hold
(docs/coming-from-sked.md). The end-to-end runs are in tests/scheduler/test_sked_compat.py.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skedlib.client import Client
from skedlib.codecs import decode, encode, load_manifest, parse_manifest
from skedlib.durations import HOUR, MINUTE, SECOND
from skedlib.errors import ValidationError
from skedlib.models import (
    DEFAULT_SCHEDULER,
    BashExecutor,
    Host,
    Resources,
    Service,
    Task,
    TaskDefinition,
    scheduler_name,
)
from skedlib.scheduler.daemon import SchedulerDaemon

SKED = Path(__file__).parent / "data" / "sked"
EXAMPLES = sorted(SKED.glob("*.yml"))


def _hosts(c: Client, n: int, *, memory: int = 1 << 20, cpu: int = 1 << 20) -> None:
    for i in range(n):
        c.backend.put(c.keys.agent(f"h{i}"), encode(Host(
            name=f"h{i}", total=Resources(memory=memory, cpu_units=cpu))))


# -- manifests -------------------------------------------------------------------------------
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_original_example_manifests_apply_unmodified(path: Path) -> None:
    """``tasks:`` is read as the task definitions; the docker ones validate too (the
    docker plugin declares its blob); a field Sked ignored is a warning, not an error."""
    doc = load_manifest(path)
    assert doc.manifest.task_definitions, doc
    assert not any("'tasks'" in w for w in doc.warnings), doc.warnings
    with Client.open(f"memory://{uuid.uuid4().hex}") as c:
        result = c.apply(doc)
        assert result is not None
        for s in doc.manifest.services:
            stored = c.service(s.name)
            assert stored.task_version == s.task_version
            td = c.task_definition(s.task_name, s.task_version)
            assert td.containers


def test_complex_example_warns_about_the_cluster_scheduler_field_only() -> None:
    doc = load_manifest(SKED / "complex.yml")
    assert [w for w in doc.warnings if "unknown" in w] == [
        f"{SKED / 'complex.yml'}: clusters[0] \"default\": field scheduler: unknown field, "
        "ignored"]


def test_bash_start_and_stop_lists_run_in_order_stopping_at_a_failure() -> None:
    blob = msgspec.convert({"start": ["echo a", "echo b"], "stop": ["echo c"]}, BashExecutor)
    assert blob.start_command == "set -e\necho a\necho b"
    assert blob.stop_command == "echo c"
    assert msgspec.convert({"start": "x"}, BashExecutor).start_command == "x"


def test_tasks_and_task_definitions_in_one_file_is_a_one_line_error() -> None:
    text = (SKED / "hello-world-bash.yml").read_text() + \
        "task_definitions:\n  - {name: other, version: 1, containers: []}\n"
    with pytest.raises(ValidationError) as err:
        parse_manifest(text, "both.yml")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("both.yml: both 'task_definitions' and 'tasks'"), message
    # in separate documents of one file, too
    with pytest.raises(ValidationError, match="both 'task_definitions' and 'tasks'"):
        parse_manifest("tasks: []\n---\ntask_definitions: []\n", "docs.yml")


@pytest.mark.parametrize(("text", "ns"), [
    ("1m0s", MINUTE), ("30s", 30 * SECOND), ("1h2m3.5s", HOUR + 2 * MINUTE + 3.5 * SECOND),
    ("250ms", 250_000_000), ("1.5h", 90 * MINUTE), ("60000000000", MINUTE)])
def test_go_duration_strings_in_manifests_and_stored_json(text: str, ns: float) -> None:
    manifest = parse_manifest(f"""
tasks:
  - name: t
    version: 1
    grace_period: "{text}"
    containers: [{{name: c, type: bash, executor: {{start: "sleep 1"}}}}]
services:
  - name: s
    task_name: t
    task_version: 1
    update: {{min_healthy_time: "{text}", deadline: "{text}"}}
""", "d.yml").manifest
    assert manifest.task_definitions[0].grace_period == int(ns)
    assert manifest.services[0].update.min_healthy_time == int(ns)
    stored = {"name": "t", "version": 1, "grace_period": text, "containers": None,
              "tags": None}
    assert decode(json.dumps(stored), TaskDefinition).grace_period == int(ns)


# -- scheduler names ---------------------------------------------------------------------------
def test_default_and_empty_scheduler_names_mean_binpack() -> None:
    assert scheduler_name("default") == scheduler_name("") == DEFAULT_SCHEDULER == "binpack"
    assert scheduler_name("spread") == "spread"
    service = decode((SKED / "sked-service.json").read_bytes(), Service)
    assert service.scheduler == "default"
    with Client.open(f"memory://{uuid.uuid4().hex}") as c:
        _hosts(c, 2)
        c.apply(parse_manifest(f"""
clusters: [{(SKED / 'sked-cluster.json').read_text()}]
services: [{(SKED / 'sked-service.json').read_text()}, {{name: empty, task_name: helloworld,
           task_version: 2, scheduler: "", desired: 1}}]
tasks:
  - name: helloworld
    version: 2
    provide_port: true
    containers: [{{name: c, type: bash, executor: {{start: "sleep 60"}}}}]
""", "seed.yml"))
        daemon = SchedulerDaemon(c.store)
        out = daemon.run_once(("default", "helloworld"))
        assert out.status is not None and out.status.state != "error", out
        assert out.status.placed == 4 and out.status.scheduler == "default"


def test_external_scheduler_leaves_tasks_alone_and_says_so() -> None:
    with Client.open(f"memory://{uuid.uuid4().hex}") as c:
        _hosts(c, 1)
        c.apply(parse_manifest("""
clusters: [{name: default, services: [ext, manual]}]
services:
  - {name: ext, task_name: t, task_version: 1, desired: 2, scheduler: external}
  - {name: manual, task_name: t, task_version: 1, desired: 1, scheduler: manual}
tasks:
  - {name: t, version: 1, containers: [{name: c, type: bash, executor: {start: "sleep 1"}}]}
""", "ext.yml"))
        daemon = SchedulerDaemon(c.store)
        out = daemon.run_once(("default", "ext"))
        assert out.placed == [] and out.status is not None
        assert out.status.state == "progressing"
        assert out.status.message == "placed externally: 0/2 healthy"
        assert not c.tasks()
        # a genuinely unknown scheduler name is still an error
        manual = daemon.run_once(("default", "manual"))
        assert manual.status is not None and manual.status.state == "error"
        assert "no scheduler named 'manual' is installed" in manual.status.message


# -- bash reserved ports -----------------------------------------------------------------------
def test_bash_ports_keep_two_tasks_off_one_host() -> None:
    """Two tasks whose bash blobs reserve the same port never share a host: with one
    host, one of them is unschedulable; the plan validation refuses a plan that tries."""
    with Client.open(f"memory://{uuid.uuid4().hex}") as c:
        _hosts(c, 2)
        c.apply(parse_manifest("""
clusters: [{name: default, services: [a]}]
services: [{name: a, task_name: a, task_version: 1, desired: 3}]
tasks:
  - name: a
    version: 1
    containers:
      - {name: c, type: bash, executor: {start: "sleep 1", ports: [8125]}}
""", "ports.yml"))
        out = SchedulerDaemon(c.store).run_once(("default", "a"))
        assert out.status is not None
        assert out.status.placed == 2 and out.status.unschedulable == 1, out.status
        placed = [t for t in c.tasks() if t.host]
        assert sorted(t.host for t in placed) == ["h0", "h1"]
        assert all(t.reserved_ports() == [8125] for t in placed)


def test_bash_ports_must_be_port_numbers() -> None:
    with Client.open(f"memory://{uuid.uuid4().hex}") as c, \
            pytest.raises(ValidationError, match=r"containers\[0\]\.executor.*ports"):
        c.apply(parse_manifest("""
tasks: [{name: a, version: 1, containers: [{name: c, type: bash,
         executor: {start: "x", ports: [70000]}}]}]
""", "bad.yml"))


# -- records in the original's shape decode ------------------------------------------------------
def _go_duration(ns: int) -> str:
    """``time.Duration.String()`` of Go (whole seconds and below, as Go writes them)."""
    if ns == 0:
        return "0s"
    h, rest = divmod(ns, HOUR)
    m, rest = divmod(rest, MINUTE)
    s, frac = divmod(rest, SECOND)
    text = f"{s}.{frac:09d}".rstrip("0").rstrip(".") + "s"
    if h:
        return f"{h}h{m}m{text}"
    return f"{m}m{text}" if m else text


names = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
maybe_list = st.one_of(st.none(), st.lists(names, max_size=3))
durations = st.integers(0, 100 * HOUR)


@st.composite
def go_tasks(draw: Any) -> tuple[dict[str, Any], int]:
    """A task as Sked's Go code wrote it: nil slices as null, the cluster as its name (or
    the older whole cluster), the grace period as Go's integer or its String()."""
    grace = draw(durations)
    bash = {"ports": draw(st.one_of(st.none(), st.lists(st.integers(1, 65535), max_size=2))),
            "env": draw(maybe_list), "start": "sleep 1", "stop": "", "artifact": "",
            "download_dir": ""}
    container = {"name": draw(names), "type": "bash", "executor": bash,
                 "setup": draw(maybe_list), "teardown": draw(maybe_list),
                 "checks": draw(st.one_of(st.none(), st.just([
                     {"id": "", "name": "", "http": "", "tcp": "", "script": "",
                      "interval": _go_duration(draw(durations)), "timeout": "", "ttl": "",
                      "docker": "true"}]))),
                 "memory": 0, "cpu_units": 0, "disk_use": 0, "task_id": ""}
    cluster = draw(st.one_of(names, st.builds(
        lambda n, s: {"name": n, "datacenter": "", "services": s, "hosts": None},
        names, maybe_list)))
    task = {"cluster": cluster,
            "task_definition": {"name": draw(names), "version": draw(st.integers(0, 99)),
                                "provide_port": draw(st.booleans()), "port": 0,
                                "tags": draw(maybe_list), "containers": [container],
                                "grace_period": draw(st.sampled_from([grace,
                                                                      _go_duration(grace)])),
                                "max_attempts": 10},
            "service": draw(names), "instance": draw(st.integers(0, 99)),
            "port": draw(st.integers(0, 65535)), "host": draw(names), "scheduled": True,
            "rejected": False, "reject_reason": ""}
    return task, grace


@settings(deadline=None, max_examples=150)
@given(go_tasks())
def test_tasks_in_the_original_shape_decode(case: tuple[dict[str, Any], int]) -> None:
    raw, grace = case
    task = decode(json.dumps(raw), Task)
    cluster = raw["cluster"]
    assert task.cluster.name == (cluster if isinstance(cluster, str) else cluster["name"])
    assert task.task_definition.grace_period == grace
    container = task.task_definition.containers[0]
    assert container.teardown == raw["task_definition"]["containers"][0]["teardown"]
    assert container.setup == raw["task_definition"]["containers"][0]["setup"]
    assert task.task_definition.tags == (raw["task_definition"]["tags"] or [])
    ports = raw["task_definition"]["containers"][0]["executor"]["ports"] or []
    assert task.task_definition.executor_ports() == sorted(set(ports))
    assert task.id == (f"{task.cluster.name}-{raw['service']}-"
                       f"{raw['task_definition']['version']}-{raw['instance']}")
    # and what skedlib writes back decodes to the same task
    assert decode(encode(task), Task) == task


resources = st.one_of(st.none(), st.builds(
    lambda m, c, d, p: {"memory": m, "cpu_units": c, "disk_space": d, "mem_use_percent": p},
    st.integers(0, 1 << 20), st.integers(0, 1 << 16), st.integers(0, 1 << 30),
    st.floats(0, 100)))


@settings(deadline=None, max_examples=150)
@given(st.builds(
    lambda name, draining, ports, tags, base, observed, calculated, check: {
        "name": name, "draining": draining, "reserved_ports": ports, "tags": tags,
        "base_resources": base, "observed_resources": observed,
        "calculated_resources": calculated, "health_check": check},
    names, st.booleans(), st.one_of(st.none(), st.lists(st.integers(1, 65535), max_size=4)),
    st.one_of(st.none(), st.dictionaries(names, names, max_size=3)), resources, resources,
    resources, st.sampled_from(["", "http://127.0.0.1:8231/health"])))
def test_hosts_in_the_original_shape_decode(raw: dict[str, Any]) -> None:
    host = decode(json.dumps(raw), Host)
    assert host.name == raw["name"] and host.draining == raw["draining"]
    assert host.ports == (raw["reserved_ports"] or [])
    assert host.attributes == (raw["tags"] or {})
    for field, ours in (("base_resources", host.total), ("observed_resources", host.observed)):
        theirs = raw[field] or {"memory": 0, "cpu_units": 0, "disk_space": 0}
        assert ours == Resources(memory=theirs["memory"], cpu_units=theirs["cpu_units"],
                                 disk=theirs["disk_space"])


def test_the_oldest_host_record_with_flat_resources_decodes() -> None:
    host = decode(b'{"name": "h", "memory": 512, "cpu_units": 2048, "disk_space": 9,'
                  b' "mem_use_percent": 3.5, "reserved_ports": [22], "tags": {"a": "b"}}',
                  Host)
    assert host.total == Resources(memory=512, cpu_units=2048, disk=9)
    assert (host.ports, host.attributes) == ([22], {"a": "b"})


def test_skedlib_names_win_over_the_original_ones() -> None:
    host = decode(b'{"name": "h", "ports": [1], "reserved_ports": [2], "tags": {"x": "y"}}',
                  Host)
    assert host.ports == [1] and host.attributes == {"x": "y"}


def test_a_record_that_is_wrong_in_both_shapes_keeps_the_strict_error() -> None:
    with pytest.raises(ValidationError, match="field service"):
        decode(b'{"cluster": "c", "task_definition": {"name": "t", "version": 1},'
               b' "service": 5, "instance": 0}', Task, where="k")
