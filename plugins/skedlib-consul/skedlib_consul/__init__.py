"""skedlib-consul: the ``consul://`` storage backend and the Consul health provider.

Installing the package registers both through the ``skedlib`` entry-point group
(:mod:`skedlib_consul.plugin`), so
``skedlib.plugins.open_backend("consul://10.0.0.1:8500,10.0.0.2:8500")`` works and
``get_registry().health_provider_factory("consul")`` returns the provider factory.

Modules, from the wire up:

- :mod:`~skedlib_consul.options`: :class:`ConsulOptions` from a ``consul://`` URL
  (:func:`parse_url`) or a Consul agent's address;
- :mod:`~skedlib_consul.client`: the one HTTP client under everything (timeouts,
  failover, TLS, the ACL token, errors translated into :mod:`skedlib.errors`);
- :mod:`~skedlib_consul.backend` and :mod:`~skedlib_consul.watch`:
  :class:`ConsulBackend` (``open_consul(url)``), the storage contract on Consul's KV
  store, sessions and blocking queries; see ``docs/backends/consul.md``;
- :mod:`~skedlib_consul.checks`: skedlib's checks as Consul check definitions;
- :mod:`~skedlib_consul.agent_client`: :class:`ConsulAgentClient`, which registers a
  task as a service with its checks on a Consul agent and reads its health back;
- :mod:`~skedlib_consul.provider`, :mod:`~skedlib_consul.states` and
  :mod:`~skedlib_consul.local_agent`: :class:`ConsulHealthProvider`, the skedlib agent's
  health provider ``consul``, built on that client;
- :mod:`~skedlib_consul.catalog`: how its registrations are marked, kept alive (a
  liveness TTL check), named, and swept when their task is no longer issued to their host
  (:class:`~skedlib_consul.catalog.CatalogCleaner` for dead nodes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from skedlib import lazy_attributes

__all__ = [
    "ConsulAgentClient",
    "ConsulBackend",
    "ConsulHealthProvider",
    "ConsulOptions",
    "open_consul",
    "parse_url",
]

__version__ = "0.1.0"

if TYPE_CHECKING:
    from skedlib_consul.agent_client import ConsulAgentClient
    from skedlib_consul.backend import ConsulBackend, open_consul
    from skedlib_consul.options import ConsulOptions, parse_url
    from skedlib_consul.provider import ConsulHealthProvider

# imported on first use: registering the plugin must not load its client library
__getattr__ = lazy_attributes(__name__, {
    "ConsulAgentClient": "skedlib_consul.agent_client",
    "ConsulBackend": "skedlib_consul.backend",
    "ConsulHealthProvider": "skedlib_consul.provider",
    "ConsulOptions": "skedlib_consul.options",
    "open_consul": "skedlib_consul.backend",
    "parse_url": "skedlib_consul.options",
})
