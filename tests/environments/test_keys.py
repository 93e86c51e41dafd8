"""Environment keys: every key builds and parses back; every bad name is refused."""

from __future__ import annotations

import pytest
from hypothesis import given

from skedlib.environments.keys import AnyEnvironmentKey, EnvironmentKeyspace
from skedlib.errors import InvalidName
from skedlib.keys import Keyspace
from tests.test_keys import bad_names, prefixes, template_keys


@given(key=template_keys(EnvironmentKeyspace), prefix=prefixes)
def test_parse_build_round_trip(key: AnyEnvironmentKey, prefix: str) -> None:
    keys = EnvironmentKeyspace(Keyspace(prefix))
    text = keys.build(key)
    assert text.startswith(prefix)
    assert keys.parse(text) == key


@given(name=bad_names)
def test_invalid_names_are_refused_by_every_builder(name: str) -> None:
    keys = EnvironmentKeyspace(Keyspace())
    for build in (keys.environment, keys.environment_deployments,
                  lambda n: keys.deployment("e", n), lambda n: keys.deployment(n, "1")):
        with pytest.raises(InvalidName):
            build(name)
