"""skedlib-etcd: the ``etcd://`` storage backend for skedlib, as a plugin.

Installing the package registers the backend through the ``skedlib`` entry-point group,
so ``skedlib.plugins.open_backend("etcd://10.0.0.1:2379,10.0.0.2:2379")`` works. The
backend itself is :class:`skedlib_etcd.backend.EtcdBackend`; see ``docs/backends/etcd.md``.
"""

from __future__ import annotations

__all__ = ["EtcdBackend", "EtcdOptions", "open_etcd", "parse_url"]

__version__ = "0.1.0"

from skedlib_etcd.backend import EtcdBackend, EtcdOptions, open_etcd, parse_url
