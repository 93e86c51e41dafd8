"""The public backend conformance suite, run against real etcd: one node and 3 members."""

from __future__ import annotations

import pytest

from skedlib.testing import BackendConformance
from tests.harness import etcd as harness

pytestmark = pytest.mark.integration

etcd_single = harness.etcd_single
etcd_cluster = harness.etcd_cluster


class _EtcdConformance(BackendConformance):
    # etcd rounds TTLs up to whole seconds, with a floor of 2 s (1.5 election timeouts);
    # the leader checks for expired leases every 500 ms and revokes them through raft
    lease_ttl = 2.0
    lease_expiry_slack = 3.0


class TestEtcdSingleNode(_EtcdConformance):
    """One etcd member."""

    @pytest.fixture
    def backend_url(self, etcd_single: harness.EtcdCluster) -> str:
        return etcd_single.url()


class TestEtcdCluster(_EtcdConformance):
    """Three members, every one listed in the URL."""

    @pytest.fixture
    def backend_url(self, etcd_cluster: harness.EtcdCluster) -> str:
        return etcd_cluster.url()
