"""Durations: Go-style strings (``"1m30s"``) to and from integer nanoseconds.

Stored objects keep durations as integer nanoseconds, as seed 001's task JSON does
(``"grace_period": 60000000000``). Manifests may also write them as strings.
"""

from __future__ import annotations

import re

from skedlib.errors import ValidationError

__all__ = ["format_duration", "parse_duration"]

NANOSECOND = 1
MICROSECOND = 1_000
MILLISECOND = 1_000_000
SECOND = 1_000_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

_UNITS = {
    "ns": NANOSECOND,
    "us": MICROSECOND,
    "µs": MICROSECOND,
    "ms": MILLISECOND,
    "s": SECOND,
    "m": MINUTE,
    "h": HOUR,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str | int | float) -> int:
    """Return the nanoseconds in ``text``: ``"60s"``, ``"1m30s"``, ``"250ms"`` or a number.

    A bare number is taken as nanoseconds. Raises :class:`ValidationError` on anything
    else, including negative durations.
    """
    if isinstance(text, bool):
        raise ValidationError(f"invalid duration {text!r}")
    if isinstance(text, int | float):
        if text < 0:
            raise ValidationError(f"invalid duration {text!r}: negative")
        return int(text)
    s = text.strip()
    if s in ("0", ""):
        return 0
    if s.isdigit():
        return int(s)
    pos = 0
    total = 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ValidationError(
            f"invalid duration {text!r}: expected a number of nanoseconds or a string "
            "like '60s', '1m30s', '250ms'"
        )
    return round(total)


def format_duration(ns: int) -> str:
    """Format nanoseconds as the shortest Go-style string (``90_000_000_000`` → ``"1m30s"``)."""
    if ns == 0:
        return "0s"
    out = []
    rest = ns
    for unit, size in (("h", HOUR), ("m", MINUTE), ("s", SECOND), ("ms", MILLISECOND),
                       ("us", MICROSECOND), ("ns", NANOSECOND)):
        n, rest = divmod(rest, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)
