"""Manifest parsing: durations, defaults, one-line errors, and fuzzing."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skedlib.client import Client
from skedlib.codecs import decode, parse_manifest
from skedlib.durations import MAX_DURATION, format_duration, parse_duration
from skedlib.errors import ValidationError
from skedlib.models import Service, Task, TaskDefinition

MANIFEST = """
task_definitions:
  - name: web
    version: 1
    grace_period: 1m30s
    containers:
      - name: c
        type: bash
        setup: null
        executor: {start: "python3 -m http.server $PROVIDED_PORT"}
        checks: [{http: "http://127.0.0.1:$PROVIDED_PORT", interval: 10s, name: null}]
services:
  - {name: web, task_name: web, task_version: 1, desired: 2,
     update: {min_healthy_time: 5s, deadline: 2m}}
"""


def test_durations_accept_strings_and_nanoseconds() -> None:
    doc = parse_manifest(MANIFEST, "m.yml")
    td = doc.manifest.task_definitions[0]
    assert td.grace_period == 90_000_000_000
    assert td.containers[0].setup is None
    assert td.containers[0].checks[0].name == ""  # null → the default
    svc = doc.manifest.services[0]
    assert (svc.update.min_healthy_time, svc.update.deadline) == (5 * 10**9, 120 * 10**9)
    assert doc.warnings == ()


@pytest.mark.parametrize(("text", "ns"), [("60s", 60 * 10**9), ("1m30s", 90 * 10**9),
                                          ("250ms", 250 * 10**6), ("1h", 3600 * 10**9),
                                          ("1.5s", 1_500_000_000), ("42", 42), (7, 7)])
def test_parse_duration(text: str | int, ns: int) -> None:
    assert parse_duration(text) == ns


@given(st.integers(min_value=0, max_value=10**15))
def test_format_duration_round_trips(ns: int) -> None:
    assert parse_duration(format_duration(ns)) == ns


@pytest.mark.parametrize("bad", ["1x", "s", "-1s", "1m-3s", "ms1", "²", "\u0661s",
                                 float("inf"), float("nan"), -1, "1" * 400 + "s", MAX_DURATION + 1,
                                 str(MAX_DURATION + 1), "3000000h"])
def test_parse_duration_refuses(bad: str | float) -> None:
    with pytest.raises(ValidationError, match="invalid duration"):
        parse_duration(bad)


def test_the_longest_duration_is_accepted() -> None:
    assert parse_duration(MAX_DURATION) == parse_duration(str(MAX_DURATION)) == MAX_DURATION


@pytest.mark.parametrize(("text", "expected"), [
    ("services: [{name: a, task_name: a, task_version: one}]",
     'm.yml: services[0] "a": field task_version: Expected `int`, got `str`'),
    ("task_definitions: [{name: a, version: 1, grace_period: soon}]",
     'm.yml: task_definitions[0] "a": field grace_period: invalid duration'),
    ("services: [{name: a}, {name: b, task_name: b, task_version: 1, desired: []}]",
     'm.yml: services[0] "a": Object missing required field `task_name`'),
    ("clusters: {name: a}", "m.yml: clusters: expected a list, got dict"),
    ("clusters: [a]", "m.yml: clusters[0]: expected a mapping, got str"),
    ("services: [{name: a, task_name: a, task_version: 1,\n", "m.yml: line"),
    ("- 1\n- 2", "m.yml: expected a mapping"),
    ("task_definitions: [{name: a, version: 1, containers: [{name: c, type: x, "
     "checks: [{interval: [1]}]}]}]",
     'task_definitions[0] "a": field containers[0].checks[0].interval: Expected `str`'),
    ("task_definitions: [{name: a, version: 1, grace_period: .inf}]",
     'm.yml: task_definitions[0] "a": field grace_period: invalid duration inf'),
    ("task_definitions: [{name: a, version: 1, grace_period: .nan}]",
     'm.yml: task_definitions[0] "a": field grace_period: invalid duration nan'),
    ("services: [{name: a, task_name: a, task_version: 1, update: {deadline: "
     "99999999999999999999}}]",
     'm.yml: services[0] "a": field update.deadline: invalid duration 99999999999999999999: '
     "longer than"),
    ('task_definitions: [{name: a, version: 1, tags: [ok, "x\\ud800"]}]',
     'm.yml: task_definitions[0] "a": field tags[1]: text with an unpaired surrogate'),
    ('services: [{name: "a\\nb\\e[2J", task_name: 1}]',
     'm.yml: services[0] "a\\nb\\x1b[2J": field task_name: Expected `str`'),
    ("\x00", "m.yml: malformed YAML: unacceptable character"),
])
def test_errors_name_file_object_and_field_in_one_line(text: str, expected: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_manifest(text, "m.yml")
    message = str(info.value)
    assert "\n" not in message
    assert expected in message


def test_unknown_fields_of_a_builtin_executor_blob_warn() -> None:
    text = """task_definitions:
  - name: web
    version: 1
    containers:
      - {name: c, type: bash, executor: {start: run, stp: x}}
      - {name: d, type: docker, executor: {image: busybox, name: d, imgae: y}}
      - {name: e, type: someplugin, executor: {anything: 1}}
