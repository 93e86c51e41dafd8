"""Read-modify-compare-and-swap, retried: the one loop for optimistic writes.

A CAS attempt reads what it needs, computes the new values and writes them in one
transaction that compares the revisions it read. When another writer got there first the
compare fails and the attempt is simply made again on fresh reads::

    def attempt() -> int | Retry:
        kv = backend.get(key)
        res = backend.txn([Compare(key, kv.revision if kv else 0)], [Put(key, new(kv))])
        return res.revision if res.succeeded else RETRY

    revision = retry_on_conflict(attempt, what=key)

An attempt returns its result, or :data:`RETRY` to be called again. After ``attempts``
tries :class:`~skedlib.errors.ConflictError` is raised: ``<what> kept changing under the
write (N attempts); try again`` — one wording for every such error.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Final, TypeVar

from skedlib.errors import ConflictError
from skedlib.runtime.backoff import Backoff

__all__ = ["RETRY", "Retry", "retry_on_conflict"]

T = TypeVar("T")


class Retry(enum.Enum):
    """The type of :data:`RETRY`."""

    RETRY = "retry"


RETRY: Final = Retry.RETRY
"""Returned by an attempt whose compare failed: read again and try again."""


def retry_on_conflict(attempt: Callable[[], T | Retry], *, what: str,
                      attempts: int = 8, backoff: Backoff | None = None) -> T:
    """Call ``attempt`` until it returns something other than :data:`RETRY`.

    Between tries it sleeps ``backoff``'s delay (none by default: a lost race is best
    retried at once on fresh reads). Raises :class:`ConflictError` naming ``what`` when
    every one of ``attempts`` tries lost its race.
    """
    for _ in range(max(1, attempts)):
        result = attempt()
        if result is not RETRY:
            return result
        if backoff is not None:
            time.sleep(backoff.next())
    raise ConflictError(f"{what} kept changing under the write ({attempts} attempts); "
                        "try again")
