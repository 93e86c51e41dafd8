"""The public conformance suite, run on the built-in backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from skedlib.testing import BackendConformance


class TestMemoryBackend(BackendConformance):
    lease_ttl = 0.5
    lease_expiry_slack = 0.5
    cross_process = False

    @pytest.fixture
    def backend_url(self, request: pytest.FixtureRequest) -> str:
        # a name shared by every backend this test opens, fresh for each test
        return f"memory://{request.node.name}"


class TestMemoryBackendWithTxnLimit(TestMemoryBackend):
    @pytest.fixture
    def backend_url(self, request: pytest.FixtureRequest) -> str:
        return f"memory://limited-{request.node.name}?max_txn_ops=16"


class TestSqliteBackend(BackendConformance):
    lease_ttl = 0.5
    lease_expiry_slack = 1.0

    @pytest.fixture
    def backend_url(self, tmp_path: Path) -> str:
        return f"sqlite://{tmp_path}/store.db"
