"""The skedlib hook implementation that registers ``etcd://`` and ``etcds://``.

Named by the entry point ``[project.entry-points.skedlib] etcd = "skedlib_etcd.plugin"``.
The backend module (and with it grpc and protobuf) is imported only when a URL is opened,
so loading the registry stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from skedlib import BackendFactory, hookimpl

if TYPE_CHECKING:
    from skedlib_etcd.backend import EtcdBackend

__all__ = ["open_etcd_url", "skedlib_backends"]


def open_etcd_url(url: str) -> EtcdBackend:
    """Open an ``etcd://`` or ``etcds://`` URL (see :func:`skedlib_etcd.backend.open_etcd`)."""
    from skedlib_etcd.backend import open_etcd

    return open_etcd(url)


@hookimpl
def skedlib_backends() -> Mapping[str, BackendFactory]:
    """``etcd://host:port[,host:port...]`` and its TLS form ``etcds://``."""
    return {"etcd": open_etcd_url, "etcds": open_etcd_url}
