"""The objects of environments and deployments: what is stored, and the REST API's bodies.

Stored (JSON, same rules as :mod:`skedlib.models`: new fields get defaults, unknown
fields are ignored):

- :class:`Environment` under ``config/environments/<name>``: what should run on every
  eligible host of a cluster, and the token the next deployment must present;
- :class:`Deployment` under ``state/deployments/<environment>/<id>``: one change of what
  runs, and how it went.

Request bodies (:class:`EnvironmentCreate`, :class:`EnvironmentUpdate`,
:class:`DeploymentCreate`) refuse unknown fields, so a typo is a 400 naming the field
rather than a silently ignored setting. Durations in these bodies are seconds (floats).
Field descriptions are ``msgspec.Meta`` annotations, so they reach the OpenAPI document.

The jobs routes' bodies are those of :mod:`skedlib.jobs.models` (where a job's
``timeout`` is nanoseconds, as stored); :class:`JobNodeList` wraps the job workers for
``GET /v1/nodes``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from skedlib.jobs.models import JobNode

__all__ = [
    "DEFAULT_DEPLOYMENT_DEADLINE",
    "HISTORY_LIMIT",
    "ClusterName",
    "Deleted",
    "Deployment",
    "DeploymentCreate",
    "DeploymentPage",
    "DeploymentStatus",
    "Environment",
    "EnvironmentCreate",
    "EnvironmentHealth",
    "EnvironmentPage",
    "EnvironmentUpdate",
    "EnvironmentView",
    "ErrorBody",
    "FailedHost",
    "JobNodeList",
    "Name",
    "Ping",
]

DEFAULT_DEPLOYMENT_DEADLINE = 600.0
"""Seconds after which a deployment that has not completed is failed (10 min)."""

HISTORY_LIMIT = 20
"""Deployments kept per environment; older ones are pruned by the next deployment."""

DeploymentStatus = Literal["pending", "in_progress", "completed", "failed"]
"""``pending`` → ``in_progress`` → ``completed``, or ``failed``. Deployments are stored
``in_progress`` at once (the service is written in the same transaction); ``pending``
exists for blox's lifecycle and is never stored by skedlib."""

EnvironmentHealth = Literal["unknown", "healthy", "unhealthy"]


def _d(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)


_NAME_PATTERN = r"^[^\s/\x00-\x1f\x7f]+$"

Name = Annotated[str, msgspec.Meta(
    min_length=1, max_length=128, pattern=_NAME_PATTERN,
    description="1-128 characters; no '/', whitespace or control characters; not '.' "
                "and no '..'")]
"""A name that can be one segment of a key (see :func:`skedlib.keys.validate_name`)."""

ClusterName = Annotated[str, msgspec.Meta(
    min_length=1, max_length=128, pattern=r"^[^\s/\x00-\x1f\x7f-]+$",
    description="a cluster name: as any name, and without '-'")]
"""A cluster name: a :data:`Name` without ``-``."""

Version = Annotated[int, msgspec.Meta(ge=0, le=2**53, description="a task definition "
                                                                   "version")]
Constraint = Annotated[str, msgspec.Meta(
    min_length=1, max_length=1000,
    description="a host constraint, e.g. \"attribute:zone == a\"")]
Constraints = Annotated[list[Constraint], msgspec.Meta(
    max_length=64, description="host constraints, as a service's; hosts that do not "
                               "satisfy them get no task")]
MaxParallel = Annotated[int, msgspec.Meta(
    ge=1, le=100_000, description="during a version change, at most this many hosts are "
                                  "replaced at once")]
Deadline = Annotated[float, msgspec.Meta(
    gt=0, le=7 * 86400, description="seconds after which a deployment that has not "
                                    "completed fails")]
Token = Annotated[str, msgspec.Meta(
    min_length=1, max_length=256,
    description="the environment's current deployment_token")]


class Environment(msgspec.Struct, kw_only=True):
    """One task definition on every eligible host of a cluster, changed by deployments.

    The environment is materialised as a service of the same name (scheduler
    ``daemon``) listed in ``cluster``; only a deployment writes that service.
    """

    name: Annotated[str, _d("the environment's name, also the name of its service")]
    cluster: Annotated[str, _d("the cluster whose hosts run it")]
    task_name: Annotated[str, _d("the task definition the next deployment deploys")]
    task_version: Annotated[int, _d("its version")]
    constraints: Annotated[list[str], _d(
        "host constraints, as a service's; hosts that do not satisfy them get no task")] = \
        msgspec.field(default_factory=list)
    max_parallel: Annotated[int, _d(
        "during a version change, at most this many hosts are replaced at once")] = 1
    deployment_deadline: Annotated[float, _d(
        "seconds after which a deployment that has not completed is failed")] = \
        DEFAULT_DEPLOYMENT_DEADLINE
    deployment_token: Annotated[str, _d(
        "the next deployment must present this token; every deployment replaces it, so "
        "a retried request cannot deploy twice")] = ""
    current_deployment: Annotated[str, _d(
        "the id of the latest deployment (\"\" before the first)")] = ""
    deployment_count: Annotated[int, _d(
        "deployments made so far; the next one's id is this + 1, zero-padded to 8 "
        "digits")] = 0
    created_at: Annotated[float, _d("seconds since the epoch")] = 0.0
    updated_at: Annotated[float, _d("seconds since the epoch")] = 0.0


