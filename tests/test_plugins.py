"""The plugin registry: backends chosen by URL scheme, executor configs by type, extended by
plugins like built-ins."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest

from skedlib.errors import BackendUnavailable, PluginError
from skedlib.hookspecs import BackendFactory, hookimpl
from skedlib.models import BashExecutor, ProcessExecutor
from skedlib.plugins import Registry
from skedlib.store.memory import MemoryBackend


class ToyBackend(MemoryBackend):
    """A third party's backend (here: the memory store under another scheme)."""


class ToyPlugin:
    @hookimpl
    def skedlib_backends(self) -> Mapping[str, BackendFactory]:
        return {"toy": ToyBackend}


def test_a_plugin_adds_a_backend_scheme() -> None:
    registry = Registry(load_entrypoints=False, plugins=(ToyPlugin(),))
    assert {"memory", "sqlite", "toy"} <= set(registry.names("backends"))
    backend = registry.open_backend("toy://anything")
    assert isinstance(backend, ToyBackend) and backend.url == "toy://anything"
    backend.put("k", b"v")
    kv = backend.get("k")
    assert kv is not None and kv.value == b"v"


def test_registering_later_clears_the_cache() -> None:
    registry = Registry(load_entrypoints=False)
    assert "toy" not in registry.names("backends")
    registry.register(ToyPlugin(), name="toy-plugin")
    assert isinstance(registry.open_backend("toy://"), ToyBackend)


def test_a_scheme_offered_twice_names_both_plugins() -> None:
    class Clash:
        @hookimpl
        def skedlib_backends(self) -> Mapping[str, BackendFactory]:
            return {"memory": MemoryBackend}

    registry = Registry(load_entrypoints=False)
    registry.register(Clash(), name="clash")
    with pytest.raises(PluginError, match=r"'memory' is offered by both 'skedlib\.builtin' "
                                          r"and 'clash'"):
        registry.open_backend("memory://")


@pytest.mark.parametrize(("result", "message"), [
    ({"bad": lambda url: object()}, "backend factory for 'bad' returned object"),
    (["bad"], r"skedlib_backends\(\) returned list, expected a mapping"),
    ({"bad": "not callable"}, "entry 'bad' must map a name to a callable"),
])
def test_a_misbehaving_plugin_is_named(result: Any, message: str) -> None:
    class Bad:
        @hookimpl
        def skedlib_backends(self) -> Any:
            return result

    registry = Registry(load_entrypoints=False)
    registry.register(Bad(), name="bad-plugin")
    with pytest.raises(PluginError, match=message):
        registry.open_backend("bad://x")


def test_unknown_scheme_lists_the_installed_ones() -> None:
    registry = Registry(load_entrypoints=False)
    with pytest.raises(PluginError, match=r"no backend named 'nosuch' is installed "
                                          r"\(installed: memory, sqlite\)"):
        registry.open_backend("nosuch://x")
    with pytest.raises(BackendUnavailable, match="not a backend URL"):
        registry.open_backend("/just/a/path.db")
    with pytest.raises(BackendUnavailable, match=r"'etcd://\[::1': not a valid URL"):
        registry.open_backend("etcd://[::1")


class ToyConfig(msgspec.Struct):
    url: str


def test_executors_declare_their_config_struct() -> None:
    class Toy:
        @hookimpl
        def skedlib_executor_configs(self) -> Mapping[str, type[msgspec.Struct]]:
            return {"toy": ToyConfig}

    registry = Registry(load_entrypoints=False, plugins=(Toy(),))
    assert registry.executor_config("bash") is BashExecutor
    assert registry.executor_config("process") is ProcessExecutor
    assert registry.executor_config("toy") is ToyConfig
    assert registry.executor_config("nosuch") is None  # not installed here: unchecked
    assert registry.names("executor_configs") == ["bash", "process", "toy"]


@pytest.mark.parametrize(("result", "message"), [
    ({"toy": dict}, r"plugin 'bad-plugin': skedlib_executor_configs\(\) entry 'toy' is "
                    r"<class 'dict'>, not a msgspec.Struct subclass"),
    ({"toy": ToyConfig(url="x")}, r"plugin 'bad-plugin': skedlib_executor_configs\(\) "
                                  "entry 'toy' must map a name to a callable"),
    ({"bash": ToyConfig}, r"'bash' is offered by both 'skedlib\.builtin' and 'bad-plugin'"),
])
def test_a_misdeclared_executor_config_names_the_plugin(result: Any, message: str) -> None:
    class Bad:
        @hookimpl
        def skedlib_executor_configs(self) -> Any:
            return result

    registry = Registry(load_entrypoints=False)
    registry.register(Bad(), name="bad-plugin")
    with pytest.raises(PluginError, match=message):
        registry.executor_config(next(iter(result)))


def test_an_unregistered_plugin_offers_nothing() -> None:
    registry = Registry(load_entrypoints=False)
    plugin = ToyPlugin()
    registry.register(plugin, name="toy-plugin")
    assert "toy" in registry.names("backends")
    registry.unregister(plugin)
    assert "toy" not in registry.names("backends")


def test_a_missing_first_party_plugin_is_named_in_the_error() -> None:
    registry = Registry(load_entrypoints=False)  # the built-ins only
    with pytest.raises(PluginError, match=r"^no backend named 'etcd' is installed "
                                          r"\(installed: memory, sqlite\); "
                                          r"pip install 'skedlib\[etcd\]'$"):
        registry.open_backend("etcd://127.0.0.1:2379")
    with pytest.raises(PluginError, match=r"; pip install 'skedlib\[consul\]'$"):
        registry.open_backend("consul://127.0.0.1:8500")
    with pytest.raises(PluginError, match=r"; pip install 'skedlib\[docker\]'$"):
        registry.executor_factory("docker")
    with pytest.raises(PluginError, match=r"; pip install 'skedlib\[consul\]'$"):
        registry.health_provider_factory("consul")
    # the reference schedulers ship inside skedlib: only a broken install lacks them
    with pytest.raises(PluginError, match=r"it ships with skedlib .*: reinstall skedlib$"):
        registry.scheduler_factory("binpack")
    with pytest.raises(PluginError) as info:
        registry.scheduler_factory("mine")
    assert "install" not in str(info.value).split(")", 1)[1]  # a third party gets no hint


def test_an_agent_given_a_missing_first_party_executor_names_the_extra(tmp_path: Path) -> None:
    from skedlib.agent.wiring import Executors

    executors = Executors(Registry(load_entrypoints=False), "h1", tmp_path, tmp_path, {},
                          lambda *_: None)
    with pytest.raises(PluginError, match=r"^no executor named 'docker' is installed "
                                          r"\(installed: [^)]*\); pip install "
                                          r"'skedlib\[docker\]'$"):
        executors.open("docker", required=True)
