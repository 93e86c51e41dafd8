"""The OpenAPI 3.1 document of the REST API (environments and batch jobs), generated from
the msgspec Structs of :mod:`skedlib.environments.models` and :mod:`skedlib.jobs.models`
(``msgspec.json.schema_components``). The job models document their fields with
attribute docstrings, which msgspec does not see; :func:`_attribute_docs` reads them
from the source so they reach the document too.

Served by ``sked serve`` at ``GET /v1/openapi.json``; ``scripts/gen_api_docs.py`` renders
it as ``docs/api.md``.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import textwrap
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
    JobNodeList,
    Name,
    Ping,
)
from skedlib.jobs.client import DEFAULT_PAGE_SIZE as JOB_PAGE_SIZE
from skedlib.jobs.client import FOLLOW_POLL
from skedlib.jobs.client import MAX_PAGE_SIZE as JOB_MAX_PAGE_SIZE
from skedlib.jobs.models import JOB_STATES, Job, JobNode, JobPage, JobRequirements, JobSpec

__all__ = ["BASE_PATH", "DEFAULT_WAIT", "MAX_WAIT", "openapi_document"]

BASE_PATH = "/v1"

DEFAULT_WAIT = 30.0
"""Seconds ``GET /v1/jobs/{id}/wait`` waits when no ``timeout`` is given."""
MAX_WAIT = 60.0
"""The longest ``timeout`` ``GET /v1/jobs/{id}/wait`` accepts (larger: 400)."""

_MODELS: list[Any] = [EnvironmentCreate, EnvironmentUpdate, DeploymentCreate,
                      EnvironmentView, EnvironmentPage, Deployment, DeploymentPage, Deleted,
                      ErrorBody, Ping, JobSpec, Job, JobPage, JobNode, JobNodeList]

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
    "401": "A bearer token is required (the server was started with --token) and was "
           "missing or wrong.",
    "404": "No such environment or deployment.",
    "409": "Conflict: a duplicate name, a stale or reused deployment token, or state "
           "that forbids the request. Nothing changed.",
    "413": "The request body is larger than 1 MiB.",
    "503": "The store is unavailable; try again.",
}


_JOB_ERRORS = {
    "400": "Bad input: malformed JSON, a wrong or unknown field, a bad job id or query "
           "parameter. Nothing changed.",
    "404": "No such job.",
}


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


def _operation(op_id: str, summary: str, description: str, ok: str, ok_schema: str,
               errors: list[str], *, body: str | None = None,
               params: list[dict[str, Any]] | None = None, public: bool = False,
               tag: str = "environments", meanings: dict[str, str] | None = None,
               ok_response: dict[str, Any] | None = None) -> dict[str, Any]:
    """An operation. ``errors`` are its 4xx codes (401 and 503 are added unless
    ``public``); what each means is ``meanings[code]``, else :data:`_ERRORS`' (for the
    jobs tag, :data:`_JOB_ERRORS` first)."""
    responses: dict[str, Any] = {ok: ok_response or _json(
        _ref(ok_schema), "OK" if ok == "200" else "Created")}
    codes = errors + ([] if public else ["401", "503"])
    texts = {**_ERRORS, **(_JOB_ERRORS if tag == "jobs" else {}), **(meanings or {})}
    for code in sorted(codes):
        responses[code] = _json(_ref("ErrorBody"), texts[code])
    op: dict[str, Any] = {"operationId": op_id, "summary": summary, "tags": [tag],
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
_JOB = _path("id", "the job's id")
_JOB_TAG = "jobs"


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a JSON-ready dict)."""
    _, components = msgspec.json.schema_components(
        _MODELS, ref_template="#/components/schemas/{name}")
    components["Name"] = {"title": "Name", **msgspec.json.schema(Name)}
    _describe_job_fields(components)
    try:
        version = metadata.version("skedlib")
    except metadata.PackageNotFoundError:  # running from a source tree
        version = "0"
    paths: dict[str, Any] = {
        "/ping": {"get": _operation(
            "ping", "Liveness", "Answers while the server runs (does not touch the store).",
            "200", "Ping", [], public=True, tag="meta")},
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document", "security": [],
            "tags": ["meta"],
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
        **_job_paths(),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "skedlib REST API", "version": version,
                 "description": "Daemon-per-host environments and their deployments, and "
                                "batch jobs, served by `sked serve`. Errors are JSON "
                                "`{\"error\": code, \"message\": one line}`."},
        "servers": [{"url": BASE_PATH}],
        "security": [{"bearerAuth": []}, {}],  # {}: a server without --token
        "paths": paths,
        "tags": [{"name": "environments",
                  "description": "Daemon-per-host environments and their deployments."},
                 {"name": "jobs", "description": "Batch jobs: run-to-completion commands "
                                                 "that job workers claim from a queue."},
                 {"name": "meta", "description": "The server itself."}],
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "Required only when the server was started with --token "
                               "or $SKED_API_TOKEN."}},
        },
    }


