"""The runtime layer: the mechanisms every process of the loop is built from, once each.

- :class:`Store` — a backend with its keyspace, passed as one object;
- :class:`Informer` and :func:`wait_for_change` — list, watch from the revision, resume,
  relist after compaction, back off while the store is away, stop;
- :class:`Backoff` — how long to wait before trying again;
- :func:`retry_on_conflict` — read-modify-compare-and-swap, retried;
- :func:`write_groups` — writes larger than one transaction, in fenced chunks.
"""

from skedlib.runtime.backoff import Backoff
from skedlib.runtime.informer import Informer, wait_for_change
from skedlib.runtime.retry import RETRY, Retry, retry_on_conflict
from skedlib.runtime.store import Store
from skedlib.runtime.writer import Group, WriteResult, pack, write_groups

__all__ = [
    "RETRY",
    "Backoff",
    "Group",
    "Informer",
    "Retry",
    "Store",
    "WriteResult",
    "pack",
    "retry_on_conflict",
    "wait_for_change",
    "write_groups",
]
