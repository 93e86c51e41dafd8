"""The model keeps Sked's JSON shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from skedlib.codecs import decode, encode
from skedlib.errors import ValidationError
from skedlib.models import Resources, Task, TaskId

SKED_TASK = Path(__file__).parent / "data" / "sked_task.json"

# Fields skedlib adds to Sked's shapes; each has a default, so older writers still decode.
EXTENSIONS = {
    "task": {"rejected_hosts", "capacity_rejections"},
    "task_definition": {"memory", "cpu_units", "priority", "stop_after_disconnect"},
    "container": {"essential", "teardown"},  # teardown: Sked's Go Container has it
    "check": {"docker", "start_period"},  # docker: Sked's Go Check has it
}


def _assert_superset(original: Any, encoded: Any, extensions: set[str], path: str) -> None:
    if isinstance(original, dict):
        assert isinstance(encoded, dict), path
        missing = set(original) - set(encoded)
        assert not missing, f"{path}: Sked's keys lost: {missing}"
        extra = set(encoded) - set(original)
        assert extra <= extensions, f"{path}: unexpected keys {extra - extensions}"
        for key, value in original.items():
            _assert_superset(value, encoded[key], extensions, f"{path}.{key}")
    elif isinstance(original, list):
        assert isinstance(encoded, list) and len(original) == len(encoded), path
        for i, (a, b) in enumerate(zip(original, encoded, strict=True)):
            _assert_superset(a, b, extensions, f"{path}[{i}]")
    else:
        assert original == encoded, f"{path}: {original!r} became {encoded!r}"


def test_sked_task_json_round_trips_with_same_keys_and_values() -> None:
    raw = SKED_TASK.read_bytes()
    task = decode(raw, Task)
    assert task.id == "default-helloworld-2-0"
    assert task.task_definition.grace_period == 60_000_000_000
    assert task.task_definition.containers[0].checks[0].interval == "10s"
    again = json.loads(encode(task))
    allowed = set().union(*EXTENSIONS.values())
    _assert_superset(json.loads(raw), again, allowed, "$")
    # what skedlib adds is only defaults, and decoding the re-encoding gives the same task
    assert again["rejected_hosts"] == [] and again["capacity_rejections"] == []
    assert decode(encode(task), Task) == task


def test_unknown_stored_fields_are_ignored_for_forward_compatibility() -> None:
    data = json.loads(SKED_TASK.read_text())
    data["from_a_newer_version"] = {"x": 1}
    assert decode(json.dumps(data).encode(), Task).service == "helloworld"


@pytest.mark.parametrize("text", ["default-web-2-0", "prod-my-web-app-10-3"])
def test_task_id_parse_round_trip(text: str) -> None:
    assert str(TaskId.parse(text)) == text


@pytest.mark.parametrize("text", ["default-web-x-0", "web-2-0", "default--2-0", "", "a-b-c",
                                  "default-web-02-0", "default-web-2-00", "default-web-٢-0",
                                  "default-web-²-0"])
def test_task_id_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        TaskId.parse(text)


def test_stored_durations_fit_64_bits() -> None:
    data = json.loads(SKED_TASK.read_text())
    data["task_definition"]["grace_period"] = 2**63
    with pytest.raises(ValidationError, match=r"field task_definition.grace_period"):
        decode(json.dumps(data).encode(), Task, where="k")


def test_resources_arithmetic_and_fit() -> None:
    free = Resources(memory=100, cpu_units=1024, disk=10)
    need = Resources(memory=60, cpu_units=512)
    assert free.fits(need)
    assert not (free - need).fits(need)
    assert (free - need) + need == free
