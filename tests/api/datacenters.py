"""Two datacenters for the API and console tests: ``east`` and ``west``, each its own
single-node etcd on loopback (stopped by a test to cut a datacenter off). East runs a
scheduler and an agent (real processes) with service ``web``; west holds what ``federate``
wrote and a host known by its settings only, so its rows are there without processes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from skedlib.federation import Datacenter, federate, parse_global
from skedlib.models import HostConfig
from tests.harness import etcd as harness
from tests.scheduler.conftest import Loop, web_manifest

__all__ = ["DC_TIMEOUT", "TwoDatacenters", "two_datacenters"]

DC_TIMEOUT = 4.0
"""Seconds the server gives a datacenter (its etcd calls time out after 1 s)."""


@dataclass
class TwoDatacenters:
    """East's loop and etcd, west's etcd, and both as the server's datacenters."""

    east: Loop
    east_etcd: harness.EtcdCluster
    west: Loop
    west_etcd: harness.EtcdCluster
    datacenters: list[Datacenter]


@pytest.fixture
def two_datacenters(tmp_path: Path) -> Iterator[TwoDatacenters]:
    """East (scheduler, one agent, 2 healthy ``web`` tasks) and west (``web`` with desired
    1, host ``spare-west`` known by its settings); stopped after the test."""
    harness.require_etcd()
    harness.require_etcd_plugin()
    etcds: list[harness.EtcdCluster] = []
    loops: list[Loop] = []
    try:
        for dc in ("east", "west"):
            etcd = harness.EtcdCluster(1, name=f"api-{dc}").start()
            etcds.append(etcd)
            (tmp_path / dc).mkdir()
            # a short per-call timeout, so a stopped datacenter is reported quickly
            loops.append(Loop(tmp_path / dc, etcd.url(timeout=1), "sked/"))
        east, west = loops
        dcs = [Datacenter(name=name, backend=loop.url, prefix="sked/")
               for name, loop in (("east", east), ("west", west))]
        doc = parse_global(web_manifest("web", desired=1, memory=32)
                           + "placement:\n  web: {per_datacenter: {east: 2, west: 1}}\n",
                           "global.yml")
        assert all(o.ok for o in federate(dcs, doc, timeout=DC_TIMEOUT))
        west.client.put_host_config(HostConfig(name="spare-west", attributes={"zone": "w"}))
        east.start_scheduler()
        east.start_agent(1, memory=512)
        east.wait_healthy("web", 2)
        yield TwoDatacenters(east, etcds[0], west, etcds[1], dcs)
    finally:
        for loop in loops:
            loop.cleanup()
        for etcd in etcds:
            etcd.stop()
