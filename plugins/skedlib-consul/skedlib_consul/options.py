"""Where Consul is and how to talk to it: :class:`ConsulOptions` from a URL.

Two kinds of address lead to the same options:

- a backend URL, ``consul://HOST[:PORT][,HOST[:PORT]...][?dc=DC&token_file=F&timeout=5&
  scheme=https&ca=F&cert=F&key=F]`` (:func:`parse_url`): ``PORT`` defaults to 8500,
  ``token`` to the file named by ``token_file``, else ``$CONSUL_HTTP_TOKEN``, else the
  file named by ``$CONSUL_HTTP_TOKEN_FILE`` (a token file every user may read is
  refused; a token written in the URL works but is warned about once); ``scheme=https``
  talks TLS, verified against ``ca`` (a PEM bundle; default: the system store), with an
  optional client certificate ``cert``/``key`` (``ca`` or ``cert`` imply https). Unknown
  options are refused and the TLS files are loaded at once, so a wrong one is named;
- the address of one Consul agent, ``http://HOST:PORT``, ``https://HOST:PORT`` or a
  ``consul://`` URL naming one endpoint (:func:`agent_url_options`), as the health
  provider and :class:`~skedlib_consul.agent_client.ConsulAgentClient` take it.

Errors are :class:`~skedlib.errors.BackendUnavailable`, one line, with the URL's token
replaced by ``***`` (:func:`redact_url`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import ssl
import urllib.parse
from dataclasses import dataclass, field
from typing import Literal

from skedlib import BackendUnavailable, read_secret_file, warn_secret_in_url

__all__ = [
    "DEFAULT_AGENT",
    "DEFAULT_PORT",
    "DEFAULT_TIMEOUT",
    "ConsulOptions",
    "agent_url_options",
    "parse_url",
    "redact_url",
]

DEFAULT_PORT = 8500
DEFAULT_TIMEOUT = 5.0
#: the Consul agent of this host when nothing else names one
DEFAULT_AGENT = "http://127.0.0.1:8500"
_QUERY_KEYS = ("dc", "token", "token_file", "timeout", "scheme", "ca", "cert", "key")


@dataclass(frozen=True)
class ConsulOptions:
    """What a ``consul://`` URL says: endpoints, datacenter, token, timeout, TLS files."""

    endpoints: tuple[tuple[str, int], ...]
    dc: str | None = None
    token: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT
    scheme: Literal["http", "https"] = "http"
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def endpoint_text(self, index: int) -> str:
        """``host:port`` of one endpoint (IPv6 hosts in brackets)."""
        host, port = self.endpoints[index]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def base_url(self, index: int) -> str:
        """``scheme://host:port`` of one endpoint."""
        return f"{self.scheme}://{self.endpoint_text(index)}"

    def overridden(self, *, token: str | None = None,
                   timeout: float | None = None) -> ConsulOptions:
        """These options with ``token`` and ``timeout`` replaced where they are given."""
        if token is None and timeout is None:
            return self
        return dataclasses.replace(self, token=token if token is not None else self.token,
                                   timeout=timeout if timeout is not None else self.timeout)

    def one_agent(self, index: int = 0, *, token: str | None = None,
                  timeout: float | None = None) -> ConsulOptions:
        """The options for the agent at endpoint ``index`` alone, addressing its own
        datacenter (no ``dc``), with ``token`` and ``timeout`` replaced where given."""
        return dataclasses.replace(self, endpoints=(self.endpoints[index],), dc=None
                                   ).overridden(token=token, timeout=timeout)


def redact_url(url: str) -> str:
    """``url`` with the value of a ``token`` query parameter replaced by ``***``."""
    return re.sub(r"(?i)([?&]token=)[^&#]*", r"\1***", url)


