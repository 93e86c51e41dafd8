"""The OpenAPI document checked against the running server with schemathesis: every
documented operation, with valid and invalid inputs (positive and negative generation):
no 5xx, every status code documented, every body conforming to its schema, and invalid
input refused with a 4xx."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from skedlib.api import ApiServer, openapi_document
from skedlib.client import Client
from skedlib.codecs import encode, parse_manifest
from skedlib.environments import EnvironmentCreate, Environments
from skedlib.jobs import JobNode, JobRequirements, JobSpec, JobStore
from tests.api.conftest import daemon_manifest

TOKEN = "schemathesis-token"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """The API over a SQLite store holding a cluster, a task definition and two
    environments (one deployed), so that some generated requests find them; and a job
    worker's record with jobs in every state, so that listings return each shape (their
    ids are UUIDs, which generated ids do not hit: waiting on or fetching the output of
    a real job would wait, or reach for a node that does not exist)."""
    path: Path = tmp_path_factory.mktemp("schemathesis") / "store.db"
    with Client.open(f"sqlite://{path}", f"t{uuid.uuid4().hex[:6]}/") as client:
        client.apply(parse_manifest(daemon_manifest(), "m.yml"))
        envs = Environments(client.store)
        for name in ("web", "other"):
            envs.create(EnvironmentCreate(name=name, cluster="default", task_name="web",
                                          task_version=1))
        envs.deploy("web", envs.get("web").deployment_token)
        _jobs_in_every_state(client)
        with ApiServer(client, "127.0.0.1", 0, token=TOKEN, track_every=0.5) as s:
            yield s


def _jobs_in_every_state(client: Client) -> None:
    store = JobStore(client.store)
    node = JobNode(name="worker1", capacity=JobRequirements(memory=1024, cpu_units=2048),
                   slots=2, limits="rlimit", pid=1, hostname="h", started_at=1.0)
    revision = client.backend.put(store.keys.job_node("worker1"), encode(node))
    ids = [store.submit(JobSpec(command="true", args=["x"], env={"A": "1"},
                                requirements=JobRequirements(memory=m))).id
           for m in (64, 64, 64, 64, 4096)]
    for job_id in ids[1:4]:
        queued = client.backend.get(store.keys.job_queued(job_id))
        assert queued is not None
        assert store.claim(queued, "worker1", revision) is not None
    for job_id, exit_code in ((ids[2], 0), (ids[3], 1)):
        stored = store.get(job_id)
        store.finish(stored.job, stored.revision, "complete" if exit_code == 0 else "failed",
                     exit_code=exit_code, reason=f"exited {exit_code}")
    store.cancel(ids[0])


# The document the server serves (test_the_served_document_is_the_generated_one checks
# they are the same), loaded eagerly: schemathesis' lazy fixture loader does not work with
# this pytest.
schema = schemathesis.openapi.from_dict(openapi_document())
schema.config.generation.update(
    modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
    max_examples=25, deterministic=True)


def test_the_served_document_is_the_generated_one(server: ApiServer) -> None:
    assert requests.get(server.url + "/openapi.json", timeout=5).json() == openapi_document()


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_conforms_to_its_openapi_document(case: schemathesis.Case,
                                                 server: ApiServer) -> None:
    case.call_and_validate(base_url=server.url, checks=CHECKS,
                           headers={"Authorization": f"Bearer {TOKEN}"})
