"""The environments and deployments routes (``/v1/environments…``) over
:class:`~skedlib.environments.Environments`."""

from __future__ import annotations

from skedlib.api.responses import Response
from skedlib.api.routing import Call, QueryParam, Route, boolean, integer
from skedlib.environments.manager import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from skedlib.environments.models import DeploymentCreate, EnvironmentCreate, EnvironmentUpdate

__all__ = ["ROUTES"]

_LIMIT = QueryParam("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE,
                              "default": DEFAULT_PAGE_SIZE}, "items per page", integer)
_NEXT = QueryParam("next_token", {"type": "string"},
                   "the next_token of the previous page (absent: the first page)")
_ENV = {"name": "the environment's name"}


def _create(call: Call) -> Response:
    return Response(201, call.environments.create(call.data))


def _list(call: Call) -> Response:
    return Response(200, call.environments.list(
        cluster=call.query.get("cluster"), limit=call.query.get("limit", DEFAULT_PAGE_SIZE),
        next_token=call.query.get("next_token", "")))


def _get(call: Call) -> Response:
    return Response(200, call.environments.get(call.path["name"]))


def _update(call: Call) -> Response:
    return Response(200, call.environments.update(call.path["name"], call.data))


def _delete(call: Call) -> Response:
    return Response(200, call.environments.delete(
        call.path["name"], keep_tasks=call.query.get("keep_tasks", False)))


def _deploy(call: Call) -> Response:
    req: DeploymentCreate = call.data
    return Response(201, call.environments.deploy(call.path["name"], req.token,
                                                  rollback=req.rollback))


def _deployments(call: Call) -> Response:
    return Response(200, call.environments.deployments(
        call.path["name"], limit=call.query.get("limit", DEFAULT_PAGE_SIZE),
        next_token=call.query.get("next_token", "")))


def _deployment(call: Call) -> Response:
    return Response(200, call.environments.deployment(call.path["name"], call.path["id"]))


ROUTES = (
    Route("POST", "/environments", _create, "createEnvironment", "Create an environment",
          "Stores a new environment with a fresh deployment_token. Nothing runs until it "
          "is deployed. The cluster and the task definition must exist, and no service of "
          "the same name.",
          ok="201", ok_schema="EnvironmentView", errors=("400", "409", "413"),
          body=EnvironmentCreate),
    Route("GET", "/environments", _list, "listEnvironments", "List environments",
          "Environments by name, a page at a time; with health and the status of their "
          "current deployment.",
          ok_schema="EnvironmentPage", errors=("400",),
          query=(QueryParam("cluster", {"type": "string"}, "only this cluster's"),
                 _LIMIT, _NEXT)),
    Route("GET", "/environments/{name}", _get, "getEnvironment", "Describe an environment",
          "With its health and its current deployment's status.",
          ok_schema="EnvironmentView", errors=("400", "404"), path_docs=_ENV),
    Route("PUT", "/environments/{name}", _update, "updateEnvironment",
          "Update an environment",
          "Changes the task definition, constraints, max_parallel or deadline. Takes "
          "effect with the next deployment; the deployment_token is kept.",
          ok_schema="EnvironmentView", errors=("400", "404", "409", "413"),
          body=EnvironmentUpdate, path_docs=_ENV),
    Route("DELETE", "/environments/{name}", _delete, "deleteEnvironment",
          "Delete an environment",
          "Deletes the environment and its deployments, and removes its service from its "
          "cluster, so the scheduler stops its tasks. With keep_tasks=true the service is "
          "kept: its tasks keep running as a plain daemon service.",
          ok_schema="Deleted", errors=("400", "404", "409"), path_docs=_ENV,
          query=(QueryParam("keep_tasks", {"type": "boolean", "default": False},
                            "keep the tasks running (the service stays, detached)",
                            boolean),)),
    Route("POST", "/environments/{name}/deployments", _deploy, "createDeployment", "Deploy",
          "Puts the environment's task definition (or, with rollback, that of the previous "
          "completed deployment) on every eligible host, host by host at most max_parallel "
          "at a time when the version changes. The token must be the environment's current "
          "deployment_token; a deployment replaces it, so a retried request gets 409 and "
          "deploys nothing.",
          ok="201", ok_schema="Deployment", errors=("400", "404", "409", "413"),
          body=DeploymentCreate, path_docs=_ENV),
    Route("GET", "/environments/{name}/deployments", _deployments, "listDeployments",
          "List deployments", "Newest first, a page at a time.",
          ok_schema="DeploymentPage", errors=("400", "404"), query=(_LIMIT, _NEXT),
          path_docs=_ENV),
    Route("GET", "/environments/{name}/deployments/{id}", _deployment, "getDeployment",
          "Describe a deployment", "Its status is derived from the store when read.",
          ok_schema="Deployment", errors=("400", "404"),
          path_docs={**_ENV, "id": "the deployment's id"}),
)
"""The routes, in the document's order."""