def parse_url(url: str) -> ConsulOptions:
    """Parse ``consul://host:port[,host:port…][?options]``; raises BackendUnavailable."""
    shown = redact_url(url)
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:  # e.g. an unbalanced IPv6 bracket
        raise BackendUnavailable(f"{shown}: not a valid URL: {exc}") from exc
    if parts.scheme.lower() != "consul":
        raise BackendUnavailable(f"{shown}: not a consul:// URL")
    if parts.path not in ("", "/") or parts.fragment:
        raise BackendUnavailable(f"{shown}: a consul:// URL has no path (expected "
                                 "consul://host:port[,host:port...][?options])")
    endpoints: list[tuple[str, int]] = []
    for item in parts.netloc.split(","):
        item = item.strip()
        if not item:
            continue
        m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\[\]@/]+)(?::(\d+))?", item)
        if m is None:
            raise BackendUnavailable(f"{shown}: bad endpoint {item!r} (expected host:port)")
        host = m.group(1) or m.group(3)
        port = int(m.group(2) or m.group(4) or DEFAULT_PORT)
        if not 0 < port < 65536:
            raise BackendUnavailable(f"{shown}: bad port in {item!r}")
        endpoints.append((host, port))
    if not endpoints:
        raise BackendUnavailable(f"{shown}: no endpoint (expected consul://host:port)")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - set(_QUERY_KEYS))
    if unknown:
        raise BackendUnavailable(f"{shown}: unknown option(s) {', '.join(unknown)} "
                                 f"(known: {', '.join(_QUERY_KEYS)})")

    def one(name: str) -> str | None:
        values = query.get(name)
        return values[-1] if values else None

    try:
        timeout = float(one("timeout") or DEFAULT_TIMEOUT)
    except ValueError:
        raise BackendUnavailable(f"{shown}: timeout must be a number of seconds") from None
    if not 0 < timeout <= 3600:
        raise BackendUnavailable(f"{shown}: timeout must be between 0 and 3600 seconds")
    scheme = (one("scheme") or "http").lower()
    if scheme not in ("http", "https"):
        raise BackendUnavailable(f"{shown}: scheme must be http or https, not {scheme!r}")
    ca, cert, key = one("ca") or None, one("cert") or None, one("key") or None
    for name, path in (("ca", ca), ("cert", cert), ("key", key)):
        if path is not None and not os.path.isfile(path):
            raise BackendUnavailable(f"{shown}: {name} file {path!r} does not exist")
    if key is not None and cert is None:
        raise BackendUnavailable(f"{shown}: key= needs cert= (the client certificate)")
    _check_tls_files(shown, ca, cert, key)
    if (ca or cert) and scheme == "http" and one("scheme") is None:
        scheme = "https"  # TLS files imply TLS
    token = _token(shown, one("token") or None, one("token_file") or None)
    return ConsulOptions(endpoints=tuple(endpoints), dc=one("dc") or None, token=token,
                         timeout=timeout, scheme="https" if scheme == "https" else "http",
                         ca=ca, cert=cert, key=key)


def _token(shown: str, in_url: str | None, token_file: str | None) -> str | None:
    """The ACL token: ``token=``, ``token_file=``, ``$CONSUL_HTTP_TOKEN`` or the file named
    by ``$CONSUL_HTTP_TOKEN_FILE``, in that order (the token never needs to be on a
    command line, which every local user can read)."""
    if in_url is not None and token_file is not None:
        raise BackendUnavailable(f"{shown}: give token or token_file, not both")
    if in_url is not None:
        warn_secret_in_url(shown, "the ACL token",
                           "$CONSUL_HTTP_TOKEN or a file named by token_file=")
        return in_url
    if token_file is not None:
        return read_secret_file(shown, "token file", token_file).strip() or None
    from_env = os.environ.get("CONSUL_HTTP_TOKEN") or None
    env_file = os.environ.get("CONSUL_HTTP_TOKEN_FILE") or None
    if from_env is None and env_file is not None:
        return read_secret_file(shown, "token file ($CONSUL_HTTP_TOKEN_FILE)",
                                env_file).strip() or None
    return from_env


def _check_tls_files(shown: str, ca: str | None, cert: str | None, key: str | None) -> None:
    """Load the TLS files now, so that a wrong one is named (not "PEM lib" at connect)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            raise BackendUnavailable(f"{shown}: the ca file {ca!r} holds no PEM "
                                     f"certificate ({exc})") from exc
    if cert is not None:
        try:  # a key protected by a password fails here instead of prompting for it
            context.load_cert_chain(cert, key, password=lambda: b"")
        except (ssl.SSLError, OSError) as exc:
            mismatch = getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH"
            files = f"the cert file {cert!r}" + (f" and the key file {key!r}" if key else
                                                " (no key=: it must hold the key too)")
            why = "the key does not match the certificate" if mismatch else \
                "not a PEM certificate and unencrypted key"
            raise BackendUnavailable(f"{shown}: cannot use {files}: {why}") from exc


def agent_url_options(agent_url: str, token: str | None = None,
                      timeout: float | None = None) -> ConsulOptions:
    """The options for one Consul agent at ``agent_url``; raises BackendUnavailable.

    ``agent_url`` is ``http://HOST[:PORT]`` (port 8500 by default), ``https://HOST[:PORT]``
    (443), ``HOST:PORT`` (http), or a ``consul://`` URL naming exactly one endpoint (with
    its options). Without a ``consul://`` URL the token is ``$CONSUL_HTTP_TOKEN``;
    ``token`` and ``timeout``, when given, override what the URL says.
    """
    url = agent_url if "://" in agent_url else f"http://{agent_url}"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "consul":
        opts = parse_url(url)
        if len(opts.endpoints) != 1:
            raise BackendUnavailable(f"{redact_url(url)}: name exactly one Consul agent")
    elif parts.scheme in ("http", "https"):
        if parts.path not in ("", "/") or parts.query:
            raise BackendUnavailable(f"{redact_url(url)}: expected http(s)://host:port")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 8500)
        except ValueError:
            raise BackendUnavailable(f"{redact_url(url)}: bad port") from None
        if not parts.hostname:
            raise BackendUnavailable(f"{redact_url(url)}: no host")
        opts = ConsulOptions(endpoints=((parts.hostname, port),),
                             token=_token(redact_url(url), None, None),
                             scheme="https" if parts.scheme == "https" else "http")
    else:
        raise BackendUnavailable(f"{redact_url(url)}: a Consul agent address is "
                                 "http://host:port, https://host:port or consul://host:port")
    return opts.overridden(token=token, timeout=timeout)
