"""The OpenAPI 3.1 document of the environments API, generated from the msgspec Structs
of :mod:`skedlib.environments.models` (``msgspec.json.schema_components``).

Served by ``sked serve`` at ``GET /v1/openapi.json``; ``scripts/gen_api_docs.py`` renders
it as ``docs/api.md``.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import msgspec

from skedlib.environments.manager import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from skedlib.environments.models import (
    Deleted,
    Deployment,
    DeploymentCreate,
    DeploymentPage,
    EnvironmentCreate,
    EnvironmentPage,
    EnvironmentUpdate,
    EnvironmentView,
    ErrorBody,
    Name,
    Ping,
)

__all__ = ["BASE_PATH", "openapi_document"]

BASE_PATH = "/v1"

_MODELS: list[Any] = [EnvironmentCreate, EnvironmentUpdate, DeploymentCreate,
                      EnvironmentView, EnvironmentPage, Deployment, DeploymentPage, Deleted,
                      ErrorBody, Ping]

_ERRORS = {
    "400": "Bad input: malformed JSON, a wrong or unknown field, a bad name or query "
           "parameter, a task definition or cluster that does not exist. Nothing changed.",
    "401": "A bearer token is required (the server was started with --token) and was "
           "missing or wrong.",
    "404": "No such environment or deployment.",
    "409": "Conflict: a duplicate name, a stale or reused deployment token, or state "
           "that forbids the request. Nothing changed.",
    "413": "The request body is larger than 1 MiB.",
    "503": "The store is unavailable; try again.",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _operation(op_id: str, summary: str, description: str, ok: str, ok_schema: str,
               errors: list[str], *, body: str | None = None,
               params: list[dict[str, Any]] | None = None, public: bool = False
               ) -> dict[str, Any]:
    responses: dict[str, Any] = {ok: _json(_ref(ok_schema), "OK" if ok == "200" else
                                           "Created")}
    codes = errors + ([] if public else ["401", "503"])
    for code in sorted(codes):
        responses[code] = _json(_ref("ErrorBody"), _ERRORS[code])
    op: dict[str, Any] = {"operationId": op_id, "summary": summary,
                          "description": description, "responses": responses}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": _ref(body)}}}
    if public:
        op["security"] = []
    return op


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _ref("Name"),
            "description": description}


_LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE,
                          "default": DEFAULT_PAGE_SIZE}, "items per page")
_NEXT = _query("next_token", {"type": "string"},
               "the next_token of the previous page (absent: the first page)")
_ENV = _path("name", "the environment's name")


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a JSON-ready dict)."""
    _, components = msgspec.json.schema_components(
        _MODELS, ref_template="#/components/schemas/{name}")
    components["Name"] = {"title": "Name", **msgspec.json.schema(Name)}
    try:
        version = metadata.version("skedlib")
    except metadata.PackageNotFoundError:  # running from a source tree
        version = "0"
    paths: dict[str, Any] = {
        "/ping": {"get": _operation(
            "ping", "Liveness", "Answers while the server runs (does not touch the store).",
            "200", "Ping", [], public=True)},
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document", "security": [],
            "description": "The OpenAPI 3.1 document of this API, generated from the "
                           "types the server decodes requests into and encodes responses "
                           "from.",
            "responses": {"200": {"description": "The OpenAPI document",
                                  "content": {"application/json": {
                                      "schema": {"type": "object"}}}}}}},
        "/environments": {
            "post": _operation(
                "createEnvironment", "Create an environment",
                "Stores a new environment with a fresh deployment_token. Nothing runs "
                "until it is deployed. The cluster and the task definition must exist, and "
                "no service of the same name.",
                "201", "EnvironmentView", ["400", "409", "413"], body="EnvironmentCreate"),
            "get": _operation(
                "listEnvironments", "List environments",
                "Environments by name, a page at a time; with health and the status of "
                "their current deployment.",
                "200", "EnvironmentPage", ["400"],
                params=[_query("cluster", {"type": "string"}, "only this cluster's"),
                        _LIMIT, _NEXT]),
        },
        "/environments/{name}": {
            "parameters": [_ENV],
            "get": _operation("getEnvironment", "Describe an environment",
                              "With its health and its current deployment's status.",
                              "200", "EnvironmentView", ["400", "404"]),
            "put": _operation(
                "updateEnvironment", "Update an environment",
                "Changes the task definition, constraints, max_parallel or deadline. "
                "Takes effect with the next deployment; the deployment_token is kept.",
                "200", "EnvironmentView", ["400", "404", "409", "413"],
                body="EnvironmentUpdate"),
            "delete": _operation(
                "deleteEnvironment", "Delete an environment",
                "Deletes the environment and its deployments, and removes its service from "
                "its cluster, so the scheduler stops its tasks. With keep_tasks=true the "
                "service is kept: its tasks keep running as a plain daemon service.",
                "200", "Deleted", ["400", "404", "409"],
                params=[_query("keep_tasks", {"type": "boolean", "default": False},
                               "keep the tasks running (the service stays, detached)")]),
        },
        "/environments/{name}/deployments": {
            "parameters": [_ENV],
            "post": _operation(
                "createDeployment", "Deploy",
                "Puts the environment's task definition (or, with rollback, that of the "
                "previous completed deployment) on every eligible host, host by host at most "
                "max_parallel at a time when the version changes. The token must be the "
                "environment's current deployment_token; a deployment replaces it, so a "
                "retried request gets 409 and deploys nothing.",
                "201", "Deployment", ["400", "404", "409", "413"], body="DeploymentCreate"),
            "get": _operation(
                "listDeployments", "List deployments", "Newest first, a page at a time.",
                "200", "DeploymentPage", ["400", "404"], params=[_LIMIT, _NEXT]),
        },
        "/environments/{name}/deployments/{id}": {
            "parameters": [_ENV, _path("id", "the deployment's id")],
            "get": _operation("getDeployment", "Describe a deployment",
                              "Its status is derived from the store when read.",
                              "200", "Deployment", ["400", "404"]),
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "skedlib environments API", "version": version,
                 "description": "Daemon-per-host environments and their deployments, "
                                "served by `sked serve`. Errors are JSON "
                                "`{\"error\": code, \"message\": one line}`."},
        "servers": [{"url": BASE_PATH}],
        "security": [{"bearerAuth": []}, {}],  # {}: a server without --token
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "Required only when the server was started with --token "
                               "or $SKED_API_TOKEN."}},
        },
    }
