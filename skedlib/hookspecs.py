"""Every hook a skedlib plugin can implement, in one place.

A plugin is a module or object with functions marked ``@hookimpl`` and named after the
specs below. skedlib registers its built-in pieces exactly as third-party plugins are
registered: the ``skedlib`` entry-point group (``[project.entry-points.skedlib]`` in a
plugin package's pyproject) names the module. Each hook returns a mapping of names to
factories; every result is merged, and a name offered by two plugins is an error that
names both.

Use :mod:`skedlib.plugins` (``get_registry()``) rather than calling hooks directly: it
validates what plugins return and names the plugin at fault.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from skedlib.store.base import Backend

__all__ = [
    "BackendFactory",
    "hookimpl",
    "hookspec",
    "skedlib_backends",
    "skedlib_executors",
    "skedlib_health_providers",
    "skedlib_schedulers",
]

PROJECT = "skedlib"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

BackendFactory = Callable[[str], "Backend"]
"""Opens a backend from its URL; raises :class:`~skedlib.errors.BackendUnavailable`."""


# -- storage ------------------------------------------------------------------------------
@hookspec
def skedlib_backends() -> Mapping[str, BackendFactory]:  # type: ignore[empty-body]
    """Return URL schemes mapped to backend factories, e.g. ``{"etcd": open_etcd}``.

    Called once per registry. Every plugin's result is merged; a scheme offered twice is
    an error.
    """


# -- running tasks ------------------------------------------------------------------------
@hookspec
def skedlib_executors() -> Mapping[str, Callable[..., Any]]:  # type: ignore[empty-body]
    """Return executor names (a container's ``type``) mapped to executor factories.

    A factory is called with the agent's :class:`~skedlib.agent.ExecutorContext` and
    returns an :class:`~skedlib.executors.Executor`.
    """


@hookspec
def skedlib_health_providers() -> Mapping[str, Callable[..., Any]]:  # type: ignore[empty-body]
    """Return health provider names mapped to factories (called with the agent's context).

    A backend may name the provider its agents use by default (Consul's agents register
    checks with the local Consul agent instead of checking locally).
    """


# -- scheduling ---------------------------------------------------------------------------
@hookspec
def skedlib_schedulers() -> Mapping[str, Callable[..., Any]]:  # type: ignore[empty-body]
    """Return scheduler names (a service's ``scheduler``) mapped to scheduler factories.

    A factory takes no arguments and returns a :class:`~skedlib.scheduling.Scheduler`.
    """
