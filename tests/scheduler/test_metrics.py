"""Metrics and JSON logs of the real daemons: ``skedlib-agent`` and ``skedlib-scheduler``
started with ``--metrics`` on free loopback ports and ``--log-format json`` run a task;
a scrape of each shows the ``skedlib_`` metrics with values that match what happened, and
every log line is one JSON object (a store key with a newline in it included)."""

from __future__ import annotations

import json

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.common import free_ports
from tests.scheduler.conftest import Loop, wait_for, web_manifest


def scrape(port: int) -> dict[str, float]:
    """``GET /metrics`` → sample name with its labels → value."""
    r = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def test_a_scrape_of_each_daemon_shows_what_it_did(sqlite_loop: Loop) -> None:
    loop = sqlite_loop
    agent_port, scheduler_port = free_ports(2)
    loop.start_agent(1, "--metrics", f"127.0.0.1:{agent_port}", "--log-format", "json",
                     memory=256)
    loop.start_scheduler("scheduler", "--metrics", f":{scheduler_port}",
                         "--log-format", "json")
    # a key the agent cannot read as a task: its warning names the key, newline and all
    loop.backend.put(loop.keys.host_tasks(loop.host(1)) + "bad\nkey", b"{}")
    loop.apply(web_manifest(desired=1, memory=100))
    loop.wait_healthy("web", 1)

    sched = wait_for(lambda: (s := scrape(scheduler_port))
                     .get("skedlib_scheduler_placements_total", 0) >= 1 and s,
                     30, "a placement counted")
    assert sched["skedlib_scheduler_plan_seconds_count"] >= 1
    assert sched["skedlib_scheduler_commit_seconds_count"] >= 1
    assert sched['skedlib_scheduler_runs_total{outcome="done"}'] >= 1
    assert sched["skedlib_scheduler_unschedulable_tasks"] == 0
    assert sched["skedlib_scheduler_queue_depth"] >= 0

    agent = wait_for(lambda: (s := scrape(agent_port))
                     .get('skedlib_agent_tasks{state="running"}', 0) == 1 and s,
                     30, "the running task counted")
    assert agent["skedlib_agent_task_starts_total"] >= 1
    assert agent['skedlib_agent_check_seconds_count{kind="http"}'] >= 1
    assert agent["skedlib_agent_lease_losses_total"] == 0
    # --lease-ttl 2: renewed every 2/3 s
    wait_for(lambda: scrape(agent_port)["skedlib_agent_lease_renewals_total"] >= 1, 30,
             "a lease renewal counted")
    # the agent's process has no scheduler work: its scheduler counters stay at 0
    assert agent["skedlib_scheduler_placements_total"] == 0

    for name in ("scheduler", f"agent-{loop.host(1)}"):
        lines = loop.logs[name].read_text().splitlines()
        assert lines, name
        entries = [json.loads(line) for line in lines]
        for entry in entries:
            assert {"time", "level", "logger", "message"} <= set(entry), entry
        if name == "scheduler":
            assert any(e["message"].startswith("metrics at http://127.0.0.1:")
                       for e in entries)
        else:
            assert any(e["level"] == "WARNING" and "bad\nkey" in e["message"]
                       for e in entries), entries
