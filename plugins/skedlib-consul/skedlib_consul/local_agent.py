"""Which Consul agent the health provider registers with: the one on this host.

Services and checks belong to the Consul agent they are registered with: it runs the
checks (an ``http://127.0.0.1:$PROVIDED_PORT/`` check runs on *its* host) and the
catalog places the service on its node. So :func:`agent_options` picks, from the
provider's options (``HealthContext.options``, i.e. ``AgentConfig.health_options``,
e.g. ``{"consul.url": "http://127.0.0.1:8500"}``; the ``consul.`` prefix is optional:
``url`` (also ``agent``) the Consul agent of this host, ``token``, ``timeout`` in
seconds per call, default 5; any other key is a :class:`~skedlib.errors.PluginError`),
else the first endpoint of the skedlib agent's own ``consul://`` backend that is on this
host (:func:`on_this_host`: a loopback address or one of the machine's own; with its
token, timeout and TLS settings), else ``$CONSUL_HTTP_ADDR``, else
``http://127.0.0.1:8500``: never a server elsewhere.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket

from skedlib import BackendUnavailable, HealthContext, PluginError
from skedlib_consul.backend import ConsulBackend
from skedlib_consul.catalog import Naming, RegistrationSettings
from skedlib_consul.options import DEFAULT_AGENT, ConsulOptions, agent_url_options

__all__ = ["agent_options", "on_this_host", "registration_settings"]

log = logging.getLogger(__name__)

_OPTION_NAMES = {"url": "url", "agent": "url", "token": "token", "timeout": "timeout"}
#: options of how tasks are registered (:func:`registration_settings`)
_SETTING_NAMES = ("naming", "liveness_ttl", "clean_interval", "catalog_cleaner", "address")
_KNOWN = "consul.url, consul.token, consul.timeout, " + ", ".join(
    f"consul.{n}" for n in _SETTING_NAMES)


def _bare(key: str) -> str:
    return key[len("consul."):] if key.startswith("consul.") else key


def _seconds(key: str, raw: str, low: float, high: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not low <= value <= high:
        raise PluginError(f"health provider consul: {key} must be a number of seconds "
                          f"between {low:g} and {high:g}, not {raw!r}")
    return value


def registration_settings(ctx: HealthContext) -> RegistrationSettings:
    """How tasks are registered, from ``ctx.options`` (the ``consul.`` prefix optional):

    ``consul.naming`` ``service`` (default: Name = the service, Tags = the definition's
    tags) or ``original`` (Name ``<cluster>-<service>``, Tags + cluster + service,
    Address = the host's); ``consul.liveness_ttl`` the TTL of each registration's
    liveness check (default 15, 3 to 3600 s); ``consul.clean_interval`` how often stale
    registrations are looked for (default 10, 1 to 3600 s); ``consul.catalog_cleaner``
    ``true``/``false`` (default true: stand for election as the cleaner of dead nodes'
    entries); ``consul.address`` the address advertised with the ``original`` naming.
    Raises :class:`~skedlib.errors.PluginError` for a bad value.
    """
    given = {_bare(k): (k, v) for k, v in ctx.options.items()}
    defaults = RegistrationSettings()
    naming_style: Naming = defaults.naming
    if "naming" in given:
        key, raw = given["naming"]
        if raw not in ("service", "original"):
            raise PluginError(f"health provider consul: {key} must be 'service' or "
                              f"'original', not {raw!r}")
        naming_style = "original" if raw == "original" else "service"
    ttl = _seconds(*given["liveness_ttl"], 3.0, 3600.0) if "liveness_ttl" in given \
        else defaults.liveness_ttl
    interval = _seconds(*given["clean_interval"], 1.0, 3600.0) \
        if "clean_interval" in given else defaults.clean_interval
    cleaner = defaults.catalog_cleaner
    if "catalog_cleaner" in given:
        key, raw = given["catalog_cleaner"]
        if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise PluginError(f"health provider consul: {key} must be true or false, "
                              f"not {raw!r}")
        cleaner = raw.lower() in ("true", "1", "yes")
    address = given["address"][1] if "address" in given else ""
    return RegistrationSettings(naming=naming_style, liveness_ttl=ttl,
                                clean_interval=interval, catalog_cleaner=cleaner,
                                address=address)


def on_this_host(host: str) -> bool:
    """True when ``host`` is an address of this machine: ``localhost``, this machine's
    host name, a loopback address, or an IP address a socket can bind here (no DNS)."""
    if host.lower() in ("localhost", "localhost.localdomain", socket.gethostname().lower()):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # another name: finding out would need DNS, which has no timeout
    if ip.is_loopback:
        return True
    if ip.is_unspecified:
        return False
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))  # fails (EADDRNOTAVAIL) for an address of another machine
    except OSError:
        return False
    return True


def agent_options(ctx: HealthContext) -> ConsulOptions:
    """Where :class:`~skedlib_consul.provider.ConsulHealthProvider` finds the Consul agent
    of this host.

    Services and checks belong to the Consul agent they are registered with (it runs the
    checks, and the catalog places the service on its node), so this must be the agent
    on the host where the tasks run. From ``ctx.options`` (``consul.url`` or ``url``, also
    ``consul.agent``; ``consul.token``; ``consul.timeout``), else the first endpoint of
    ``ctx.backend`` that is on this host (:func:`on_this_host`) when it is a Consul
    backend (with its token, timeout and TLS files), else ``$CONSUL_HTTP_ADDR``, else
    ``http://127.0.0.1:8500`` (with a Consul backend's token and timeout). A Consul
    backend's servers elsewhere are never used: a service registered there would run its
    checks, and be advertised, on that server's node. Raises
    :class:`~skedlib.errors.PluginError` for an unknown option or a bad value.
    """
    given: dict[str, str] = {}
    for key, value in ctx.options.items():
        bare = _bare(key)
        if bare in _SETTING_NAMES:
            continue  # read by registration_settings
        if bare not in _OPTION_NAMES:
            raise PluginError(f"health provider consul: unknown option {key!r} (known: "
                              f"{_KNOWN})")
        given[_OPTION_NAMES[bare]] = value
    timeout: float | None = None
    if "timeout" in given:
        try:
            timeout = float(given["timeout"])
        except ValueError:
            timeout = -1.0
        if not 0 < timeout <= 3600:
            raise PluginError(f"health provider consul: timeout must be a number of seconds "
                              f"between 0 and 3600, not {given['timeout']!r}")
    token = given.get("token") or None
    try:
        if given.get("url"):
            return agent_url_options(given["url"], token, timeout)
        if isinstance(ctx.backend, ConsulBackend):
            o = ctx.backend.options
            local = [i for i, (host, _port) in enumerate(o.endpoints) if on_this_host(host)]
            if local:
                return o.one_agent(local[0], token=token, timeout=timeout)
            if token is None:
                token = o.token
            if timeout is None:
                timeout = o.timeout
            log.info("consul health provider: no endpoint of the backend %s is on this host; "
                     "using the Consul agent at %s (set consul.url to choose another)",
                     ctx.backend.url, os.environ.get("CONSUL_HTTP_ADDR") or DEFAULT_AGENT)
        return agent_url_options(os.environ.get("CONSUL_HTTP_ADDR") or DEFAULT_AGENT, token,
                                 timeout)
    except BackendUnavailable as exc:
        raise PluginError(f"health provider consul: {exc}") from exc
