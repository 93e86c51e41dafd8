"""skedlib's built-in plugin: the ``memory`` and ``sqlite`` backends.

Registered through the same hooks a third-party plugin implements.
"""

from __future__ import annotations

from collections.abc import Mapping

from skedlib.hookspecs import BackendFactory, hookimpl
from skedlib.store.memory import open_memory
from skedlib.store.sqlite import open_sqlite


@hookimpl
def skedlib_backends() -> Mapping[str, BackendFactory]:
    """``memory://`` and ``sqlite:///path``."""
    return {"memory": open_memory, "sqlite": open_sqlite}
