"""Host constraints of a service: attribute expressions and ``distinct_host``.

Grammar (one constraint per string; a service's constraints must all hold)::

    attribute:<name> == <value>        attribute:zone == eu-1
    attribute:<name> != <value>
    attribute:<name> in [a, b, c]
    attribute:<name> not in [a, b]
    attribute:<name> =~ <regex>        (Python ``re.fullmatch``)
    attribute:<name>                   (the host has the attribute)
    distinct_host                      (at most one task of the service per host)
    spread:<name>                      (a preference, not a filter: schedulers that
                                        spread, spread evenly over this attribute)

``host.name`` may stand for ``attribute:<name>`` to match on the host's name.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import msgspec

from skedlib.errors import ValidationError

__all__ = ["Constraint", "parse_constraint"]

_EXPR = re.compile(
    r"^\s*(?:attribute:(?P<attr>[^\s=!~]+)|(?P<hostname>host\.name))\s*"
    r"(?:(?P<op>==|!=|=~|not\s+in|in)\s*(?P<value>.+?))?\s*$")


class Constraint(msgspec.Struct, frozen=True):
    """A parsed constraint: ``text`` as written, and how to test a host."""

    text: str
    attribute: str = ""
    op: str = ""
    values: tuple[str, ...] = ()
    distinct_host: bool = False
    spread: str = ""
    """For ``spread:<attribute>``: the attribute to spread over (never filters a host)."""

    def matches(self, host_name: str, attributes: dict[str, str]) -> bool:
        """True when a host with these attributes satisfies this constraint."""
        if self.distinct_host or self.spread:
            return True  # checked against the plan, or only a preference
        value = host_name if self.attribute == "host.name" else attributes.get(self.attribute)
        if value is None:
            return self.op in ("!=", "not in")
        test = _OPS[self.op]
        return test(value, self.values)


def _regex(value: str, values: tuple[str, ...]) -> bool:
    return re.fullmatch(values[0], value) is not None


_OPS: dict[str, Callable[[str, tuple[str, ...]], bool]] = {
    "": lambda v, vs: True,
    "==": lambda v, vs: v == vs[0],
    "!=": lambda v, vs: v != vs[0],
    "in": lambda v, vs: v in vs,
    "not in": lambda v, vs: v not in vs,
    "=~": _regex,
}


def parse_constraint(text: str) -> Constraint:
    """Parse one constraint; raises :class:`ValidationError` saying what is wrong."""
    if text.strip() == "distinct_host":
        return Constraint(text, distinct_host=True)
    if text.strip().startswith("spread:"):
        attribute = text.strip()[len("spread:"):].strip()
        if not attribute or any(ch.isspace() for ch in attribute):
            raise ValidationError(f"constraint {text!r}: expected 'spread:ATTRIBUTE'")
        return Constraint(text, spread=attribute)
    m = _EXPR.match(text)
    if m is None:
        raise ValidationError(f"constraint {text!r}: expected 'attribute:NAME OP VALUE' "
                              "(OP one of ==, !=, in, not in, =~) or 'distinct_host'")
    attr = m.group("attr") or "host.name"
    op = re.sub(r"\s+", " ", m.group("op") or "")
    raw = (m.group("value") or "").strip()
    if op and not raw:
        raise ValidationError(f"constraint {text!r}: {op} needs a value")
    if op in ("in", "not in"):
        if not (raw.startswith("[") and raw.endswith("]")):
            raise ValidationError(f"constraint {text!r}: {op} needs a list like [a, b]")
        values = tuple(v.strip().strip("'\"") for v in raw[1:-1].split(",") if v.strip())
    else:
        values = (raw.strip("'\""),) if raw else ()
    if op == "=~":
        try:
            re.compile(values[0])
        except re.error as exc:
            raise ValidationError(f"constraint {text!r}: bad regex: {exc}") from None
    return Constraint(text, attribute=attr, op=op, values=values)
