"""Key schema: every key builds and parses back; every bad name is refused."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skedlib.agent.logs import LogEndpointKeyspace
from skedlib.environments.keys import EnvironmentKeyspace
from skedlib.errors import InvalidName, ValidationError
from skedlib.events import EventKeyspace
from skedlib.jobs.keys import JobKeyspace
from skedlib.keys import (
    Key,
    Keyspace,
    KeyTable,
    KeyTemplate,
    Name,
    Natural,
    Segment,
    TaskIdSegment,
    validate_name,
)
from skedlib.models import TaskId

_name_chars = st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zs", "Zl", "Zp"),
                            blacklist_characters="/\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85")
names = st.text(_name_chars, min_size=1, max_size=40).filter(
    lambda s: ".." not in s and s != "." and not any(c.isspace() for c in s))
cluster_names = names.filter(lambda s: "-" not in s)
versions = st.integers(min_value=0, max_value=10**9)
task_ids = st.builds(lambda c, s, v, i: f"{c}-{s}-{v}-{i}", cluster_names, names, versions,
                     st.integers(min_value=0, max_value=10**5)).filter(lambda t: len(t) <= 128)
prefixes = st.sampled_from(["sked/", "", "team/a/"])


def segment_values(segment: Segment) -> st.SearchStrategy[Any]:
    """Valid values of one of skedlib.keys' own segment kinds."""
    match segment:
        case Name(allow_dash=False):
            return cluster_names
        case Name():
            return names
        case TaskIdSegment():
            return task_ids
        case Natural():
            return versions
    raise AssertionError(f"no strategy for {segment!r}: pass it in by_field")


def template_keys(table: type[KeyTable[Any]],
                  by_field: Mapping[str, st.SearchStrategy[Any]] = {}) -> st.SearchStrategy[Any]:
    """Parsed keys of every template of ``table``, so a new template is tested too;
    ``by_field`` gives the values of a table's own segment kinds, by field name."""
    return st.one_of([
        st.builds(template.struct, *[by_field[field] if field in by_field
                                     else segment_values(segment)
                                     for field, segment in template.segments.items()])
        for template in table.templates()])


@given(key=template_keys(Keyspace), prefix=prefixes)
def test_parse_build_round_trip(key: Key, prefix: str) -> None:
    ks = Keyspace(prefix)
    text = ks.build(key)
    assert text.startswith(prefix)
    assert ks.parse(text) == key


def test_builders_and_build_agree() -> None:
    ks = Keyspace("p/")
    assert ks.host_task("h1", "c-web-2-0") == "p/state/hosts/h1/c-web-2-0"
    assert ks.task_definition("web", 2) == "p/config/task_definitions/web/2"
    assert ks.lock(cluster="c", service="web") == "p/locks/c/web"
    assert ks.host_tasks("h1") == "p/state/hosts/h1/"
    assert ks.task_definition_versions("web") == "p/config/task_definitions/web/"
    assert (ks.clusters, ks.all_host_tasks, ks.health, ks.locks, ks.config) == (
        "p/config/clusters/", "p/state/hosts/", "p/state/health/", "p/locks/", "p/config/")
    for template in Keyspace.templates():
        assert getattr(Keyspace, template.name) is template


def test_sub_keyspaces_share_the_prefix_and_parse_only_their_own_keys() -> None:
    ks = Keyspace("team/a/")
    jobs, envs = JobKeyspace(ks), EnvironmentKeyspace(ks)
    assert jobs.prefix == envs.prefix == "team/a/"
    assert ks.parse(ks.cluster("c")).name == "c"
    for table, other in ((ks, jobs.job("j1")), (ks, envs.environment("e")),
                         (jobs, ks.cluster("c")), (envs, jobs.job_node("n1"))):
        with pytest.raises(ValidationError, match="is not in skedlib's"):
            table.parse(other)
    with pytest.raises(TypeError, match="not a key of Keyspace"):
        ks.build(jobs.parse(jobs.job("j1")))  # type: ignore[arg-type]


def test_docs_list_every_key() -> None:
    """docs/concepts.md's key table names the keys of every table, and no others."""
    text = (Path(__file__).parents[1] / "docs" / "concepts.md").read_text()
    text = text.split("\n## Key schema\n", 1)[1].split("\n## ", 1)[0]
    documented = {re.sub(r"<[^>]*>", "<>", key.replace("\\|", "|"))
                  for key in re.findall(r"^\| `([^`]+)` \|", text, re.M)}
    declared = {re.sub(r"\{[^}]*\}", "<>", t.pattern)
                for table in (Keyspace, JobKeyspace, EnvironmentKeyspace, EventKeyspace,
                              LogEndpointKeyspace)
                for t in table.templates()}
    assert documented == declared


def test_templates_refuse_a_pattern_that_is_not_their_struct() -> None:
    from skedlib.keys import AgentKey, LockKey
    with pytest.raises(TypeError, match="must be exactly"):
        KeyTemplate("locks/{service}/{cluster}", LockKey, cluster=Name("c"), service=Name("s"))
    with pytest.raises(TypeError, match="neither a literal"):
        KeyTemplate("state/agents/{host}", AgentKey)
    with pytest.raises(TypeError, match="start with a literal"):
        KeyTemplate("{host}", AgentKey, host=Name("host"))