def _job_paths() -> dict[str, Any]:
    """The batch job operations (the seed's submit, cancel, status and log calls)."""
    timeout = {"type": "number", "minimum": 0, "maximum": MAX_WAIT, "default": DEFAULT_WAIT}
    logs_ok = {
        "description": "The job's output (stdout and stderr as they came), raw bytes as "
                       "the command wrote them, streamed with chunked transfer encoding as "
                       "the node sends them. If fetching from the node fails midway the "
                       "response ends without its final chunk, so a client sees an "
                       "incomplete body rather than a clean end.",
        "content": {"text/plain": {"schema": {"type": "string"}}}}
    return {
        "/jobs": {
            "post": _operation(
                "submitJob", "Submit a job",
                "Queues a run-to-completion command; any job worker whose free capacity "
                "fits its requirements may claim it. Units: memory and disk in MiB, "
                "cpu_units 1024 per core, timeout in nanoseconds (0: none). The response "
                "is the queued job, with its id (also in the Location header).",
                "201", "Job", ["400", "409", "413"], body="JobSpec", tag=_JOB_TAG,
                meanings={"400": "Bad input: malformed JSON, a wrong or unknown field "
                                 "(named), an empty command, a bad environment variable "
                                 "name, a bad id. Nothing changed.",
                          "409": "A job with this id already exists. Nothing changed."},
                params=[_query("id", _ref("Name"),
                               "the new job's id (default: a new UUID version 7); a retried "
                               "submit with the same id gets 409 instead of a second job")]),
            "get": _operation(
                "listJobs", "List jobs",
                "Jobs oldest first (ids sort by submit time), a page at a time. A queued "
                "job's reason also says why no node has claimed it.",
                "200", "JobPage", ["400"], tag=_JOB_TAG,
                params=[_query("status", {"enum": list(JOB_STATES)}, "only jobs in this state"),
                        _query("limit", {"type": "integer", "minimum": 1,
                                         "maximum": JOB_MAX_PAGE_SIZE,
                                         "default": JOB_PAGE_SIZE}, "items per page"),
                        _query("next_token", {"type": "string"},
                               "the next_token of the previous page (absent or empty: the "
                               "first page)")]),
        },
        "/jobs/{id}": {
            "parameters": [_JOB],
            "get": _operation(
                "getJob", "Job status",
                "The job: its state, node, attempts, exit code and timestamps. The reason "
                "says why it is in its state; for a queued job, also why no node has "
                "claimed it (no worker running, none large enough, or none with free "
                "resources now).",
                "200", "Job", ["400", "404"], tag=_JOB_TAG),
        },
        "/jobs/{id}/cancel": {
            "parameters": [_JOB],
            "post": _operation(
                "cancelJob", "Cancel a job",
                "Cancels a queued or running job (a running one is stopped by its node); "
                "the response is the canceled job. No request body.",
                "200", "Job", ["400", "404", "409"], tag=_JOB_TAG,
                meanings={"409": "The job already ended (complete, failed or canceled); "
                                 "nothing changed."}),
        },
        "/jobs/{id}/wait": {
            "parameters": [_JOB],
            "get": _operation(
                "waitJob", "Wait for a job to end",
                "A long poll: answers as soon as the job is complete, failed or canceled, "
                f"or after timeout seconds (at most {MAX_WAIT:g}; larger is a 400), with "
                "the job either way: check its status (complete, failed, canceled: it "
                "ended; queued, running: call again).",
                "200", "Job", ["400", "404"], tag=_JOB_TAG,
                params=[_query("timeout", timeout, "seconds to wait at most")]),
        },
        "/jobs/{id}/logs": {
            "parameters": [_JOB],
            "get": _operation(
                "getJobLogs", "A job's output",
                "The output of the job's last attempt from byte offset, fetched from the "
                "node that ran it (job workers keep it; the server holds none). With "
                "follow=true the response goes on as the job writes, until the job ends "
                "(also across a requeue to another node, continuing with the new "
                f"attempt's output); the node holds a quiet stream open {FOLLOW_POLL:g} s "
                "at a time. Without follow, what the node has now.",
                "200", "", ["400", "404", "409"], tag=_JOB_TAG, ok_response=logs_ok,
                meanings={
                    "409": "The job has no output yet: it was never claimed by a worker.",
                    "503": "The store is unavailable, or the node that holds the output "
                           "cannot be reached, answered an error or no longer has it; the "
                           "message says which."},
                params=[_query("offset", {"type": "integer", "minimum": 0, "default": 0},
                               "the first byte to send (resume a read)"),
                        _query("follow", {"type": "boolean", "default": False},
                               "keep streaming until the job ends")]),
        },
        "/nodes": {
            "get": _operation(
                "listJobNodes", "List job workers",
                "The live job workers (skedlib-agent --jobs), by name: capacity, slots, "
                "how they enforce limits, where they serve job output.",
                "200", "JobNodeList", [], tag=_JOB_TAG),
        },
    }
