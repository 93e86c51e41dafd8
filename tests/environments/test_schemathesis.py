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

from skedlib.client import Client
from skedlib.codecs import parse_manifest
from skedlib.environments import EnvironmentCreate, Environments
from skedlib.environments.api import ApiServer
from skedlib.environments.openapi import openapi_document
from tests.environments.conftest import daemon_manifest

TOKEN = "schemathesis-token"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """The API over a SQLite store holding a cluster, a task definition and two
    environments (one deployed), so that some generated requests find them."""
    path: Path = tmp_path_factory.mktemp("schemathesis") / "store.db"
    with Client.open(f"sqlite://{path}", f"t{uuid.uuid4().hex[:6]}/") as client:
        client.apply(parse_manifest(daemon_manifest(), "m.yml"))
        envs = Environments(client)
        for name in ("web", "other"):
            envs.create(EnvironmentCreate(name=name, cluster="default", task_name="web",
                                          task_version=1))
        envs.deploy("web", envs.get("web").deployment_token)
        with ApiServer(client, "127.0.0.1", 0, token=TOKEN, track_every=0.5) as s:
            yield s


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
