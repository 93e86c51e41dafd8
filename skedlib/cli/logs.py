"""How the programs log: one line per record, control characters escaped.

Names and keys come from the store, which other users may write: a key with a newline
or a terminal escape (``\\x1b[31m``) must not forge a log line nor drive the terminal of
whoever reads the log. :class:`OneLineFormatter` escapes the formatted message with
:func:`~skedlib.errors.one_line`; a traceback keeps the line breaks between its frames
(it is read as a block under its record, every line but the exception's indented), while
the exception's own message is escaped to one line like any message.

``--log-format json`` (:class:`JsonFormatter`) writes one JSON object per line instead —
``time``, ``level``, ``logger``, ``message`` and, when there is one, ``exception`` — for
log shippers; JSON escapes every control character, so a record stays one line there too.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import traceback

import msgspec

from skedlib.errors import one_line

__all__ = ["LOG_FORMAT", "LOG_FORMATS", "JsonFormatter", "OneLineFormatter",
           "add_log_options", "configure_logging", "make_formatter"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
LOG_FORMATS = ("text", "json")
"""The values of ``--log-format``: ``text`` (the default, :data:`LOG_FORMAT`) or ``json``."""
_STRUCTURAL = ("File ", "Traceback (most recent call last):", "[Previous line",
               "During handling of the above exception",
               "The above exception was the direct cause")


class OneLineFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose message part is always one line of printable
    text."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return one_line(super().formatMessage(record))

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        # traceback's chunks: a frame or a chain header keeps its lines; an exception's
        # own line ("ValueError: <message>") is made one line, as a message is
        out = []
        for chunk in traceback.format_exception(*ei):
            if chunk.strip("\n").lstrip(" |").startswith(_STRUCTURAL):
                out.append("\n".join(one_line(line) for line in chunk.split("\n")))
            else:
                out.append(one_line(chunk.rstrip("\n")) + "\n")
        return "".join(out).removesuffix("\n")

    def formatStack(self, stack_info: str) -> str:
        return "\n".join(one_line(line) for line in super().formatStack(stack_info).split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``time`` (ISO 8601, UTC), ``level``,
    ``logger``, ``message``, and ``exception`` (the traceback text) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return msgspec.json.encode(entry).decode()


def add_log_options(parser: argparse.ArgumentParser, *, level: bool = True) -> None:
    """``--log-level`` (unless not ``level``) and ``--log-format``, the same on every
    daemon."""
    if level:
        parser.add_argument("--log-level", default="INFO",
                            choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                            help="the least severe messages logged (default INFO)")
    parser.add_argument("--log-format", default="text", choices=LOG_FORMATS,
                        help="text (default) or json: one JSON object per line with time, "
                             "level, logger, message and exception")


def make_formatter(log_format: str, fmt: str = LOG_FORMAT) -> logging.Formatter:
    """The formatter of ``--log-format``: a :class:`JsonFormatter` for ``json``, else a
    :class:`OneLineFormatter` of ``fmt``."""
    return JsonFormatter() if log_format == "json" else OneLineFormatter(fmt)


def configure_logging(level: str | int, fmt: str = LOG_FORMAT, *,
                      log_format: str = "text") -> None:
    """Log to stderr at ``level`` through a :class:`OneLineFormatter` (what
    :func:`logging.basicConfig` does, escaped), or a :class:`JsonFormatter` when
    ``log_format`` is ``json``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(log_format, fmt))
    logging.basicConfig(level=level, handlers=[handler])
