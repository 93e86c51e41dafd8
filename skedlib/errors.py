"""The exceptions skedlib raises.

Every error skedlib raises derives from :class:`SkedError`, so a caller can catch one
class. Errors from third-party clients (sqlite3, grpc, requests …) are translated at the
edge (``raise BackendUnavailable(...) from exc``) and never escape raw::

    SkedError
    ├── ValidationError          bad input: names the file, object and field
    │   └── InvalidName          a name that cannot be part of a key
    ├── ConflictError            a compare in a transaction failed / an immutable object differs
    ├── NotFound                 the object or key does not exist
    ├── PluginError              a plugin is missing, duplicated, or returned something wrong
    ├── BackendError             the storage backend failed
    │   ├── BackendUnavailable   unreachable, timed out, or refused the credentials
    │   ├── Compacted            a watch asked for a revision that was compacted away
    │   ├── LeaseExpired         a lease is gone (expired or revoked)
    │   └── TxnTooLarge          a transaction exceeds the backend's operation limit
    └── LockError                a lock could not be taken in time, or was lost
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "Compacted",
    "ConflictError",
    "InvalidName",
    "LeaseExpired",
    "LockError",
    "NotFound",
    "PluginError",
    "SkedError",
    "TxnTooLarge",
    "ValidationError",
    "one_line",
]


def one_line(text: str) -> str:
    """``text`` with line breaks, control and other unprintable characters escaped
    (``\\n``, ``\\x1b``, ``\\ud800``), so a message naming user input stays one line and
    cannot drive a terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


class SkedError(Exception):
    """Base class of every error raised by skedlib."""


class ValidationError(SkedError):
    """Input that does not satisfy the model: the message names where and why."""


class InvalidName(ValidationError):
    """A name that cannot be used in a storage key."""


class ConflictError(SkedError):
    """A write lost an optimistic-concurrency race, or contradicts immutable state."""


class NotFound(SkedError):
    """The requested object does not exist."""


class PluginError(SkedError):
    """A plugin is missing, registered twice, or returned something of the wrong type."""


class BackendError(SkedError):
    """The storage backend failed."""


class BackendUnavailable(BackendError):
    """The backend could not be reached in time, or refused the connection or credentials."""


class Compacted(BackendError):
    """A watch started at a revision older than the oldest the backend still keeps.

    ``compact_revision`` is the oldest revision that can still be watched from; the
    watcher should list again and resume from the list's revision.
    """

    def __init__(self, message: str, compact_revision: int) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


class LeaseExpired(BackendError):
    """The lease no longer exists: it expired or was revoked."""


class TxnTooLarge(BackendError):
    """A single transaction holds more operations than the backend accepts."""


class LockError(SkedError):
    """A lock could not be acquired within its timeout, or its lease was lost."""
