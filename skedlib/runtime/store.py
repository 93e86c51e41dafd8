"""A backend and the keyspace it is used under, carried together.

Everything that reads or writes skedlib's keys needs both: the :class:`Backend` and the
:class:`~skedlib.keys.Keyspace` (the prefix, ``sked/`` by default). Passing them as two
arguments let a caller give a custom prefix to one function and forget it on the next,
which then silently wrote under ``sked/``. A :class:`Store` is the pair, built in one place::

    with Store.open("sqlite:///tmp/demo.db") as store:
        snapshot = read_snapshot(store)
        commit_plan(store, snapshot, plan)

It forwards the storage primitives (``get``, ``list``, ``txn``, ``watch`` …) to the
backend, so code that has a store does not reach for ``store.backend`` to read a key, and
builds :class:`~skedlib.runtime.informer.Informer` s on it.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Collection, Sequence

from skedlib.keys import Keyspace
from skedlib.plugins import open_backend
from skedlib.runtime.backoff import Backoff
from skedlib.runtime.informer import Informer
from skedlib.store.base import (
    Backend,
    Compare,
    KeyValue,
    ListResult,
    Op,
    TxnResult,
    Watch,
    WatchEvent,
    WatchKind,
)

__all__ = ["Store"]


class Store:
    """A :class:`Backend` with its :class:`Keyspace` (default prefix ``sked/``)."""

    __slots__ = ("backend", "keys")

    def __init__(self, backend: Backend, keys: Keyspace | None = None) -> None:
        self.backend = backend
        self.keys = keys if keys is not None else Keyspace()

    @classmethod
    def open(cls, url: str, prefix: str | None = None) -> Store:
        """Open the backend for ``url`` (chosen by its scheme) under ``prefix``."""
        keys = Keyspace(prefix) if prefix is not None else None
        return cls(open_backend(url), keys)

    @classmethod
    def of(cls, backend: Backend | Store, keys: Keyspace | None = None) -> Store:
        """``backend`` as a store: a :class:`Store` is returned as it is (``keys`` must
        then be None or the same prefix), a :class:`Backend` is paired with ``keys``."""
        if isinstance(backend, Store):
            if keys is not None and keys.prefix != backend.keys.prefix:
                raise ValueError(f"store under {backend.keys.prefix!r} given with another "
                                 f"keyspace {keys.prefix!r}")
            return backend
        return cls(backend, keys)

    # -- the storage primitives, forwarded ------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        """The key's current value, or None."""
        return self.backend.get(key)

    def list(self, prefix: str) -> ListResult:
        """Every key under ``prefix``, with the revision read at."""
        return self.backend.list(prefix)

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        """Apply ``ops`` atomically if every compare holds."""
        return self.backend.txn(compares, ops)

    def watch(self, prefix: str, start_revision: int) -> Watch:
        """Changes under ``prefix`` from ``start_revision`` on (inclusive)."""
        return self.backend.watch(prefix, start_revision)

    def current_revision(self) -> int:
        """The store's current revision (read under the keyspace's prefix)."""
        return self.backend.current_revision(self.keys.prefix)

    def informer(self, prefix: str, *, on_list: Callable[[ListResult], None],
                 on_events: Callable[[builtins.list[WatchEvent]], None],
                 name: str | None = None,
                 poll_timeout: float = 1.0, backoff: Backoff | None = None,
                 kinds: Collection[WatchKind] | None = None) -> Informer:
        """An :class:`Informer` following ``prefix`` on this store (not started);
        ``kinds``: only those events are handed on (all when None)."""
        return Informer(self.backend, prefix, on_list=on_list, on_events=on_events,
                        name=name, poll_timeout=poll_timeout, backoff=backoff, kinds=kinds)

    def close(self) -> None:
        """Close the backend."""
        self.backend.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.backend.url or type(self.backend).__name__!r}, {self.keys.prefix!r})"
