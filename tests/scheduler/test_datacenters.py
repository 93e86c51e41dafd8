"""Two datacenters, each its own etcd cluster with a scheduler and an agent (real
processes): ``sked federate`` places a global service in both, ``sked --all-datacenters``
shows both, and with one datacenter's etcd stopped the other keeps scheduling, its tasks
stay healthy, and the aggregate view reports the dead one instead of failing."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from skedlib.cli.datacenters import PARTIAL
from skedlib.cli.main import main as sked_main
from tests.harness import consul as consul_harness
from tests.harness import etcd as harness
from tests.scheduler.conftest import Loop, wait_for, web_manifest


def sked(*argv: str) -> tuple[int, str, str]:
    """``sked`` in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = sked_main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def datacenters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                ) -> Iterator[dict[str, tuple[Loop, harness.EtcdCluster]]]:
    """Datacenters ``east`` and ``west``: an etcd each (its own, stopped by the test as it
    likes), a scheduler and an agent each, and a context ``fed`` listing both."""
    for name in ("SKED_BACKEND", "SKED_PREFIX", "SKED_CONTEXT", "SKED_API"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SKED_CONFIG", str(tmp_path / "config.yaml"))
    clusters: list[harness.EtcdCluster] = []
    loops: dict[str, Loop] = {}
    try:
        for dc in ("east", "west"):
            etcd = harness.EtcdCluster(1, name=dc).start()
            clusters.append(etcd)
            (tmp_path / dc).mkdir()
            # a short per-call timeout, so a stopped datacenter is reported quickly
            loop = Loop(tmp_path / dc, etcd.url(timeout=2), "sked/")
            loops[dc] = loop
            loop.start_scheduler()
            loop.start_agent(1)
            code, _, err = sked("config", "set-datacenter", "fed", dc,
                                "--backend", loop.url)
            assert code == 0, err
        yield {dc: (loops[dc], etcd) for dc, etcd in zip(loops, clusters, strict=True)}
    finally:
        for loop in loops.values():
            loop.cleanup()
        for etcd in clusters:
            etcd.stop()


def _global(tmp_path: Path, placement: str) -> str:
    path = tmp_path / "global.yml"
    path.write_text(web_manifest("web", desired=1) + f"placement:\n  web: {placement}\n")
    return str(path)


def test_a_global_service_lands_in_both_and_a_dead_datacenter_is_reported(
        tmp_path: Path, datacenters: dict[str, tuple[Loop, harness.EtcdCluster]]) -> None:
    (east, east_etcd), (west, _) = datacenters["east"], datacenters["west"]
    code, out, err = sked("federate", "-f",
                          _global(tmp_path, "{total: 3, weights: {east: 2, west: 1}}"))
    assert code == 0, err
    assert "east: services/web created" in out and "west: services/web created" in out
    east.wait_healthy("web", 2)
    west.wait_healthy("web", 1)
    # each datacenter's cluster says which datacenter it is
    assert [c.datacenter for c in east.client.clusters()] == ["east"]

    code, out, err = sked("--all-datacenters", "tasks", "-o", "json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["unreachable"] == []
    assert sorted(r["datacenter"] for r in shown["items"]) == ["east", "east", "west"]
    assert all(r["healthy"] for r in shown["items"])

    # east's store goes away; west keeps scheduling what it is told
    east_processes = east.processes()
    assert len(east_processes) == 2
    east_etcd.stop()
    code, out, err = sked("federate", "-f",
                          _global(tmp_path, "{per_datacenter: {east: 2, west: 3}}"))
    assert code == PARTIAL, err
    assert "west: services/web configured" in out
    assert "sked: datacenter east: not written:" in err
    west.wait_healthy("web", 3)

    code, out, err = sked("--all-datacenters", "tasks")
    assert code == PARTIAL
    lines = out.splitlines()
    assert lines[0].split()[0] == "datacenter"
    assert sum(1 for line in lines[2:] if line.startswith("west ")) == 3
    assert not any(line.startswith("east ") for line in lines)
    assert [line for line in err.splitlines() if line.startswith("sked: datacenter")] == [
        line for line in err.splitlines() if line.startswith("sked: datacenter east: "
                                                             "unreachable:")]
    assert err.count("\n") == 1

    code, out, _ = sked("get", "services", "--all-datacenters", "-o", "json")
    assert code == PARTIAL
    shown = json.loads(out)
    assert [(s["datacenter"], s["desired"]) for s in shown["items"]] == [("west", 3)]
    assert [u["datacenter"] for u in shown["unreachable"]] == ["east"]
    # a cut-off datacenter keeps running what it has: east's task processes are alive
    assert all(p.is_running() for p in east_processes)
    wait_for(lambda: len(west.healthy("web")) == 3, 10, "west still healthy")


# -- Consul: two datacenters joined over WAN -----------------------------------------------
def _consul_service(agent: consul_harness.ConsulAgent, service: str,
                    dc: str) -> list[dict[str, Any]]:
    """The passing instances of ``service`` in datacenter ``dc``, asked of ``agent``."""
    status, body = agent.api("GET", f"/v1/health/service/{service}?dc={dc}&passing")
    return body if status == 200 and isinstance(body, list) else []


def test_consul_datacenters_joined_over_wan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``consul://…?dc=NAME`` per datacenter: a global service lands in both, each task
    registers in its own datacenter's catalog (found from the other over WAN), and with
    one datacenter's Consul stopped the other keeps scheduling and is shown alone."""
    consul_harness.require_consul_plugin()
    for name in ("SKED_BACKEND", "SKED_PREFIX", "SKED_CONTEXT", "SKED_API"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SKED_CONFIG", str(tmp_path / "config.yaml"))
    servers: dict[str, consul_harness.ConsulCluster] = {}
    loops: dict[str, Loop] = {}
    try:
        for dc in ("east", "west"):
            config: dict[str, Any] = {"datacenter": dc}
            if servers:
                config["retry_join_wan"] = [servers["east"].members[0].serf_wan]
                config["retry_interval_wan"] = "1s"
            servers[dc] = consul_harness.ConsulCluster(
                1, dev=True, name=f"dc-{dc}", config=config).start()
            (tmp_path / dc).mkdir()
            loop = Loop(tmp_path / dc, servers[dc].url(dc=dc, timeout=2), "sked/")
            loops[dc] = loop
            loop.start_scheduler()
            loop.start_agent(1)
            assert sked("config", "set-datacenter", "fed", dc, "--backend", loop.url)[0] == 0
        east_agent, west_agent = servers["east"].members[0], servers["west"].members[0]
        wait_for(lambda: {"east", "west"} <= set(west_agent.api("GET", "/v1/catalog/"
                                                                "datacenters")[1]),
                 30, "the WAN join")

        code, out, err = sked("federate", "-f",
                              _global(tmp_path, "{per_datacenter: {east: 2, west: 1}}"))
        assert code == 0, err
        loops["east"].wait_healthy("web", 2)
        loops["west"].wait_healthy("web", 1)
        # each task is in its own datacenter's catalog; the other finds it over WAN
        east_ids = {t.id for t in loops["east"].tasks("web")}
        west_ids = {t.id for t in loops["west"].tasks("web")}
        wait_for(lambda: {e["Service"]["ID"] for e in _consul_service(
            west_agent, "web", "east")} == east_ids, 20, "east's tasks, asked from west")
        wait_for(lambda: {e["Service"]["ID"] for e in _consul_service(
            east_agent, "web", "west")} == west_ids, 20, "west's tasks, asked from east")

        code, out, err = sked("--all-datacenters", "tasks", "-o", "json")
        assert code == 0, err
        assert sorted(r["datacenter"] for r in json.loads(out)["items"]) == [
            "east", "east", "west"]

        # west's Consul goes away: east keeps scheduling and is shown alone
        loops["west"].backend.close()
        servers["west"].stop()
        code, out, err = sked("federate", "-f",
                              _global(tmp_path, "{per_datacenter: {east: 3, west: 1}}"))
        assert code == PARTIAL and "sked: datacenter west: not written:" in err
        loops["east"].wait_healthy("web", 3)
        code, out, err = sked("--all-datacenters", "tasks", "-o", "json")
        assert code == PARTIAL and "sked: datacenter west: unreachable:" in err
        shown = json.loads(out)
        assert {r["datacenter"] for r in shown["items"]} == {"east"}
        assert len(shown["items"]) == 3
        assert [u["datacenter"] for u in shown["unreachable"]] == ["west"]
    finally:
        for loop in loops.values():
            with contextlib.suppress(Exception):  # a stopped store: its processes still go
                loop.cleanup()
        for server in servers.values():
            server.stop()
