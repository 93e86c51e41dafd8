"""How the programs log: one line per record, control characters escaped.

Names and keys come from the store, which other users may write: a key with a newline
or a terminal escape (``\\x1b[31m``) must not forge a log line nor drive the terminal of
whoever reads the log. :class:`OneLineFormatter` escapes the formatted message with
:func:`~skedlib.errors.one_line`; a traceback keeps its line breaks (it is read as a
block under its record) but its other control characters are escaped too.
"""

from __future__ import annotations

import logging
import sys

from skedlib.errors import one_line

__all__ = ["LOG_FORMAT", "OneLineFormatter", "configure_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class OneLineFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose message part is always one line of printable
    text."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return one_line(super().formatMessage(record))

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        return "\n".join(one_line(line)
                         for line in super().formatException(ei).split("\n"))

    def formatStack(self, stack_info: str) -> str:
        return "\n".join(one_line(line) for line in super().formatStack(stack_info).split("\n"))


def configure_logging(level: str | int, fmt: str = LOG_FORMAT) -> None:
    """Log to stderr at ``level`` through a :class:`OneLineFormatter` (what
    :func:`logging.basicConfig` does, escaped)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(fmt))
    logging.basicConfig(level=level, handlers=[handler])
