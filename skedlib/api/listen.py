"""Where ``sked serve`` listens: its default address, parsing ``HOST:PORT``, and whether a
host is loopback only (imported by the programs that only need these, without the API
server)."""

from __future__ import annotations

import ipaddress
import socket

from skedlib.errors import ValidationError

__all__ = ["DEFAULT_LISTEN", "is_loopback", "parse_listen"]

DEFAULT_LISTEN = "127.0.0.1:2000"
"""``sked serve``'s default address: loopback only."""


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:2000`` for IPv6, ``:2000`` for every interface) → (host,
    port); raises :class:`ValidationError`."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValidationError(f"--listen {text!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address ("" is every
    interface: not loopback)."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback
                               for i in infos)
