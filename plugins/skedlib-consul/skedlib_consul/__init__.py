"""skedlib-consul: the ``consul://`` storage backend and the Consul health provider.

Installing the package registers both through the ``skedlib`` entry-point group, so
``skedlib.plugins.open_backend("consul://10.0.0.1:8500,10.0.0.2:8500")`` works and
``get_registry().health_provider_factory("consul")`` returns the provider factory.

- :class:`skedlib_consul.backend.ConsulBackend` (``open_consul(url)``): the storage
  contract on Consul's KV store; see ``docs/backends/consul.md``.
- :class:`skedlib_consul.health.ConsulHealthProvider`: registers a task as a service with
  its checks on the host's Consul agent and reads its health back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from skedlib.plugins import lazy_attributes

__all__ = [
    "ConsulBackend",
    "ConsulHealthProvider",
    "ConsulOptions",
    "open_consul",
    "parse_url",
]

__version__ = "0.1.0"

if TYPE_CHECKING:
    from skedlib_consul.backend import ConsulBackend, ConsulOptions, open_consul, parse_url
    from skedlib_consul.health import ConsulHealthProvider

# imported on first use: registering the plugin must not load its client library
__getattr__ = lazy_attributes(__name__, {
    "ConsulBackend": "skedlib_consul.backend",
    "ConsulHealthProvider": "skedlib_consul.health",
    "ConsulOptions": "skedlib_consul.backend",
    "open_consul": "skedlib_consul.backend",
    "parse_url": "skedlib_consul.backend",
})
