"""blox's daemon-scheduler v1 API (``/blox/v1``) over skedlib's environments and
deployments, so a blox client can drive ``sked serve`` unchanged.

The shapes are blox's (its Swagger 2.0 document, ``daemon-scheduler/swagger/v1``):
camelCase bodies, the deployment token as the ``deploymentToken`` query parameter,
``nextToken`` paging, 200 on create, and errors as a JSON string. Requests pass the same
router steps, :class:`~skedlib.api.auth.RequestGuard` (bearer token) and error mapping as
``/v1`` (:meth:`skedlib.api.app.Api.dispatch`, :func:`~skedlib.api.errors.error_response`);
only the error body's shape differs, and a conflict is a 400 since blox's document has no
409. ``docs/coming-from-blox.md`` maps each field.

``taskDefinition`` is ``name:version``, a bare ``name`` (its latest version, as ECS reads a
bare family) or an ECS task-definition ARN (its family and revision);
``instanceGroup.cluster`` is a name or an ECS cluster ARN (its name). The region and
account of an ARN are not checked: one skedlib store is one set of clusters.
"""

from __future__ import annotations

import contextlib
import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Literal, TypeVar

import msgspec

from skedlib.api.errors import error_response
from skedlib.api.responses import Response
from skedlib.api.routing import Call, QueryParam, Route, Router
from skedlib.environments.manager import DEFAULT_PAGE_SIZE
from skedlib.environments.models import Deployment as SkedDeployment
from skedlib.environments.models import (
    EnvironmentCreate,
    EnvironmentView,
    ErrorBody,
    Ping,
)
from skedlib.errors import NotFound, ValidationError
from skedlib.keys import validate_name

if TYPE_CHECKING:
    from skedlib.api.app import Api

__all__ = ["BASE_PATH", "PAGE_SIZE", "ROUTES", "CreateEnvironmentRequest", "Deployment",
           "Deployments", "Environment", "Environments", "InstanceGroup", "cluster_name",
           "handle", "serves", "task_definition"]

BASE_PATH = "/blox/v1"
"""blox's API is under this prefix (blox served it under ``/v1`` on its own port)."""

PAGE_SIZE = DEFAULT_PAGE_SIZE
"""Items per page of a listing (blox's API has no page-size parameter)."""

MAX_VERSION = 2**53
"""The largest task definition version (revision) accepted, as ``/v1`` accepts."""

T = TypeVar("T")

_TASK_DEFINITION_ARN = re.compile(
    r"arn:[^:]+:ecs:[^:]*:[^:]*:task-definition/(?P<family>[^:]+):(?P<revision>[0-9]+)")
_CLUSTER_ARN = re.compile(r"arn:[^:]+:ecs:[^:]*:[^:]*:cluster/(?P<name>.+)")


