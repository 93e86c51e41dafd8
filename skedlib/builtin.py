"""skedlib's built-in plugin: the ``memory`` and ``sqlite`` backends, the ``bash`` and
``process`` executors (with their config Structs) and the ``local`` health provider.

Registered through the same hooks a third-party plugin implements. Executors and the
health provider are imported when first created, so commands that never run tasks
(``sked get …``) do not pay for them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from skedlib.hookspecs import BackendFactory, hookimpl
from skedlib.models import BashExecutor, ProcessExecutor
from skedlib.store.memory import open_memory
from skedlib.store.sqlite import open_sqlite

if TYPE_CHECKING:
    from skedlib.executors.base import Executor, ExecutorContext
    from skedlib.health.provider import HealthContext, HealthProvider


@hookimpl
def skedlib_backends() -> Mapping[str, BackendFactory]:
    """``memory://`` and ``sqlite:///path``."""
    return {"memory": open_memory, "sqlite": open_sqlite}


def _bash(ctx: ExecutorContext) -> Executor:
    from skedlib.executors.bash import BashRunner

    return BashRunner(ctx)


def _process(ctx: ExecutorContext) -> Executor:
    from skedlib.executors.process import ProcessRunner

    return ProcessRunner(ctx)


def _local_health(ctx: HealthContext) -> HealthProvider:
    from skedlib.health.provider import LocalHealthProvider

    return LocalHealthProvider(ctx)


@hookimpl
def skedlib_executors() -> Mapping[str, Callable[..., Any]]:
    """``bash`` (Sked's shell commands) and ``process`` (a supervised command)."""
    return {"bash": _bash, "process": _process}


@hookimpl
def skedlib_executor_configs() -> Mapping[str, type[msgspec.Struct]]:
    """The blobs of ``bash`` and ``process`` containers."""
    return {"bash": BashExecutor, "process": ProcessExecutor}


@hookimpl
def skedlib_health_providers() -> Mapping[str, Callable[..., Any]]:
    """``local``: the agent runs the checks itself."""
    return {"local": _local_health}
