"""skedlib's blox API (``/blox/v1``) checked with schemathesis against blox's own Swagger
2.0 document (``tests/api/blox/swagger.json``, unmodified): every operation, with valid
and invalid inputs: no 5xx, every status code one the document lists, every body
conforming to its schema, and invalid input refused with a 4xx."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from skedlib.api import ApiServer, blox
from skedlib.client import Client
from skedlib.codecs import parse_manifest
from skedlib.environments import EnvironmentCreate, Environments
from tests.api.conftest import daemon_manifest

TOKEN = "blox-schemathesis-token"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection]
SWAGGER = Path(__file__).parent / "blox" / "swagger.json"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The blox API over a SQLite store holding cluster ``default``, task definition
    ``web`` and environments (one deployed, and more than a page of them, so listings
    answer with a ``nextToken``)."""
    path = tmp_path_factory.mktemp("blox-schemathesis") / "store.db"
    with Client.open(f"sqlite://{path}", f"t{uuid.uuid4().hex[:6]}/") as client:
        client.apply(parse_manifest(daemon_manifest(), "m.yml"))
        envs = Environments(client.store)
        for i in range(blox.PAGE_SIZE + 1):
            envs.create(EnvironmentCreate(name=f"env{i:03d}", cluster="default",
                                          task_name="web", task_version=1))
        envs.deploy("env000", envs.get("env000").deployment_token)
        with ApiServer(client, "127.0.0.1", 0, token=TOKEN, track_every=0.5) as server:
            yield server.url.removesuffix("/v1") + blox.BASE_PATH


schema = schemathesis.openapi.from_path(SWAGGER)
schema.config.generation.update(
    modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
    max_examples=25, deterministic=True)


def test_the_document_is_blox_s() -> None:
    assert schema.raw_schema["swagger"] == "2.0"
    assert schema.raw_schema["info"]["title"] == "Blox daemon-scheduler"
    assert len(list(schema.get_all_operations())) == 8


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_blox_api_conforms_to_blox_s_swagger_document(case: schemathesis.Case,
                                                          base_url: str) -> None:
    case.call_and_validate(base_url=base_url, checks=CHECKS,
                           headers={"Authorization": f"Bearer {TOKEN}"})
