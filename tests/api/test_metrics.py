"""``GET /v1/metrics`` of ``sked serve``: the Prometheus text of the server's process,
readable with the read-only token, refused without a token."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from skedlib.api import ApiServer
from skedlib.client import Client
from tests.api.conftest import TOKEN


@pytest.fixture
def client() -> Iterator[Client]:
    with Client.open(f"memory://{uuid.uuid4().hex}") as c:
        yield c


def test_metrics_need_a_token_and_the_read_only_one_is_enough(client: Client) -> None:
    reader = "read-" + TOKEN
    with ApiServer(client, "127.0.0.1", 0, token=TOKEN, read_token=reader) as server:
        r = requests.get(server.url + "/metrics", timeout=10)
        assert r.status_code == 401, r.text
        assert "skedlib_" not in r.text
        r = requests.get(server.url + "/metrics", timeout=10,
                         headers={"Authorization": f"Bearer {reader}"})
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"].startswith("text/plain")
        names = {f.name for f in text_string_to_metric_families(r.text)}
        assert {"skedlib_scheduler_placements", "skedlib_agent_tasks",
                "skedlib_jobs_claims"} <= names
        r = requests.post(server.url + "/metrics", timeout=10,
                          headers={"Authorization": f"Bearer {reader}"})
        assert r.status_code == 405
