"""Service status records: what the scheduler daemon made of each service.

After every run for a ``(cluster, service)`` pair the daemon writes a
:class:`~skedlib.models.ServiceStatus` under ``state/services/<cluster>/<service>``, only
when it changed (``updated_at`` and ``revision`` aside), fenced by the pair's lock.
``sked get services`` and ``sked up`` read these records to say why a service is not
placed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import msgspec

from skedlib.codecs import decode
from skedlib.errors import ValidationError
from skedlib.keys import Keyspace, ServiceStatusKey
from skedlib.models import ServiceStatus
from skedlib.store.base import KeyValue

__all__ = ["MAX_REASONS", "describe", "read_statuses", "reasons_of", "same_status"]

MAX_REASONS = 10


def reasons_of(unschedulable: Mapping[str, str]) -> list[str]:
    """Distinct reasons, most frequent first, each with its count (at most 10)."""
    counts = Counter(unschedulable.values())
    return [f"{n} task(s): {reason}" for reason, n in counts.most_common(MAX_REASONS)]


def same_status(a: ServiceStatus | None, b: ServiceStatus | None) -> bool:
    """Equal but for ``updated_at`` and ``revision``."""
    if a is None or b is None:
        return a is b
    return msgspec.structs.replace(a, updated_at=0.0, revision=0) == \
        msgspec.structs.replace(b, updated_at=0.0, revision=0)


def describe(status: ServiceStatus | None) -> str:
    """One short cell for a table: ``ok``, ``progressing (1/2 healthy)``,
    ``unschedulable: …``, ``error: …``."""
    if status is None:
        return "no scheduler has run yet"
    if status.state == "progressing":
        detail = status.message or f"{status.healthy}/{status.desired} healthy"
        return f"progressing ({detail})"
    if status.message:
        return f"{status.state}: {status.message}"
    return status.state


def read_statuses(items: Iterable[KeyValue], keyspace: Keyspace | None = None
                  ) -> dict[tuple[str, str], ServiceStatus]:
    """The status records among ``items`` (a listing), by ``(cluster, service)``."""
    ks = keyspace or Keyspace()
    found: dict[tuple[str, str], ServiceStatus] = {}
    for kv in items:
        if not kv.key.startswith(ks.service_statuses):
            continue
        try:
            key = ks.parse(kv.key)
            status = decode(kv.value, ServiceStatus, where=kv.key)
        except ValidationError:
            continue  # not ours, or written by something else: ignore
        if isinstance(key, ServiceStatusKey):
            found[(key.cluster, key.service)] = status
    return found