"""
    doc = parse_manifest(text, "m.yml")
    assert doc.warnings == (
        'm.yml: task_definitions[0] "web": field containers[0].executor.stp: unknown field, '
        "ignored",
        'm.yml: task_definitions[0] "web": field containers[1].executor.imgae: unknown field, '
        "ignored")
    assert doc.manifest.task_definitions[0].containers[0].executor == {"start": "run",
                                                                       "stp": "x"}


def test_unknown_fields_warn_and_are_ignored() -> None:
    doc = parse_manifest("services: [{name: a, task_name: a, task_version: 1, colour: red,"
                         " update: {speed: 3}}]\nextra: 1\n", "m.yml")
    assert doc.manifest.services[0].name == "a"
    assert 'm.yml: services[0] "a": field colour: unknown field, ignored' in doc.warnings
    assert 'm.yml: services[0] "a": field update.speed: unknown field, ignored' in doc.warnings
    assert "m.yml: unknown top-level key 'extra', ignored" in doc.warnings


def test_stored_json_decode_error_names_the_key() -> None:
    with pytest.raises(ValidationError, match=r"^sked/config/services/x: field desired"):
        decode(b'{"name":"x","task_name":"x","task_version":1,"desired":"2"}', Service,
               where="sked/config/services/x")
    with pytest.raises(ValidationError, match="malformed JSON"):
        decode(b"{", Service, where="k")


# text includes unpaired surrogates and control characters, which YAML can escape
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats()
    | st.text(st.characters(exclude_categories=())),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20)


@settings(max_examples=300)
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_fuzz_json_decoders_only_raise_validation_errors(raw: bytes) -> None:
    for type_ in (Task, Service, TaskDefinition):
        with contextlib.suppress(ValidationError):
            decode(raw, type_)


yaml_like = st.dictionaries(
    st.sampled_from(["clusters", "services", "task_definitions", "other"]),
    st.lists(st.dictionaries(
        st.sampled_from(["name", "version", "task_name", "task_version", "desired",
                         "containers", "grace_period", "update", "checks", "executor"]),
        json_values, max_size=6), max_size=3) | json_values,
    max_size=3)


@settings(max_examples=300)
@given(yaml_like)
def test_fuzz_manifest_parser_only_raises_validation_errors(doc: dict[str, Any]) -> None:
    import yaml

    try:
        parse_manifest(yaml.safe_dump(doc), "fuzz.yml")
    except ValidationError as exc:
        assert str(exc).startswith("fuzz.yml")
        assert str(exc).isprintable()  # one line, no terminal control


nearly_valid = st.fixed_dictionaries({
    "task_definitions": st.lists(st.fixed_dictionaries({
        "name": st.sampled_from(["web", "db"]) | json_values,
        "version": st.sampled_from([1, 2]) | json_values,
        "grace_period": st.sampled_from(["60s", "1m30s", 5, -1]) | json_values,
        "containers": st.lists(st.fixed_dictionaries({
            "name": st.just("c") | json_values,
            "type": st.sampled_from(["bash", "process", "docker", "other"]),
            "executor": st.fixed_dictionaries({}, optional={
                "start": json_values, "argv": json_values, "image": json_values}),
            "checks": st.lists(st.fixed_dictionaries({}, optional={
                "http": st.just("http://127.0.0.1:$PROVIDED_PORT") | json_values,
                "tcp": json_values, "interval": st.just("10s") | json_values,
                "timeout": json_values, "ttl": json_values}), max_size=2),
        }), max_size=2),
    }), max_size=2),
    "services": st.lists(st.fixed_dictionaries({
        "name": st.just("web") | json_values, "task_name": st.sampled_from(["web", "db"]),
        "task_version": st.sampled_from([1, 2]) | json_values,
    }, optional={"desired": json_values, "min": json_values, "max": json_values,
                 "constraints": json_values, "update": json_values}), max_size=2),
})


@settings(max_examples=300, deadline=None)
@given(nearly_valid)
def test_fuzz_apply_only_raises_validation_errors(doc: dict[str, Any]) -> None:
    """Parsing, validation and the write of ``sked apply``: either it is stored, or the
    one error that escapes is skedlib's ValidationError and nothing is written."""
    import yaml

    with Client.open("memory://") as client:
        try:
            client.apply(parse_manifest(yaml.safe_dump(doc), "fuzz.yml"))
        except ValidationError as exc:
            assert str(exc).startswith("fuzz.yml") and str(exc).isprintable()
            assert client.backend.list("").items == []


@settings(max_examples=200)
@given(st.text(max_size=300))
def test_fuzz_raw_yaml_text_only_raises_validation_errors(text: str) -> None:
    try:
        parse_manifest(text, "fuzz.yml")
    except ValidationError as exc:
        assert str(exc).startswith("fuzz.yml")


def test_a_type_that_forbids_unknown_fields_is_never_read_loosely() -> None:
    """The original program's shapes are accepted for stored records, but a request body
    or a config file declared strict keeps refusing a misspelt field."""
    class Strict(msgspec.Struct, forbid_unknown_fields=True):
        desired: int

    with pytest.raises(ValidationError, match="unknown field `extra`"):
        decode(b'{"desired": 2, "extra": 1}', Strict, where="request body")
    assert decode(b'{"desired": 2}', Strict).desired == 2