class InstanceGroup(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where an environment runs: ``cluster``, a skedlib cluster's name or an ECS cluster
    ARN (``arn:aws:ecs:REGION:ACCOUNT:cluster/NAME``) naming one."""

    cluster: str = ""


class CreateEnvironmentRequest(msgspec.Struct, kw_only=True, rename="camel",
                               forbid_unknown_fields=True):
    """``POST /blox/v1/environments``: blox's CreateEnvironmentRequest."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[a-zA-Z0-9-_]{1,30}$")]
    instance_group: InstanceGroup
    task_definition: str


class Environment(msgspec.Struct, kw_only=True, rename="camel"):
    """blox's Environment: ``taskDefinition`` is always answered as ``name:version``."""

    name: str
    deployment_token: str
    instance_group: InstanceGroup
    task_definition: str
    health: Literal["healthy", "unhealthy"]


class Environments(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    """A page of environments by name; ``nextToken`` only when there are more."""

    items: list[Environment]
    next_token: str = ""


class Deployment(msgspec.Struct, kw_only=True, rename="camel"):
    """blox's Deployment; ``failedInstances`` are skedlib host names."""

    id: str
    status: Literal["pending", "running", "completed"]
    task_definition: str
    environment_name: str
    failed_instances: list[str]


class Deployments(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    """A page of deployments, newest first; ``nextToken`` only when there are more."""

    items: list[Deployment]
    next_token: str = ""


_STATUS: Mapping[str, Literal["pending", "running", "completed"]] = {
    "pending": "pending", "in_progress": "running", "completed": "completed",
    # blox has no failed state: its deployments complete, listing the failed instances
    "failed": "completed"}


def cluster_name(value: str, field: str) -> str:
    """The skedlib cluster named by ``value`` (a name or an ECS cluster ARN);
    :class:`ValidationError` naming ``field`` if it is neither."""
    match = _CLUSTER_ARN.fullmatch(value)
    if match is None and value.startswith("arn:"):
        raise ValidationError(f"{field}: {value!r} is not an ECS cluster ARN "
                              "(arn:aws:ecs:REGION:ACCOUNT:cluster/NAME)")
    name = match["name"] if match else value
    try:
        return validate_name(name, "cluster name", allow_dash=False)
    except ValidationError as exc:
        raise ValidationError(f"{field}: {exc}") from None


def task_definition(value: str, latest: Callable[[str], int | None]) -> tuple[str, int]:
    """The (name, version) that ``taskDefinition`` ``value`` names: ``name:version``, an
    ECS task-definition ARN, or a bare ``name`` whose ``latest`` version is meant
    (:class:`NotFound` when it has none); :class:`ValidationError` if it is none of these."""
    field = "field taskDefinition"
    match = _TASK_DEFINITION_ARN.fullmatch(value)
    if match is not None:
        name, revision = match["family"], match["revision"]
    elif value.startswith("arn:"):
        raise ValidationError(f"{field}: {value!r} is not an ECS task-definition ARN "
                              "(arn:aws:ecs:REGION:ACCOUNT:task-definition/FAMILY:REVISION)")
    else:
        name, colon, revision = value.rpartition(":") if ":" in value else (value, "", "")
        if colon and not (revision.isascii() and revision.isdigit()):
            raise ValidationError(f"{field}: {value!r}: expected NAME:VERSION with a "
                                  "whole-number version")
    try:
        validate_name(name, "task definition name")
    except ValidationError as exc:
        raise ValidationError(f"{field}: {exc}") from None
    if not revision:
        version = latest(name)
        if version is None:
            raise NotFound(f'{field}: task definition "{name}" has no version')
        return name, version
    # the length first: int() refuses a string of thousands of digits with a ValueError
    if len(revision) > len(str(MAX_VERSION)) or int(revision) > MAX_VERSION:
        raise ValidationError(f"{field}: version {revision} is larger than {MAX_VERSION}")
    return name, int(revision)


def _environment(view: EnvironmentView) -> Environment:
    return Environment(
        name=view.name, deployment_token=view.deployment_token,
        instance_group=InstanceGroup(cluster=view.cluster),
        task_definition=f"{view.task_name}:{view.task_version}",
        # blox reports healthy unless it saw otherwise, so never deployed is healthy
        health="unhealthy" if view.health == "unhealthy" else "healthy")


def _deployment(dep: SkedDeployment) -> Deployment:
    return Deployment(id=dep.id, status=_STATUS[dep.status],
                      task_definition=f"{dep.task_name}:{dep.task_version}",
                      environment_name=dep.environment,
                      failed_instances=[f.host for f in dep.failed_hosts])


def _paged(call: Call, read: Callable[[str], T]) -> T:
    """``read(next_token)`` with the ``nextToken`` given; the manager's complaint about
    the token names blox's parameter."""
    try:
        return read(call.query.get("nextToken", ""))
    except ValidationError as exc:
        field, _, why = str(exc).partition(": ")
        if field != "query parameter next_token":
            raise
        raise ValidationError(f"query parameter nextToken: {why}") from None


def _ping(call: Call) -> Response:
    return Response(200, Ping())


def _create(call: Call) -> Response:
    req: CreateEnvironmentRequest = call.data
    label = f'environment "{req.name}"'
    if not req.instance_group.cluster:
        raise ValidationError(f"{label}: field instanceGroup.cluster: required (the "
                              "skedlib cluster, by name or ECS cluster ARN)")
    cluster = cluster_name(req.instance_group.cluster,
                           f"{label}: field instanceGroup.cluster")
    if call.client.cluster(cluster) is None:  # blox answers a missing cluster with 404
        raise NotFound(f'{label}: field instanceGroup.cluster: cluster "{cluster}" does '
                       "not exist")

    def latest(name: str) -> int | None:
        versions = [td.version for td in call.client.task_definitions(name)]
        return max(versions) if versions else None

    name, version = task_definition(req.task_definition, latest)
    if call.client.task_definition(name, version) is None:
        raise NotFound(f'{label}: field taskDefinition: task definition "{name}" version '
                       f"{version} does not exist")
    view = call.environments.create(EnvironmentCreate(
        name=req.name, cluster=cluster, task_name=name, task_version=version))
    return Response(200, _environment(view))


def _list(call: Call) -> Response:
    cluster = call.query.get("cluster")
    name = cluster_name(cluster, "query parameter cluster") if cluster else None
    page = _paged(call, lambda token: call.environments.list(
        cluster=name, limit=PAGE_SIZE, next_token=token))
    return Response(200, Environments(items=[_environment(v) for v in page.items],
                                      next_token=page.next_token))


def _get(call: Call) -> Response:
    return Response(200, _environment(call.environments.get(call.path["name"])))


def _delete(call: Call) -> Response:
    # blox's document has no 404 here: deleting what is gone succeeds
    with contextlib.suppress(NotFound):
        call.environments.delete(call.path["name"])
    return Response(200, None)


def _deploy(call: Call) -> Response:
    token = call.query.get("deploymentToken")
    if token is None:
        raise ValidationError("query parameter deploymentToken: required (the "
                              "environment's deploymentToken)")
    return Response(200, _deployment(call.environments.deploy(call.path["name"], token)))


def _deployments(call: Call) -> Response:
    page = _paged(call, lambda token: call.environments.deployments(
        call.path["name"], limit=PAGE_SIZE, next_token=token))
    return Response(200, Deployments(items=[_deployment(d) for d in page.items],
                                     next_token=page.next_token))


def _get_deployment(call: Call) -> Response:
    return Response(200, _deployment(call.environments.deployment(call.path["name"],
                                                                  call.path["id"])))


_NEXT = QueryParam("nextToken", {"type": "string"},
                   "the nextToken of the previous page (absent: the first page)")
_TOKEN = QueryParam("deploymentToken", {"type": "string"},
                    "the environment's current deploymentToken (required)")

ROUTES = (
    Route("GET", "/ping", _ping, "ping", "Liveness", "Answers while the server runs.",
          public=True, tag="blox"),
    Route("POST", "/environments", _create, "createEnvironment", "Create an environment",
          "A skedlib environment; nothing runs until it is deployed.",
          body=CreateEnvironmentRequest, tag="blox"),
    Route("GET", "/environments", _list, "listEnvironments", "List environments",
          "By name, a page at a time.",
          query=(_NEXT, QueryParam("cluster", {"type": "string"},
                                   "only this cluster's (a name or an ECS cluster ARN)")),
          tag="blox"),
    Route("GET", "/environments/{name}", _get, "getEnvironment", "Describe an environment",
          "With its health.", tag="blox"),
    Route("DELETE", "/environments/{name}", _delete, "deleteEnvironment",
          "Delete an environment", "Its service is removed, so its tasks stop.", tag="blox"),
    Route("POST", "/environments/{name}/deployments", _deploy, "createDeployment",
          "Deploy", "Every eligible host of the cluster gets the task definition.",
          query=(_TOKEN,), tag="blox"),
    Route("GET", "/environments/{name}/deployments", _deployments, "listDeployments",
          "List deployments", "Newest first, a page at a time.", query=(_NEXT,),
          tag="blox"),
    Route("GET", "/environments/{name}/deployments/{id}", _get_deployment,
          "getDeployment", "Describe a deployment", "Its status brought up to date.",
          tag="blox"),
)
"""blox's operations, in its document's order."""

_ROUTER = Router(ROUTES)


def serves(target: str) -> bool:
    """True when the request target ``target`` is under :data:`BASE_PATH`."""
    path = urllib.parse.urlsplit(target).path
    return path == BASE_PATH or path.startswith(BASE_PATH + "/")


def handle(api: Api, method: str, target: str, headers: Mapping[str, str], body: bytes
           ) -> Response:
    """Serve one request under :data:`BASE_PATH` through ``api``'s router steps and guard;
    never raises: an error is answered as blox does, a JSON string with the status
    skedlib's error mapping gives it (409 becomes 400)."""
    try:
        return api.dispatch(_ROUTER, BASE_PATH, "blox's daemon-scheduler API document",
                            method, urllib.parse.urlsplit(target), headers, body)
    except Exception as exc:
        response = error_response(exc, f"{method} {target}")
    message = response.body.message if isinstance(response.body, ErrorBody) \
        else str(response.body)
    return Response(400 if response.status == 409 else response.status, message,
                    response.headers)
