"""The skedlib hook implementations that register ``consul://`` and the Consul health provider.

Named by the entry point ``[project.entry-points.skedlib] consul = "skedlib_consul.plugin"``.
The backend and provider modules (and with them requests and python-consul2) are
imported only when a URL is opened or a provider is made, so loading the registry stays
cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from skedlib import BackendFactory, hookimpl

if TYPE_CHECKING:
    from skedlib import HealthContext
    from skedlib_consul.backend import ConsulBackend
    from skedlib_consul.provider import ConsulHealthProvider

__all__ = ["make_health_provider", "open_consul_url", "skedlib_backends",
           "skedlib_health_providers"]


def open_consul_url(url: str) -> ConsulBackend:
    """Open a ``consul://`` URL (see :func:`skedlib_consul.backend.open_consul`)."""
    from skedlib_consul.backend import open_consul

    return open_consul(url)


def make_health_provider(context: HealthContext) -> ConsulHealthProvider:
    """The agent's ``consul`` health provider for ``context``.

    See :class:`skedlib_consul.provider.ConsulHealthProvider`; the Consul agent's
    address comes from ``context.options`` (``consul.url``, ``consul.token``,
    ``consul.timeout``), else an endpoint of the backend on this host, else
    ``$CONSUL_HTTP_ADDR``, else ``http://127.0.0.1:8500``
    (:func:`skedlib_consul.local_agent.agent_options`).
    """
    from skedlib_consul.provider import ConsulHealthProvider

    return ConsulHealthProvider(context)


@hookimpl
def skedlib_backends() -> Mapping[str, BackendFactory]:
    """``consul://host:port[,host:port...]``."""
    return {"consul": open_consul_url}


@hookimpl
def skedlib_health_providers() -> Mapping[str, Callable[..., Any]]:
    """``consul``: register tasks and their checks with the host's Consul agent."""
    return {"consul": make_health_provider}
