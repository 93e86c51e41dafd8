"""``sked describe``: stored durations and times printed for reading, JSON as stored."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import yaml

from skedlib.cli.main import main
from skedlib.client import Client
from skedlib.codecs import encode
from skedlib.models import Cluster, Container, Task, TaskDefinition, TaskHealth
from skedlib.store.base import Put


def test_describe_task_prints_durations_and_times_for_reading(
        capsys: pytest.CaptureFixture[str]) -> None:
    url = f"memory://describe-{uuid.uuid4().hex}"
    td = TaskDefinition(name="web", version=1, grace_period=90_000_000_000,
                        containers=[Container(name="c", type="process")])
    task = Task(cluster=Cluster(name="default"), task_definition=td, service="web",
                instance=0, host="h1")
    since = time.time() - 200
    health = TaskHealth(task_id=task.id, host="h1", state="healthy", healthy=True,
                        since=since, updated_at=since)
    with Client.open(url) as client:  # keep the named store alive for main()
        client.store.txn([], [Put(client.keys.task(task.id), encode(task)),
                              Put(client.keys.task_health(task.id), encode(health))])
        assert main(["--backend", url, "describe", "task", task.id]) == 0
        out = capsys.readouterr().out
        body, _, status = out.partition("\nstatus:\n")
        described = yaml.safe_load("\n".join(line[2:] for line in body.splitlines()[1:]))
        assert described["task_definition"]["grace_period"] == "1m30s"
        assert described["task_definition"]["stop_after_disconnect"] == "0s"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))
        assert f"since: {stamp} (3m" in status, status

        assert main(["--backend", url, "describe", "task", task.id, "-o", "json"]) == 0
        raw = json.loads(capsys.readouterr().out)
        assert raw["object"]["task_definition"]["grace_period"] == 90_000_000_000
        assert raw["status"]["since"] == pytest.approx(since)
