"""The programs' log lines: one line per message, control characters escaped; a
traceback keeps its lines, escaped within them."""

from __future__ import annotations

import logging

from skedlib.cli.logs import OneLineFormatter


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("bad key a\nb\x1b[31m")
        except ValueError as e:
            exc_info = (type(e), e, e.__traceback__)
    return logging.LogRecord("skedlib.agent", logging.WARNING, __file__, 1, msg, args,
                             exc_info)


def test_a_message_is_one_line_with_its_control_characters_escaped() -> None:
    fmt = OneLineFormatter("%(levelname)s %(message)s")
    line = fmt.format(_record("ignoring %s: not a task key", "sked/x\nINFO forged\x1b[2J"))
    assert line == "WARNING ignoring sked/x\\nINFO forged\\x1b[2J: not a task key"


def test_a_traceback_keeps_its_lines_but_escapes_inside_them() -> None:
    fmt = OneLineFormatter("%(levelname)s %(message)s")
    text = fmt.format(_record("task %s failed", "t\n1", exc=True))
    first, *rest = text.split("\n")
    assert first == "WARNING task t\\n1 failed"
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: bad key a\\nb\\x1b[31m"  # the message: one line
    assert all(x.startswith(" ") for x in rest[1:-1])  # frames, indented


def test_json_lines_hold_the_fields_and_stay_one_line() -> None:
    import json

    from skedlib.cli.logs import JsonFormatter

    fmt = JsonFormatter()
    line = fmt.format(_record("ignoring %s: not a task key", "sked/x\nINFO forged"))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "WARNING" and entry["logger"] == "skedlib.agent"
    assert entry["message"] == "ignoring sked/x\nINFO forged: not a task key"
    assert entry["time"].endswith("Z") and "exception" not in entry
    with_exc = fmt.format(_record("task %s failed", "t1", exc=True))
    assert "\n" not in with_exc
    assert "ValueError: bad key a\nb" in json.loads(with_exc)["exception"]
