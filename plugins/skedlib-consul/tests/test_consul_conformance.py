"""The public backend conformance suite on real Consul: a ``-dev`` agent and 3 servers.

Leases live at least 20 s on Consul (sessions of Consul's shortest TTL, 10 s, which Consul
ends 2 x that after their last renewal), so the lease tests take about a minute per server
kind; they run once per kind.
Consul's watches report final states, not every intermediate write
(``ordered_watch_history = False``; see docs/backends/consul.md).
"""

from __future__ import annotations

from typing import ClassVar

import pytest

from skedlib.testing import BackendConformance
from tests.harness import consul as harness

consul_dev = harness.consul_dev
consul_cluster = harness.consul_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class _ConsulConformance(BackendConformance):
    lease_ttl: ClassVar[float] = 20.0  # the shortest lease on Consul
    lease_expiry_slack: ClassVar[float] = 5.0
    ordered_watch_history: ClassVar[bool] = False


class TestConsulDevConformance(_ConsulConformance):
    """One ``consul agent -dev``."""

    @pytest.fixture
    def backend_url(self, consul_dev: harness.ConsulCluster) -> str:
        return consul_dev.url()


class TestConsulClusterConformance(_ConsulConformance):
    """Three servers; the URL lists all of them."""

    @pytest.fixture
    def backend_url(self, consul_cluster: harness.ConsulCluster) -> str:
        return consul_cluster.url()
