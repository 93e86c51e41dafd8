"""Constraint expressions."""

from __future__ import annotations

import pytest

from skedlib.constraints import parse_constraint
from skedlib.errors import ValidationError


@pytest.mark.parametrize(("text", "attrs", "ok"), [
    ("attribute:zone == a", {"zone": "a"}, True),
    ("attribute:zone == a", {"zone": "b"}, False),
    ("attribute:zone != a", {"zone": "b"}, True),
    ("attribute:zone != a", {}, True),
    ("attribute:zone in [a, b]", {"zone": "b"}, True),
    ("attribute:zone in [a, b]", {"zone": "c"}, False),
    ("attribute:zone in [a, b]", {}, False),
    ("attribute:zone not in [a, b]", {"zone": "c"}, True),
    ("attribute:kernel =~ 6\\..*", {"kernel": "6.1.0"}, True),
    ("attribute:kernel =~ 6\\..*", {"kernel": "5.10"}, False),
    ("attribute:ssd", {"ssd": "true"}, True),
    ("attribute:ssd", {}, False),
    ("host.name == node-1", {}, True),
])
def test_matches(text: str, attrs: dict[str, str], ok: bool) -> None:
    assert parse_constraint(text).matches("node-1", attrs) is ok


@pytest.mark.parametrize("text", ["zone == a", "attribute:zone in a", "attribute:z =~ (",
                                  "attribute:z ==", "attribute:z >= 3"])
def test_bad_constraints_say_why(text: str) -> None:
    with pytest.raises(ValidationError, match="constraint"):
        parse_constraint(text)


def test_distinct_host() -> None:
    assert parse_constraint("distinct_host").distinct_host
