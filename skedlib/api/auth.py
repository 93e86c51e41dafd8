"""Who may call the API, in one place: :meth:`RequestGuard.check` passes or refuses every
routed request before its query, body or handler are looked at.

In order, a request is refused when

1. its ``Host`` header names neither the address the server listens on nor a name it was
   configured with (``--allowed-host``): a page whose name was re-pointed at this
   machine (DNS rebinding) sends its own name → 403;
2. it comes from a browser on another site: an ``Origin`` other than the server's own, or
   ``Sec-Fetch-Site`` other than ``same-origin`` or ``none`` → 403;
3. the route is not public (``ping``, the OpenAPI document) and ``Authorization: Bearer``
   carries neither the token nor the read-only token (compared in constant time) → 401;
   the read-only token on a route that writes (any method but ``GET``/``HEAD``) → 403;
4. it has a body whose ``Content-Type`` is not ``application/json`` (what a browser cannot
   send cross-site without asking first) → 415. (An empty body carries nothing; a route
   that needs one refuses it with 400.)

A refused request changes nothing: the handler never runs.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from collections.abc import Iterable, Mapping

from skedlib.api.errors import HttpError
from skedlib.api.routing import Route

__all__ = ["LOOPBACK_NAMES", "READ_METHODS", "RequestGuard"]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
"""Names a ``Host`` header may use for a server listening on loopback."""

READ_METHODS = frozenset({"GET", "HEAD"})
"""The methods of routes that only read: the read-only token may call them."""


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def split_host(value: str) -> tuple[str, int | None]:
    """A ``Host`` header (``name``, ``name:port``, ``[v6]:port``) → (lower-case name
    without brackets or trailing dot, port or None); raises ValueError."""
    value = value.strip()
    if value.startswith("["):
        name, close, rest = value[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise ValueError(value)
        port = rest[1:]
    elif value.count(":") == 1:
        name, _, port = value.partition(":")
    else:
        name, port = value, ""
    if not name or (port and not port.isdigit()) or (port and int(port) > 65535):
        raise ValueError(value)
    return name.lower().rstrip("."), int(port) if port else None


class RequestGuard:
    """The checks every request passes (see the module docstring).

    ``token``: the bearer token (required, non-empty). ``listen``: the (host, port) the
    server is bound to, which ``Host`` must name (with ``localhost``, ``127.0.0.1`` and
    ``[::1]`` alike for a loopback address; any IP address or this machine's name for
    every interface); None skips the ``Host`` check (an :class:`~skedlib.api.Api` used
    without HTTP). ``allowed_hosts``: more names accepted on any port (a reverse proxy's
    or a DNS name of this machine). ``default_port``: the port a ``Host`` without one
    means (80 for HTTP). ``read_token``: a second token that may only read (dashboards,
    monitoring): it passes ``GET`` and ``HEAD`` routes and gets 403 on the others.
    """

    def __init__(self, token: str, listen: tuple[str, int] | None = None,
                 allowed_hosts: Iterable[str] = (), default_port: int = 80,
                 read_token: str | None = None) -> None:
        if not token:
            raise ValueError("the API needs a non-empty bearer token")
        if read_token is not None and (not read_token or read_token == token):
            raise ValueError("the read-only token must be non-empty and differ from the "
                             "token")
        self._token = token.encode()
        self._read_token = read_token.encode() if read_token else None
        self.listen = listen
        self.allowed_hosts = frozenset(h.lower().rstrip(".") for h in allowed_hosts)
        self.default_port = default_port

    def check(self, route: Route, headers: Mapping[str, str], body: bytes) -> None:
        """Raise an :class:`HttpError` (403, 401 or 415) unless the request may reach
        ``route``; ``headers`` have lower-case names."""
        host = self._check_host(headers.get("host"))
        self._check_site(headers, host)
        if not route.public:
            self._check_token(headers.get("authorization", ""),
                              writes=route.method not in READ_METHODS)
        if body:
            media = headers.get("content-type", "").partition(";")[0].strip().lower()
            if media != "application/json":
                raise HttpError(415, f"header Content-Type: {media or 'missing'}; request "
                                     "bodies must be application/json")

    def check_page(self, headers: Mapping[str, str]) -> None:
        """Raise a 403 unless a page of the console may be served: the ``Host`` and
        cross-site checks of :meth:`check`, no token (the page holds no data; it asks
        for the token and sends it with each API call)."""
        self._check_site(headers, self._check_host(headers.get("host")))

    def _check_host(self, value: str | None) -> str | None:
        """The ``Host`` header if the server answers to it; raises a 403 otherwise."""
        if self.listen is None:
            return value
        if value is None:
            raise HttpError(403, "header Host: missing")
        try:
            name, port = split_host(value)
        except ValueError:
            raise HttpError(403, f"header Host: {value!r} is not HOST[:PORT]") from None
        if name in self.allowed_hosts or (
                (port or self.default_port) == self.listen[1] and self._names_us(name)):
            return value
        raise HttpError(403, f"header Host: {value!r} is not this server's address "
                             "(start it with --allowed-host NAME to accept a name)")

    def _names_us(self, name: str) -> bool:
        """True when ``name`` (from ``Host``) is the listen address or one equivalent."""
        listen = self.listen[0].lower() if self.listen else ""
        ip, listen_ip = _ip(name), _ip(listen)
        if name == listen or (ip is not None and ip == listen_ip):
            return True
        if (listen_ip is not None and listen_ip.is_loopback) or listen == "localhost":
            return name in LOOPBACK_NAMES or (ip is not None and ip.is_loopback)
        if (listen_ip is not None and listen_ip.is_unspecified) or not listen:
            # every interface: an IP address cannot have been re-pointed by DNS
            return ip is not None or name in LOOPBACK_NAMES or name in (
                socket.gethostname().lower(), socket.getfqdn().lower())
        return False

    def _check_site(self, headers: Mapping[str, str], host: str | None) -> None:
        origin = headers.get("origin")
        if origin is not None and (host is None or origin.rstrip("/").lower()
                                   not in (f"http://{host}".lower(),
                                           f"https://{host}".lower())):
            raise HttpError(403, f"header Origin: {origin!r}: cross-site requests are "
                                 "refused")
        site = headers.get("sec-fetch-site")
        if site is not None and site.lower() not in ("same-origin", "none"):
            raise HttpError(403, f"header Sec-Fetch-Site: {site!r}: cross-site requests "
                                 "are refused")

    def _check_token(self, authorization: str, writes: bool) -> None:
        scheme, _, given = authorization.partition(" ")
        presented = given.strip().encode() if scheme.lower() == "bearer" else b""
        # both comparisons always run, so the time taken says nothing about which matched
        admin = hmac.compare_digest(presented, self._token)
        reader = self._read_token is not None and hmac.compare_digest(presented,
                                                                      self._read_token)
        if admin:
            return
        if reader:
            if writes:
                raise HttpError(403, "this token may only read (GET); changes need the "
                                     "API's full token")
            return
        raise HttpError(401, "missing or wrong bearer token: send 'Authorization: "
                             "Bearer <token>'", {"WWW-Authenticate": "Bearer"})
