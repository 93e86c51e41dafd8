"""Every hook a skedlib plugin can implement, in one place.

A plugin is a module or object with functions marked ``@skedlib.hookimpl`` and named
after the specs below. skedlib registers its built-in pieces exactly as third-party
plugins are registered: the ``skedlib`` entry-point group
(``[project.entry-points.skedlib]`` in a plugin package's pyproject) names the module.
Each hook returns a mapping of names to factories (or, for ``skedlib_executor_configs``,
to config Structs); every result is merged, and a name offered by two plugins is an
error that names both.

Use :func:`skedlib.get_registry` (a typed :class:`skedlib.Registry`) rather than calling
hooks directly: it validates what plugins return and names the plugin at fault.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import msgspec

    from skedlib.store.base import Backend

__all__ = [
    "BackendFactory",
    "hookimpl",
    "hookspec",
    "skedlib_backends",
    "skedlib_executor_configs",
    "skedlib_executors",
    "skedlib_health_providers",
    "skedlib_schedulers",
]

PROJECT = "skedlib"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

BackendFactory = Callable[[str], "Backend"]
"""Opens a backend from its URL; raises :class:`skedlib.BackendUnavailable`."""


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

    A factory is called with the agent's :class:`skedlib.ExecutorContext` and
    returns an :class:`skedlib.Executor`.
    """


@hookspec
def skedlib_executor_configs() -> Mapping[str, type[msgspec.Struct]]:  # type: ignore[empty-body]
    """Return executor names (a container's ``type``) mapped to the msgspec Struct that
    the container's ``executor`` blob decodes as, e.g. ``{"docker": DockerConfig}``.

    ``sked apply`` converts every container's blob with the Struct of its ``type`` and
    refuses the manifest with a one-line error naming the file, object and field; unknown
    fields of the blob warn. A ``type`` no installed plugin declares a Struct for passes
    unchecked (so a manifest can be applied from a machine that does not run that
    executor). The executor itself decodes its blob with the same Struct at start
    (:func:`skedlib.convert_blob`).

    Called once per registry, without creating any executor: keep the Struct in a module
    that imports nothing heavy. Every plugin's result is merged; a type declared twice is
    an error.
    """


@hookspec
def skedlib_health_providers() -> Mapping[str, Callable[..., Any]]:  # type: ignore[empty-body]
    """Return health provider names mapped to factories, each called with the agent's
    :class:`skedlib.HealthContext` and returning a :class:`skedlib.HealthProvider`.

    A backend may name the provider its agents use by default (Consul's agents register
    checks with the local Consul agent instead of checking locally).
    """


# -- scheduling ---------------------------------------------------------------------------
@hookspec
def skedlib_schedulers() -> Mapping[str, Callable[..., Any]]:  # type: ignore[empty-body]
    """Return scheduler names (a service's ``scheduler``) mapped to scheduler factories.

    A factory takes no arguments and returns a :class:`skedlib.Scheduler`.
    """
