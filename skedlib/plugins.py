"""The plugin registry: a typed layer over pluggy.

Start-up is three steps: add the hookspecs, register the built-in plugins from one
tuple, then load the ``skedlib`` entry points. Built-ins register exactly as third-party
plugins do. Lookups validate what plugins return and name the plugin at fault.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pluggy

from skedlib import hookspecs
from skedlib.errors import BackendUnavailable, PluginError
from skedlib.store.base import Backend

__all__ = [
    "BUILTIN_PLUGINS",
    "FIRST_PARTY_PLUGINS",
    "Registry",
    "default_backend_url",
    "get_registry",
    "install_hint",
    "lazy_attributes",
    "open_backend",
    "plugin_distributions",
]

#: modules that register skedlib's own pieces, loaded before any entry point
BUILTIN_PLUGINS: tuple[str, ...] = ("skedlib.builtin",)


class Registry:
    """Names → factories for backends, executors, schedulers and health providers, and
    executor names → the config Struct of their blob."""

    def __init__(self, *, load_entrypoints: bool = True,
                 plugins: tuple[object, ...] = ()) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        for name in BUILTIN_PLUGINS:
            self.pm.register(importlib.import_module(name), name=name)
        for plugin in plugins:
            self.pm.register(plugin)
        if load_entrypoints:
            try:
                self.pm.load_setuptools_entrypoints(hookspecs.PROJECT)
            except Exception as exc:  # an entry point that fails to import
                raise PluginError(f"loading a 'skedlib' entry point failed: {exc}") from exc
        self._cache: dict[str, dict[str, Callable[..., Any]]] = {}
        #: hook name → offered name → the name of the plugin that offers it
        self._owners: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register one more plugin (a module or object with ``@hookimpl`` functions)."""
        self.pm.register(plugin, name=name)
        with self._lock:
            self._cache.clear()

    def unregister(self, plugin: object) -> None:
        """Remove a plugin registered earlier (what it offered is no longer found)."""
        self.pm.unregister(plugin)
        with self._lock:
            self._cache.clear()

    def _collect(self, hook_name: str) -> dict[str, Callable[..., Any]]:
        with self._lock:
            cached = self._cache.get(hook_name)
            if cached is not None:
                return cached
            merged: dict[str, Callable[..., Any]] = {}
            owner: dict[str, str] = {}
            hook = getattr(self.pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                plugin_name = self.pm.get_name(impl.plugin) or repr(impl.plugin)
                result = impl.function()
                if result is None:
                    continue
                if not isinstance(result, Mapping):
                    raise PluginError(f"plugin {plugin_name!r}: {hook_name}() returned "
                                      f"{type(result).__name__}, expected a mapping")
                for name, factory in result.items():
                    if not isinstance(name, str) or not callable(factory):
                        raise PluginError(f"plugin {plugin_name!r}: {hook_name}() entry "
                                          f"{name!r} must map a name to a callable")
                    if name in merged:
                        raise PluginError(f"{hook_name}: {name!r} is offered by both "
                                          f"{owner[name]!r} and {plugin_name!r}")
                    merged[name] = factory
                    owner[name] = plugin_name
            self._cache[hook_name] = merged
            self._owners[hook_name] = owner
            return merged

    def names(self, kind: str) -> list[str]:
        """Sorted names offered for ``kind``: backends, executors, executor_configs,
        schedulers, health_providers."""
        return sorted(self._collect(f"skedlib_{kind}"))

    def _factory(self, kind: str, name: str) -> Callable[..., Any]:
        factories = self._collect(f"skedlib_{kind}")
        try:
            return factories[name]
        except KeyError:
            known = ", ".join(sorted(factories)) or "none"
            singular = kind.rstrip("s").replace("_", " ")
            hint = install_hint(kind, name)
            raise PluginError(f"no {singular} named {name!r} is installed (installed: "
                              f"{known}){'; ' + hint if hint else ''}") from None

    def open_backend(self, url: str) -> Backend:
        """Open the backend for ``url``, chosen by its scheme."""
        try:
            scheme = urlsplit(url).scheme
        except ValueError as exc:  # e.g. an unclosed [ of an IPv6 address
            raise BackendUnavailable(f"{url!r}: not a valid URL: {exc}") from None
        if not scheme:
            raise BackendUnavailable(f"{url!r}: not a backend URL (expected e.g. "
                                     "sqlite:///path/to/file.db, etcd://host:2379)")
        factory = self._factory("backends", scheme)
        backend = factory(url)
        if not isinstance(backend, Backend):
            raise PluginError(f"backend factory for {scheme!r} returned "
                              f"{type(backend).__name__}, not a skedlib Backend")
        return backend

    def executor_factory(self, name: str) -> Callable[..., Any]:
        """The factory of the executor called ``name``."""
        return self._factory("executors", name)

    def executor_config(self, name: str) -> type[msgspec.Struct] | None:
        """The Struct the blob of an executor called ``name`` decodes as, or None when no
        installed plugin declares one (such blobs pass unchecked)."""
        configs = self._collect("skedlib_executor_configs")
        config = configs.get(name)
        if config is None:
            return None
        if not (isinstance(config, type) and issubclass(config, msgspec.Struct)):
            with self._lock:
                plugin = self._owners["skedlib_executor_configs"].get(name, "?")
            raise PluginError(f"plugin {plugin!r}: skedlib_executor_configs() entry "
                              f"{name!r} is {config!r}, not a msgspec.Struct subclass")
        return config

    def scheduler_factory(self, name: str) -> Callable[..., Any]:
        """The factory of the scheduler called ``name``."""
        return self._factory("schedulers", name)

    def health_provider_factory(self, name: str) -> Callable[..., Any]:
        """The factory of the health provider called ``name``."""
        return self._factory("health_providers", name)


@functools.cache
def get_registry() -> Registry:
    """The process-wide registry: built-ins plus every installed ``skedlib`` entry point."""
    return Registry()


FIRST_PARTY_PLUGINS: Mapping[tuple[str, str], str] = {
    ("backends", "etcd"): "etcd",
    ("backends", "etcds"): "etcd",
    ("backends", "consul"): "consul",
    ("health_providers", "consul"): "consul",
    ("executors", "docker"): "docker",
    ("schedulers", "binpack"): "",
    ("schedulers", "spread"): "",
    ("schedulers", "daemon"): "",
}
"""(hook kind, name) → the extra of skedlib that installs the first-party plugin registering
it (``pip install 'skedlib[etcd]'`` installs skedlib-etcd), or "" for a plugin that ships
inside skedlib itself (the reference schedulers); named in the error when it is missing."""


def install_hint(kind: str, name: str) -> str:
    """What to install to get the first-party plugin that offers ``name`` for ``kind``
    (backends, executors, schedulers, health_providers), or "" for any other name."""
    extra = FIRST_PARTY_PLUGINS.get((kind, name))
    if extra is None:
        return ""
    if extra:
        return f"pip install 'skedlib[{extra}]'"
    # it ships in skedlib's wheel: only a broken or partial install lacks it
    return ("it ships with skedlib (entry point 'reference' of the 'skedlib' group): "
            "reinstall skedlib")


def plugin_distributions() -> list[tuple[str, str, list[str]]]:
    """Each installed distribution with entry points in the ``skedlib`` group: its name,
    version and entry-point names, sorted by name."""
    found: dict[str, tuple[str, list[str]]] = {}
    for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT):
        dist = ep.dist
        name, version = (dist.name, dist.version) if dist is not None else (ep.module, "?")
        found.setdefault(name, (version, []))[1].append(ep.name)
    return [(name, version, sorted(eps)) for name, (version, eps) in sorted(found.items())]

def default_backend_url() -> str:
    """``$SKED_BACKEND``, else the embedded store in ``$XDG_DATA_HOME/skedlib/sked.db``
    (``~/.local/share/skedlib/sked.db``)."""
    url = os.environ.get("SKED_BACKEND")
    if url:
        return url
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite://{Path(data) / 'skedlib' / 'sked.db'}"


def open_backend(url: str) -> Backend:
    """Open a backend by URL through the process-wide registry."""
    return get_registry().open_backend(url)


def lazy_attributes(package: str, names: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` (PEP 562) that imports each of ``names`` (name → module)
    on first use.

    Plugin packages use it so that registering them — which every skedlib process does
    through the entry point — does not import their client libraries (grpc, requests,
    the docker SDK) in processes that never use them::

        __getattr__ = lazy_attributes(__name__, {"EtcdBackend": "skedlib_etcd.backend"})
    """

    def __getattr__(name: str) -> object:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
