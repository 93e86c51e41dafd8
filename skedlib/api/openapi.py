"""The OpenAPI 3.1 document of the REST API, built from the route table
(:class:`~skedlib.api.routing.Route`: paths, methods, parameters, bodies, responses and
their texts are declared with the handlers) and from the msgspec Structs the server
decodes requests into and encodes responses from (``msgspec.json.schema_components``).
The job models document their fields with attribute docstrings, which msgspec does not
see; :func:`_attribute_docs` reads them from the source so they reach the document too.

Served by ``sked serve`` at ``GET /v1/openapi.json``; ``scripts/gen_api_docs.py`` renders
it as ``docs/api.md``.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import textwrap
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import msgspec

from skedlib.api import cluster
from skedlib.api.routing import BASE_PATH, Route
from skedlib.client import ScaleResult
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
    JobNodeList,
    Name,
    Ping,
)
from skedlib.events import EventHistory
from skedlib.jobs.models import Job, JobNode, JobPage, JobRequirements, JobSpec
from skedlib.models import HostConfig

__all__ = ["build_document"]

_MODELS: list[Any] = [EnvironmentCreate, EnvironmentUpdate, DeploymentCreate,
                      EnvironmentView, EnvironmentPage, Deployment, DeploymentPage, Deleted,
                      ErrorBody, Ping, JobSpec, Job, JobPage, JobNode, JobNodeList,
                      *cluster.MODELS, ScaleResult, HostConfig, EventHistory]

# Fields of the job models without an attribute docstring of their own.
_JOB_FIELD_DOCS: dict[str, dict[str, str]] = {
    "JobSpec": {"args": "Arguments passed to the command.",
                "requirements": "What the job needs of its node."},
    "Job": {"id": "The job's id: a UUID version 7 (ids sort by submit time), or the id "
                  "given at submit.",
            "status": "queued, running, complete, failed or canceled.",
            "submitted_at": "UNIX seconds.",
            "started_at": "UNIX seconds the last attempt started; null before the first "
                          "claim and while queued again.",
            "finished_at": "UNIX seconds it ended; null until then."},
    "JobNode": {"name": "The worker's node name.",
                "pid": "The worker's process id.",
                "hostname": "The machine it runs on.",
                "started_at": "UNIX seconds the worker started."},
    "JobPage": {"items": "Oldest first (ids sort by submit time).",
                "next_token": "Pass it as next_token for the next page; null on the last "
                              "page."},
}

_ERRORS = {
    "400": "Bad input: malformed JSON, a wrong or unknown field, a bad name or query "
           "parameter, a task definition or cluster that does not exist. Nothing changed.",
    "401": "The bearer token was missing or wrong. Nothing changed.",
    "403": "Refused as cross-site: the Host header does not name this server (its listen "
           "address or an --allowed-host name), or Origin / Sec-Fetch-Site say the request "
           "comes from another site. Nothing changed.",
    "404": "No such environment or deployment.",
    "409": "Conflict: a duplicate name, a stale or reused deployment token, or state "
           "that forbids the request. Nothing changed.",
    "413": "The request body is larger than 1 MiB.",
    "415": "The request body's Content-Type is not application/json. Nothing changed.",
    "503": "The store is unavailable; try again.",
}


_CLUSTER_ERRORS = {
    "400": "Bad input: malformed JSON, a wrong or unknown field, a bad name or query "
           "parameter, a count outside the service's bounds. Nothing changed.",
    "404": "No such service, task or host.",
    "409": "Conflict: the object kept changing under the request (retried a few times), "
           "or state that forbids it. Nothing changed.",
}

_JOB_ERRORS = {
    "400": "Bad input: malformed JSON, a wrong or unknown field, a bad job id or query "
           "parameter. Nothing changed.",
    "404": "No such job.",
}


_TAG_ERRORS = {"jobs": _JOB_ERRORS, "cluster": _CLUSTER_ERRORS}


def _attribute_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of ``cls`` (a string statement right after a field)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):  # no source (e.g. a frozen build)
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for stmt, after in itertools.pairwise(body):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[stmt.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _describe_job_fields(components: dict[str, Any]) -> None:
    """Give the job models' properties the descriptions of their attribute docstrings (a
    Job field documented only on JobSpec takes that one)."""
    spec_docs = {**_attribute_docs(JobSpec), **_JOB_FIELD_DOCS["JobSpec"]}
    for cls in (JobRequirements, JobSpec, Job, JobNode, JobPage):
        name = cls.__name__
        docs = {**(spec_docs if cls is Job else {}), **_attribute_docs(cls),
                **_JOB_FIELD_DOCS.get(name, {})}
        for field, prop in components[name].get("properties", {}).items():
            if field in docs and "description" not in prop:
                prop["description"] = " ".join(docs[field].split())


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _operation(route: Route) -> dict[str, Any]:
    """The operation object of ``route``."""
    responses: dict[str, Any] = {route.ok: dict(route.ok_response) if route.ok_response
                                 else _json(_ref(route.ok_schema),
                                            "OK" if route.ok == "200" else "Created")}
    codes = [*route.errors, "403", *([] if route.public else ["401", "503"]),
             *(["415"] if route.body is not None else [])]
    texts = {**_ERRORS, **_TAG_ERRORS.get(route.tag, {}), **route.meanings}
    for code in sorted(codes):
        responses[code] = _json(_ref("ErrorBody"), texts[code])
    op: dict[str, Any] = {"operationId": route.operation_id, "summary": route.summary,
                          "tags": [route.tag], "description": route.description,
                          "responses": responses}
    if route.query:
        op["parameters"] = [{"name": q.name, "in": "query", "required": False,
                             "schema": q.schema, "description": q.description}
                            for q in route.query]
    if route.body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": _ref(route.body.__name__)}}}
    if route.public:
        op["security"] = []
    return op


def _path_item(routes: list[Route]) -> dict[str, Any]:
    """The path item of the routes of one path: its path parameters, then each
    operation."""
    item: dict[str, Any] = {}
    docs = {name: text for route in routes for name, text in route.path_docs.items()}
    params = [s[1:-1] for s in routes[0].segments if s.startswith("{")]
    if params:
        item["parameters"] = [{"name": name, "in": "path", "required": True,
                               "schema": _ref("Name"), "description": docs[name]}
                              for name in params]
    for route in routes:
        item[route.method.lower()] = _operation(route)
    return item


def build_document(routes: Sequence[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document (a JSON-ready dict) of ``routes``."""
    _, components = msgspec.json.schema_components(
        _MODELS, ref_template="#/components/schemas/{name}")
    components["Name"] = {"title": "Name", **msgspec.json.schema(Name)}
    _describe_job_fields(components)
    try:
        version = metadata.version("skedlib")
    except metadata.PackageNotFoundError:  # running from a source tree
        version = "0"
    by_path: dict[str, list[Route]] = {}
    for route in routes:
        by_path.setdefault(route.path, []).append(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": "skedlib REST API", "version": version,
                 "description": "Services, tasks and hosts; daemon-per-host "
                                "environments and their deployments; and batch jobs, "
                                "served by `sked serve`. Errors are JSON "
                                "`{\"error\": code, \"message\": one line}`."},
        "servers": [{"url": BASE_PATH}],
        "security": [{"bearerAuth": []}],
        "paths": {path: _path_item(group) for path, group in by_path.items()},
        "tags": [{"name": "cluster",
                  "description": "What runs where: services, tasks and hosts, the "
                                 "operator's writes (scale, drain, delete), and a stream "
                                 "of changes."},
                 {"name": "environments",
                  "description": "Daemon-per-host environments and their deployments."},
                 {"name": "jobs", "description": "Batch jobs: run-to-completion commands "
                                                 "that job workers claim from a queue."},
                 {"name": "events", "description": "What happened lately to each task, "
                                                   "service, host and job."},
                 {"name": "meta", "description": "The server itself."}],
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "Every operation but ping and this document: the token "
                               "of $SKED_API_TOKEN, --token-file, or the file sked "
                               "serve makes on first start; GET operations also take "
                               "the read-only token ($SKED_API_READ_TOKEN, "
                               "--read-token-file)."}},
        },
    }
