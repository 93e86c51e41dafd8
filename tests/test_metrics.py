"""skedlib.metrics on its own: its registry is not prometheus_client's default one, a
level is read from live sources only, rejection reasons become a few kinds, and the
exposition server answers on the port it was given."""

from __future__ import annotations

import gc

import prometheus_client
import pytest
import requests

from skedlib.metrics import Metrics, exposition, reject_kind, serve


def _value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_skedlib_metrics_stay_out_of_the_default_registry() -> None:
    names = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert not any(n.startswith("skedlib_") for n in names)
    assert Metrics().registry is not prometheus_client.REGISTRY


def test_a_level_is_summed_over_its_live_sources() -> None:
    metrics = Metrics()

    class Agent:
        def __init__(self, running: int) -> None:
            self.running = running

        def counts(self) -> dict[tuple[str, ...], float]:
            return {("running",): float(self.running)}

    a, b = Agent(2), Agent(3)
    metrics.add_source("skedlib_agent_tasks", a.counts)
    metrics.add_source("skedlib_agent_tasks", b.counts)
    assert _value(metrics, "skedlib_agent_tasks", state="running") == 5
    del b
    gc.collect()
    assert _value(metrics, "skedlib_agent_tasks", state="running") == 2
    assert _value(metrics, "skedlib_scheduler_queue_depth") == 0
    with pytest.raises(KeyError, match="no gauge"):
        metrics.add_source("skedlib_nope", a.counts)


def test_rejection_reasons_become_few_kinds() -> None:
    assert reject_kind("memory pressure: host memory 93.0% in use >= 90%") == "pressure"
    assert reject_kind("port 8080 is already used by task x on host h") == "port"
    assert reject_kind("failed 5 attempts") == "attempts"
    assert reject_kind("executor 'docker' does not support it") == "executor"
    assert reject_kind("image not allowed by the host policy") == "policy"
    assert reject_kind("something new") == "other"


def test_the_server_serves_the_exposition() -> None:
    metrics = Metrics()
    metrics.placements.inc(3)
    server = serve("127.0.0.1", 0, metrics)
    try:
        r = requests.get(f"http://127.0.0.1:{server.address[1]}/metrics", timeout=10)
        assert r.status_code == 200
        assert "skedlib_scheduler_placements_total 3.0" in r.text
    finally:
        server.close()
    body, content_type = exposition(metrics)
    assert b"skedlib_scheduler_placements_total 3.0" in body
    assert content_type.startswith("text/plain")


def test_the_docs_list_every_metric_and_the_dashboard_uses_only_them() -> None:
    import json
    import re
    from pathlib import Path

    from prometheus_client.parser import text_string_to_metric_families

    docs = Path(__file__).resolve().parents[1] / "docs"
    body, _ = exposition(Metrics())
    families = {f.name for f in text_string_to_metric_families(body.decode())
                if f.name.startswith("skedlib_") and not f.name.endswith("_created")}
    listed = (docs / "metrics.md").read_text()
    for name in families:
        assert f"`{name}" in listed, f"docs/metrics.md does not list {name}"
    dashboard = json.loads((docs / "grafana-dashboard.json").read_text())
    used = {re.sub(r"_(total|bucket|sum|count)$", "", n)
            for panel in dashboard["panels"] for t in panel["targets"]
            for n in re.findall(r"skedlib_\w+", t["expr"])}
    assert used and used <= families, used - families


def test_metrics_flag_parsing_and_a_taken_port() -> None:
    import argparse
    import socket

    from skedlib.cli.args import metrics_listen, start_metrics
    from skedlib.errors import SkedError

    assert metrics_listen(":9101") == ("127.0.0.1", 9101)  # loopback unless written out
    assert metrics_listen("0.0.0.0:9101") == ("0.0.0.0", 9101)
    assert metrics_listen("[::1]:9101") == ("::1", 9101)
    with pytest.raises(argparse.ArgumentTypeError, match=r"expected \[HOST\]:PORT"):
        metrics_listen("9101")
    assert start_metrics(None, "skedlib-agent") is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SkedError, match=f"--metrics 127.0.0.1:{port}: cannot listen"):
            start_metrics(("127.0.0.1", port), "skedlib-agent")
