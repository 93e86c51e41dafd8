"""skedlib-etcd: the ``etcd://`` storage backend for skedlib, as a plugin.

Installing the package registers the backend through the ``skedlib`` entry-point group,
so ``skedlib.plugins.open_backend("etcd://10.0.0.1:2379,10.0.0.2:2379")`` works. The
backend itself is :class:`skedlib_etcd.backend.EtcdBackend`; see ``docs/backends/etcd.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from skedlib import lazy_attributes

__all__ = ["EtcdBackend", "EtcdOptions", "open_etcd", "parse_url"]

__version__ = "0.1.0"

if TYPE_CHECKING:
    from skedlib_etcd.backend import EtcdBackend, EtcdOptions, open_etcd, parse_url

# imported on first use: registering the plugin must not load its client library
__getattr__ = lazy_attributes(__name__, {
    "EtcdBackend": "skedlib_etcd.backend",
    "EtcdOptions": "skedlib_etcd.backend",
    "open_etcd": "skedlib_etcd.backend",
    "parse_url": "skedlib_etcd.backend",
})