bad_names = st.one_of(
    st.just(""), st.just("."), st.just(".."),
    st.builds(lambda a, b: f"{a}/{b}", names, names),
    st.builds(lambda a, b: f"{a}..{b}", st.text(max_size=3), st.text(max_size=3)),
    st.builds(lambda a, c, b: a + c + b, names,
              st.sampled_from([" ", "\t", "\n", "\x00", "\x1b", "\x7f", "\x85", "\x9b",
                               "\u00a0", "\u2028", "\u3000", "\ud800", "\udfff", "\u00ad",
                               "\u200b", "\u200e", "\u202e", "\u2066", "\ufeff"]),
              st.text(_name_chars, max_size=3)),
    st.text(min_size=129, max_size=200).map(lambda s: "x" * 129 + s),
)


@given(name=bad_names)
def test_invalid_names_are_refused_by_every_builder(name: str) -> None:
    ks = Keyspace()
    for build in (ks.cluster, ks.service, ks.host_config, ks.agent, ks.host_tasks,
                  lambda n: ks.task_definition(n, 1), lambda n: ks.lock("c", n),
                  lambda n: ks.service_status("c", n), ks.host_alloc,
                  lambda n: ks.task(f"c-{n}-1-0"),
                  lambda n: ks.host_task(n, "c-s-1-0"), lambda n: ks.host_task("h", f"c-{n}-1-0"),
                  lambda n: ks.task_health(f"c-{n}-1-0"), lambda n: ks.rollout(n, "s"),
                  lambda n: ks.rollout("c", n), lambda n: ks.task_definition_versions(n)):
        with pytest.raises(InvalidName):
            build(name)


def test_cluster_names_refuse_dashes() -> None:
    with pytest.raises(InvalidName, match="must not contain '-'"):
        Keyspace().cluster("prod-eu")


@pytest.mark.parametrize("key", [
    "sked/config/clusters/a/b", "sked/state/tasks/not-an-id", "other/config/clusters/a",
    "sked/config/task_definitions/web/01", "sked/config/task_definitions/web/x",
    "sked/config/task_definitions/web/²", "sked/config/task_definitions/web/\u0661",
    "sked/state/tasks/c-web-01-0", "sked/state/health/c-web-1-٣", "sked/config/clusters/a\x9b",
    "sked/nothing", "sked/state/hosts/h1",
])
def test_parse_refuses_foreign_keys(key: str) -> None:
    with pytest.raises(ValidationError):
        Keyspace().parse(key)


@given(cluster=cluster_names, service=names, version=versions,
       instance=st.integers(min_value=0, max_value=10**5))
def test_task_id_has_one_spelling(cluster: str, service: str, version: int,
                                  instance: int) -> None:
    tid = TaskId(cluster, service, version, instance)
    assert TaskId.parse(str(tid)) == tid


def test_validate_name_messages_say_why() -> None:
    with pytest.raises(InvalidName, match="must not contain '/'"):
        validate_name("a/b", "service name")


def _valid(name: str, what: str, allow_dash: bool = True) -> bool:
    try:
        validate_name(name, what, allow_dash=allow_dash)
    except InvalidName:
        return False
    return True


@given(cluster=st.one_of(cluster_names, st.text(max_size=8)),
       service=st.one_of(names, st.text(max_size=8), st.text(min_size=100, max_size=140)),
       version=versions, instance=st.integers(min_value=0, max_value=10**5))
def test_a_task_id_is_accepted_exactly_when_its_names_and_itself_are_valid(
        cluster: str, service: str, version: int, instance: int) -> None:
    # a task id's key is built from remembered checks of its cluster and service names;
    # what it accepts is what checking every part and the whole id accepts
    tid = f"{cluster}-{service}-{version}-{instance}"
    try:
        parsed = TaskId.parse(tid)
    except ValueError:
        expected = False
    else:
        expected = (_valid(parsed.cluster, "cluster name", allow_dash=False)
                    and _valid(parsed.service, "service name") and _valid(tid, "task id"))
    ks = Keyspace()
    for _ in range(2):  # the second time from what was remembered
        if expected:
            assert ks.task(tid) == f"sked/state/tasks/{tid}"
            assert ks.host_task("h1", tid) == f"sked/state/hosts/h1/{tid}"
        else:
            with pytest.raises(InvalidName):
                ks.task(tid)
            with pytest.raises(InvalidName):
                ks.host_task("h1", tid)


def test_a_name_refused_once_is_refused_again_and_a_long_id_of_valid_names_too() -> None:
    ks = Keyspace()
    for _ in range(2):
        with pytest.raises(InvalidName, match="must not contain ' '"):
            ks.host_config("bad name")
        with pytest.raises(InvalidName, match="longer than 128"):
            ks.task(f"c-{'s' * 120}-1-{10**6}")
    assert ks.host_config("good") == "sked/config/hosts/good"
    assert ks.task(f"c-{'s' * 100}-1-0") == f"sked/state/tasks/c-{'s' * 100}-1-0"
