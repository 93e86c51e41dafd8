"""Manifest parsing: durations, defaults, one-line errors, and fuzzing."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skedlib.codecs import decode, encode, parse_manifest
from skedlib.durations import format_duration, parse_duration
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


@pytest.mark.parametrize("bad", ["1x", "s", "-1s", "1m-3s", "ms1"])
def test_parse_duration_refuses(bad: str) -> None:
    with pytest.raises(ValidationError, match="invalid duration"):
        parse_duration(bad)


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
])
def test_errors_name_file_object_and_field_in_one_line(text: str, expected: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_manifest(text, "m.yml")
    message = str(info.value)
    assert "\n" not in message
    assert expected in message


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


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20)


@settings(max_examples=300)
@given(st.binary(max_size=200) | json_values.map(lambda v: encode(v)))
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


@settings(max_examples=200)
@given(st.text(max_size=300))
def test_fuzz_raw_yaml_text_only_raises_validation_errors(text: str) -> None:
    try:
        parse_manifest(text, "fuzz.yml")
    except ValidationError as exc:
        assert str(exc).startswith("fuzz.yml")
