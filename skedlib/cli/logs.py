"""How the programs log: one line per record, control characters escaped.

Names and keys come from the store, which other users may write: a key with a newline
or a terminal escape (``\\x1b[31m``) must not forge a log line nor drive the terminal of
whoever reads the log. :class:`OneLineFormatter` escapes the formatted message with
:func:`~skedlib.errors.one_line`; a traceback keeps the line breaks between its frames
(it is read as a block under its record, every line but the exception's indented), while
the exception's own message is escaped to one line like any message.
"""

from __future__ import annotations

import logging
import sys
import traceback

from skedlib.errors import one_line

__all__ = ["LOG_FORMAT", "OneLineFormatter", "configure_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
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


def configure_logging(level: str | int, fmt: str = LOG_FORMAT) -> None:
    """Log to stderr at ``level`` through a :class:`OneLineFormatter` (what
    :func:`logging.basicConfig` does, escaped)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(fmt))
    logging.basicConfig(level=level, handlers=[handler])
