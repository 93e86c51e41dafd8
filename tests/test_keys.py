"""Key schema: every key builds and parses back; every bad name is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skedlib.errors import InvalidName, ValidationError
from skedlib.keys import (
    AgentKey,
    ClusterKey,
    DeploymentKey,
    EnvironmentKey,
    HealthKey,
    HostAllocKey,
    HostConfigKey,
    HostTaskKey,
    JobCleanerKey,
    JobFinishedKey,
    JobKey,
    JobNodeKey,
    JobQueuedKey,
    JobRunningKey,
    Key,
    Keyspace,
    LockKey,
    RolloutKey,
    ServiceKey,
    ServiceStatusKey,
    TaskDefinitionKey,
    TaskKey,
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

keys: st.SearchStrategy[Key] = st.one_of(
    st.builds(ClusterKey, cluster_names),
    st.builds(ServiceKey, names),
    st.builds(TaskDefinitionKey, names, versions),
    st.builds(HostConfigKey, names),
    st.builds(TaskKey, task_ids),
    st.builds(HostTaskKey, names, task_ids),
    st.builds(HealthKey, task_ids),
    st.builds(AgentKey, names),
    st.builds(LockKey, cluster_names, names),
    st.builds(ServiceStatusKey, cluster_names, names),
    st.builds(HostAllocKey, names),
    st.builds(RolloutKey, cluster_names, names),
    st.builds(EnvironmentKey, names),
    st.builds(DeploymentKey, names, names),
    st.builds(JobKey, names),
    st.builds(JobQueuedKey, names),
    st.builds(JobRunningKey, names, names),
    st.builds(JobFinishedKey, st.sampled_from(["complete", "failed", "canceled"]),
              st.integers(min_value=0, max_value=10**10 - 1), names),
    st.builds(JobNodeKey, names),
    st.just(JobCleanerKey()),
)


@given(key=keys, prefix=prefixes)
def test_parse_build_round_trip(key: Key, prefix: str) -> None:
    ks = Keyspace(prefix)
    text = ks.build(key)
    assert text.startswith(prefix)
    assert ks.parse(text) == key


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
                  lambda n: ks.task(f"c-{n}-1-0"), ks.environment,
                  lambda n: ks.deployment("e", n), lambda n: ks.deployment(n, "1"),
                  lambda n: ks.host_task(n, "c-s-1-0"), lambda n: ks.host_task("h", f"c-{n}-1-0"),
                  lambda n: ks.task_health(f"c-{n}-1-0"), lambda n: ks.rollout(n, "s"),
                  lambda n: ks.rollout("c", n), lambda n: ks.task_definition_versions(n),
                  ks.job, ks.job_node, lambda n: ks.job_running(n, "j"),
                  lambda n: ks.job_finished("failed", 1, n)):
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
