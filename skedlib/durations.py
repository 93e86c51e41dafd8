"""Durations: Go-style strings (``"1m30s"``) to and from integer nanoseconds.

Stored objects keep durations as integer nanoseconds, as Sked's task JSON does
(``"grace_period": 60000000000``). Manifests may also write them as strings.
"""

from __future__ import annotations

import math
import re

from skedlib.errors import ValidationError

__all__ = ["MAX_DURATION", "format_duration", "parse_duration"]

NANOSECOND = 1
MICROSECOND = 1_000
MILLISECOND = 1_000_000
SECOND = 1_000_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
MAX_DURATION = 2**63 - 1
"""The longest duration: what a signed 64-bit integer of nanoseconds holds (Go's
``time.Duration``, about 292 years), so every reader of the store can hold it."""

_UNITS = {
    "ns": NANOSECOND,
    "us": MICROSECOND,
    "µs": MICROSECOND,
    "ms": MILLISECOND,
    "s": SECOND,
    "m": MINUTE,
    "h": HOUR,
}
_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h)")
_DIGITS = re.compile(r"[0-9]+")


def parse_duration(text: str | int | float) -> int:
    """Return the nanoseconds in ``text``: ``"60s"``, ``"1m30s"``, ``"250ms"`` or a number.

    A bare number is taken as nanoseconds. Raises :class:`ValidationError` on anything
    else, including negative, infinite and NaN durations and durations longer than
    :data:`MAX_DURATION`.
    """
    if isinstance(text, bool):
        raise ValidationError(f"invalid duration {text!r}")
    if isinstance(text, int | float):
        if isinstance(text, float) and not math.isfinite(text):
            raise ValidationError(f"invalid duration {text!r}: not a finite number")
        if text < 0:
            raise ValidationError(f"invalid duration {text!r}: negative")
        return _bounded(int(text), text)
    s = text.strip()
    if s in ("0", ""):
        return 0
    if _DIGITS.fullmatch(s):
        return _bounded(int(s), text)
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
    if not math.isfinite(total):
        return _bounded(MAX_DURATION + 1, text)
    return _bounded(round(total), text)


def _bounded(ns: int, text: object) -> int:
    if ns > MAX_DURATION:
        raise ValidationError(f"invalid duration {text!r}: longer than {MAX_DURATION} ns "
                              "(about 292 years)")
    return ns


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
