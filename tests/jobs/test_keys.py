"""Job keys: every key builds and parses back; every bad name, state and epoch is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skedlib.errors import InvalidName, ValidationError
from skedlib.jobs.keys import EPOCH_DIGITS, AnyJobKey, JobFinishedKey, JobKeyspace
from skedlib.keys import Keyspace
from tests.test_keys import bad_names, prefixes, template_keys

job_keys = template_keys(JobKeyspace, {
    "state": st.sampled_from(["complete", "failed", "canceled"]),
    "epoch": st.integers(min_value=0, max_value=10**EPOCH_DIGITS - 1)})


@given(key=job_keys, prefix=prefixes)
def test_parse_build_round_trip(key: AnyJobKey, prefix: str) -> None:
    keys = JobKeyspace(Keyspace(prefix))
    text = keys.build(key)
    assert text.startswith(prefix + "jobs/")
    assert keys.parse(text) == key


@given(name=bad_names)
def test_invalid_names_are_refused_by_every_builder(name: str) -> None:
    keys = JobKeyspace(Keyspace())
    for build in (keys.job, keys.job_queued, keys.job_node, keys.node_jobs_running,
                  lambda n: keys.job_running(n, "j"), lambda n: keys.job_running("n", n),
                  lambda n: keys.job_finished("failed", 1, n)):
        with pytest.raises(InvalidName):
            build(name)


def test_finished_keys_sort_by_epoch_and_refuse_other_states() -> None:
    keys = JobKeyspace(Keyspace())
    assert keys.job_finished("failed", 60, "j1") == "sked/jobs/status/failed/0000000060/j1"
    assert keys.jobs_finished("complete") == "sked/jobs/status/complete/"
    assert keys.job_cleaner() == "sked/jobs/cleaner"
    with pytest.raises(InvalidName, match="invalid finished job state 'running': expected "
                                          "one of complete, failed, canceled"):
        keys.jobs_finished("running")
    for epoch in (-1, 10**EPOCH_DIGITS, True, "60"):
        with pytest.raises(InvalidName, match=r"invalid job epoch .*\[0, 10\^10\)"):
            keys.job_finished("failed", epoch, "j1")  # type: ignore[arg-type]


@pytest.mark.parametrize("key", [
    "sked/jobs/status/failed/60/j1", "sked/jobs/status/queued/a/b",
    "sked/jobs/status/done/0000000060/j1", "sked/jobs/records", "sked/jobs/cleaner/x",
    "sked/jobs/status/failed/000000006\u0660/j1", "sked/config/clusters/c",
])
def test_parse_refuses_foreign_keys(key: str) -> None:
    with pytest.raises(ValidationError):
        JobKeyspace(Keyspace()).parse(key)


def test_running_and_finished_keys_of_the_same_shape_parse_apart() -> None:
    keys = JobKeyspace(Keyspace())
    assert keys.parse("sked/jobs/status/running/0000000060/j1").node == "0000000060"
    assert keys.parse("sked/jobs/status/failed/0000000060/j1") == JobFinishedKey(
        "failed", 60, "j1")