class EnvironmentView(Environment, kw_only=True):
    """An environment as the API returns it: the stored fields, plus ``health`` and
    ``deployment_status`` derived from the store when read."""

    health: Annotated[EnvironmentHealth, _d(
        "healthy: the scheduler reports the service ok and every task runs healthy; "
        "unhealthy: not so; unknown: never deployed")] = "unknown"
    deployment_status: Annotated[str, _d(
        "the status of the current deployment (\"\" before the first)")] = ""
    revision: Annotated[int, _d("the store revision of the environment's last write")] = 0


class FailedHost(msgspec.Struct, kw_only=True):
    """A host where a deployment did not succeed, and why."""

    host: str
    reason: str


class Deployment(msgspec.Struct, kw_only=True):
    """One deployment of an environment: the task definition it put on every eligible
    host, and how that went."""

    id: Annotated[str, _d("sequential per environment: 00000001, 00000002 …")]
    environment: str
    cluster: str
    task_name: Annotated[str, _d("the task definition deployed")]
    task_version: int
    constraints: list[str] = msgspec.field(default_factory=list)
    max_parallel: int = 1
    status: Annotated[DeploymentStatus, _d(
        "in_progress until every eligible host runs the version healthy (completed), or "
        "until a host rejects it, the scheduler fails, it is superseded or the deadline "
        "passes (failed); pending is never stored")] = "pending"
    rollback_to: Annotated[str, _d(
        "for a rollback: the id of the earlier deployment whose task definition it "
        "restores")] = ""
    previous_version: Annotated[int | None, _d(
        "the task version the environment's service had before (null: none)")] = None
    failed_hosts: Annotated[list[FailedHost], _d("hosts that failed, with why")] = \
        msgspec.field(default_factory=list)
    message: Annotated[str, _d("why it failed, or what it waits for")] = ""
    hosts: Annotated[int, _d("eligible hosts, as the scheduler last counted them")] = 0
    updated_hosts: Annotated[int, _d("hosts running the deployed version healthy")] = 0
    started_at: Annotated[float, _d("seconds since the epoch")] = 0.0
    ended_at: Annotated[float, _d("seconds since the epoch; 0 while in progress")] = 0.0
    deadline: Annotated[float, _d(
        "seconds after started_at at which it fails if not completed")] = \
        DEFAULT_DEPLOYMENT_DEADLINE


class EnvironmentCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/environments``: a new environment (nothing runs until it is deployed)."""

    name: Name
    cluster: ClusterName
    task_name: Name
    task_version: Version
    constraints: Constraints = msgspec.field(default_factory=list)
    max_parallel: MaxParallel = 1
    deployment_deadline: Deadline = DEFAULT_DEPLOYMENT_DEADLINE


class EnvironmentUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``PUT /v1/environments/{name}``: the fields to change (absent or null: unchanged).
    Takes effect with the next deployment."""

    task_name: Name | None = None
    task_version: Version | None = None
    constraints: Constraints | None = None
    max_parallel: MaxParallel | None = None
    deployment_deadline: Deadline | None = None


class DeploymentCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/environments/{name}/deployments``."""

    token: Token
    rollback: Annotated[bool, _d(
        "deploy the task definition of the previous completed deployment instead of the "
        "environment's (which is set back to it)")] = False


class EnvironmentPage(msgspec.Struct, kw_only=True):
    """One page of environments, by name."""

    items: list[EnvironmentView]
    next_token: Annotated[str, _d(
        "pass as next_token for the next page; \"\" on the last page")] = ""


class DeploymentPage(msgspec.Struct, kw_only=True):
    """One page of an environment's deployments, newest first."""

    items: list[Deployment]
    next_token: Annotated[str, _d(
        "pass as next_token for the next page; \"\" on the last page")] = ""


class Deleted(msgspec.Struct, kw_only=True):
    """What ``DELETE /v1/environments/{name}`` did."""

    name: str
    kept_tasks: Annotated[bool, _d("the environment's tasks keep running")]
    message: str


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every 4xx and 5xx response: a code and one line saying what was wrong."""

    error: Annotated[str, _d(
        "bad_request, unauthorized, not_found, method_not_allowed, conflict, "
        "payload_too_large, unavailable or internal")]
    message: Annotated[str, _d("one line naming the object and field")]


class JobNodeList(msgspec.Struct, kw_only=True):
    """``GET /v1/nodes``: the live job workers (``skedlib-agent --jobs``), by name."""

    items: list[JobNode]


class Ping(msgspec.Struct, kw_only=True):
    """``GET /v1/ping``."""

    status: str = "ok"
