"""The storage key schema: one builder and one parser for every key skedlib writes.

All keys live under a configurable prefix (default ``sked/``)::

    config/clusters/<name>                      desired state
    config/services/<name>
    config/task_definitions/<name>/<version>
    config/hosts/<name>                         operator-side host settings
    config/environments/<name>                  a daemon-per-host environment (sked serve)
    state/tasks/<task_id>                       issued state: the task object
    state/hosts/<host>/<task_id>                issued state indexed by host
    state/health/<task_id>                      actual state written by the agent
    state/agents/<host>                         live host record, bound to a lease
    state/services/<cluster>/<service>          a scheduler's report on one service
    state/alloc/<host>                          bumped by every commit placing on the host
    state/rollouts/<cluster>/<service>          a service's rollouts: the current one, history
    state/deployments/<environment>/<id>        an environment's deployments
    locks/<cluster>/<service>                   scheduler locks
    jobs/records/<job_id>                       a batch job (seed 003)
    jobs/status/queued/<job_id>                 the job's record, while it waits to be claimed
    jobs/status/running/<node>/<job_id>         claimed by a job worker
    jobs/status/<complete|failed|canceled>/<epoch>/<job_id>   finished, by UNIX epoch
    jobs/nodes/<node>                           a live job worker, bound to its lease
    jobs/cleaner                                the elected cleaner's lock

Names are validated before any key is built, so a bad name is a clear
:class:`~skedlib.errors.InvalidName`, never a stray key.
"""

from __future__ import annotations

import re

import msgspec

from skedlib.errors import InvalidName, ValidationError
from skedlib.models import TaskId

__all__ = [
    "DEFAULT_PREFIX",
    "MAX_NAME_LENGTH",
    "AgentKey",
    "ClusterKey",
    "DeploymentKey",
    "EnvironmentKey",
    "HealthKey",
    "HostAllocKey",
    "HostConfigKey",
    "HostTaskKey",
    "JobCleanerKey",
    "JobFinishedKey",
    "JobKey",
    "JobNodeKey",
    "JobQueuedKey",
    "JobRunningKey",
    "Key",
    "Keyspace",
    "LockKey",
    "RolloutKey",
    "ServiceKey",
    "ServiceStatusKey",
    "TaskDefinitionKey",
    "TaskKey",
    "prefix_end",
    "validate_name",
]

DEFAULT_PREFIX = "sked/"
MAX_NAME_LENGTH = 128
#: whitespace, ``/``, control characters (C0, DEL, C1), unpaired surrogates (not UTF-8),
#: and invisible format characters: soft hyphen, zero-width and bidirectional controls,
#: BOM. Whitespace aside, a fixed list rather than the running Python's Unicode tables,
#: so a name means the same to every Python version.
_BAD_CHAR = re.compile(r"[\s/\x00-\x1f\x7f-\x9f\xad\u200b-\u200f\u202a-\u202e"
                       r"\u2060-\u206f\ufeff\ud800-\udfff]")


def validate_name(name: object, what: str = "name", *, allow_dash: bool = True) -> str:
    """Return ``name`` if it can be one segment of a key, else raise :class:`InvalidName`.

    A name is 1 to 128 characters with no ``/``, whitespace, control characters,
    unpaired surrogates or invisible format characters (zero-width, bidirectional
    controls), and is neither ``.`` nor ``..`` nor contains ``..``. ``allow_dash=False``
    also refuses ``-`` (cluster names, so task ids stay parseable).
    """
    if not isinstance(name, str):
        raise InvalidName(f"invalid {what} {name!r}: must be a string")
    if not name:
        raise InvalidName(f"invalid {what} '': must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"invalid {what} {name[:20]!r}…: longer than {MAX_NAME_LENGTH} "
                          "characters")
    bad = _BAD_CHAR.search(name)
    if bad:
        raise InvalidName(f"invalid {what} {name!r}: must not contain {bad.group()!r}")
    if ".." in name or name == ".":
        raise InvalidName(f"invalid {what} {name!r}: must not be '.' or contain '..'")
    if not allow_dash and "-" in name:
        raise InvalidName(f"invalid {what} {name!r}: must not contain '-' (task ids are "
                          "<cluster>-<service>-<version>-<instance>)")
    return name


def _validate_task_id(task_id: str) -> TaskId:
    try:
        parsed = TaskId.parse(task_id)
    except ValueError as exc:
        raise InvalidName(f"invalid task id {task_id!r}: expected "
                          "<cluster>-<service>-<version>-<instance>") from exc
    validate_name(parsed.cluster, "cluster name", allow_dash=False)
    validate_name(parsed.service, "service name")
    validate_name(task_id, "task id")
    return parsed


def prefix_end(prefix: str) -> str:
    """The smallest string greater than every string that starts with ``prefix``."""
    if not prefix:
        return "\U0010ffff"
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class ClusterKey(msgspec.Struct, frozen=True, tag=True):
    """``config/clusters/<name>``."""

    name: str


class ServiceKey(msgspec.Struct, frozen=True, tag=True):
    """``config/services/<name>``."""

    name: str


class TaskDefinitionKey(msgspec.Struct, frozen=True, tag=True):
    """``config/task_definitions/<name>/<version>``."""

    name: str
    version: int


class HostConfigKey(msgspec.Struct, frozen=True, tag=True):
    """``config/hosts/<name>``."""

    name: str


class TaskKey(msgspec.Struct, frozen=True, tag=True):
    """``state/tasks/<task_id>``."""

    task_id: str


class HostTaskKey(msgspec.Struct, frozen=True, tag=True):
    """``state/hosts/<host>/<task_id>``."""

    host: str
    task_id: str


class HealthKey(msgspec.Struct, frozen=True, tag=True):
    """``state/health/<task_id>``."""

    task_id: str


class AgentKey(msgspec.Struct, frozen=True, tag=True):
    """``state/agents/<host>``."""

    host: str


class LockKey(msgspec.Struct, frozen=True, tag=True):
    """``locks/<cluster>/<service>``."""

    cluster: str
    service: str


class ServiceStatusKey(msgspec.Struct, frozen=True, tag=True):
    """``state/services/<cluster>/<service>``: a :class:`~skedlib.models.ServiceStatus`."""

    cluster: str
    service: str


class HostAllocKey(msgspec.Struct, frozen=True, tag=True):
    """``state/alloc/<host>``: its revision changes with every commit that places a task
    on the host (see :mod:`skedlib.scheduling.commit`)."""

    host: str


class RolloutKey(msgspec.Struct, frozen=True, tag=True):
    """``state/rollouts/<cluster>/<service>``: the service's rollout history."""

    cluster: str
    service: str


class EnvironmentKey(msgspec.Struct, frozen=True, tag=True):
    """``config/environments/<name>``: an :class:`~skedlib.environments.Environment`."""

    name: str


class DeploymentKey(msgspec.Struct, frozen=True, tag=True):
    """``state/deployments/<environment>/<id>``: a :class:`~skedlib.environments.Deployment`."""

    environment: str
    deployment_id: str


class JobKey(msgspec.Struct, frozen=True, tag=True):
    """``jobs/records/<job_id>``: a :class:`~skedlib.jobs.Job` record."""

    job_id: str


class JobQueuedKey(msgspec.Struct, frozen=True, tag=True):
    """``jobs/status/queued/<job_id>``: the job waits to be claimed."""

    job_id: str


class JobRunningKey(msgspec.Struct, frozen=True, tag=True):
    """``jobs/status/running/<node>/<job_id>``: the job runs on ``node``."""

    node: str
    job_id: str


class JobFinishedKey(msgspec.Struct, frozen=True, tag=True):
    """``jobs/status/<state>/<epoch>/<job_id>``: the job ended (complete, failed, canceled)."""

    state: str
    epoch: int
    job_id: str


class JobNodeKey(msgspec.Struct, frozen=True, tag=True):
    """``jobs/nodes/<node>``: a live job worker's record, bound to its lease."""

    node: str


class JobCleanerKey(msgspec.Struct, frozen=True, tag=True):
    """``jobs/cleaner``: the lock of the elected job cleaner."""


FINISHED_JOB_STATES = ("complete", "failed", "canceled")
EPOCH_DIGITS = 10


Key = (ClusterKey | ServiceKey | TaskDefinitionKey | HostConfigKey | TaskKey | HostTaskKey
       | HealthKey | AgentKey | LockKey | ServiceStatusKey | HostAllocKey | RolloutKey
       | EnvironmentKey | DeploymentKey | JobKey | JobQueuedKey | JobRunningKey
       | JobFinishedKey | JobNodeKey | JobCleanerKey)


class Keyspace:
    """Builds and parses skedlib's keys under one prefix.

    >>> ks = Keyspace()
    >>> ks.task("default-web-2-0")
    'sked/state/tasks/default-web-2-0'
    >>> ks.parse("sked/state/hosts/h1/default-web-2-0")
    HostTaskKey(host='h1', task_id='default-web-2-0')
    """

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        for segment in prefix.split("/")[:-1]:
            validate_name(segment, "key prefix segment")
        self.prefix = prefix

    # -- prefixes -------------------------------------------------------------------------
    @property
    def clusters(self) -> str:
        """Prefix of every cluster key."""
        return f"{self.prefix}config/clusters/"

    @property
    def services(self) -> str:
        """Prefix of every service key."""
        return f"{self.prefix}config/services/"

    @property
    def task_definitions(self) -> str:
        """Prefix of every task definition key."""
        return f"{self.prefix}config/task_definitions/"

    def task_definition_versions(self, name: str) -> str:
        """Prefix of every version of one task definition."""
        return f"{self.task_definitions}{validate_name(name, 'task definition name')}/"

    @property
    def host_configs(self) -> str:
        """Prefix of every operator-side host setting."""
        return f"{self.prefix}config/hosts/"

    @property
    def config(self) -> str:
        """Prefix of the whole desired state."""
        return f"{self.prefix}config/"

    @property
    def tasks(self) -> str:
        """Prefix of every issued task."""
        return f"{self.prefix}state/tasks/"

    def host_tasks(self, host: str) -> str:
        """Prefix an agent watches: the tasks issued to ``host``."""
        return f"{self.prefix}state/hosts/{validate_name(host, 'host name')}/"

    @property
    def all_host_tasks(self) -> str:
        """Prefix of the issued state indexed by host."""
        return f"{self.prefix}state/hosts/"

    @property
    def health(self) -> str:
        """Prefix of every task's actual state."""
        return f"{self.prefix}state/health/"

    @property
    def agents(self) -> str:
        """Prefix of every live host record."""
        return f"{self.prefix}state/agents/"

    @property
    def locks(self) -> str:
        """Prefix of every scheduler lock."""
        return f"{self.prefix}locks/"

    @property
    def service_statuses(self) -> str:
        """Prefix of every service status record."""
        return f"{self.prefix}state/services/"

    @property
    def host_allocs(self) -> str:
        """Prefix of every host allocation marker."""
        return f"{self.prefix}state/alloc/"

    @property
    def rollouts(self) -> str:
        """Prefix of every rollout history."""
        return f"{self.prefix}state/rollouts/"

    @property
    def environments(self) -> str:
        """Prefix of every environment."""
        return f"{self.prefix}config/environments/"

    @property
    def deployments(self) -> str:
        """Prefix of every deployment record."""
        return f"{self.prefix}state/deployments/"

    def environment_deployments(self, environment: str) -> str:
        """Prefix of the deployments of one environment."""
        return f"{self.deployments}{validate_name(environment, 'environment name')}/"

    @property
    def jobs(self) -> str:
        """Prefix of everything about batch jobs."""
        return f"{self.prefix}jobs/"

    @property
    def job_records(self) -> str:
        """Prefix of every job record."""
        return f"{self.prefix}jobs/records/"

    @property
    def jobs_queued(self) -> str:
        """Prefix job workers watch: the queued jobs."""
        return f"{self.prefix}jobs/status/queued/"

    @property
    def jobs_running(self) -> str:
        """Prefix of every running job, by node."""
        return f"{self.prefix}jobs/status/running/"

    def node_jobs_running(self, node: str) -> str:
        """Prefix of the jobs running on ``node``."""
        return f"{self.jobs_running}{validate_name(node, 'node name')}/"

    def jobs_finished(self, state: str) -> str:
        """Prefix of the jobs that ended in ``state`` (complete, failed, canceled), by epoch."""
        if state not in FINISHED_JOB_STATES:
            raise InvalidName(f"invalid finished job state {state!r}: expected one of "
                              f"{', '.join(FINISHED_JOB_STATES)}")
        return f"{self.prefix}jobs/status/{state}/"

    @property
    def job_nodes(self) -> str:
        """Prefix of every live job worker's record."""
        return f"{self.prefix}jobs/nodes/"

    # -- keys -----------------------------------------------------------------------------
    def cluster(self, name: str) -> str:
        """Key of a cluster."""
        return self.clusters + validate_name(name, "cluster name", allow_dash=False)

    def service(self, name: str) -> str:
        """Key of a service."""
        return self.services + validate_name(name, "service name")

    def task_definition(self, name: str, version: int) -> str:
        """Key of one version of a task definition."""
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise InvalidName(f"invalid task definition version {version!r}: must be an "
                              "integer ≥ 0")
        return f"{self.task_definition_versions(name)}{version}"

    def host_config(self, name: str) -> str:
        """Key of a host's operator-side settings."""
        return self.host_configs + validate_name(name, "host name")

    def task(self, task_id: str) -> str:
        """Key of an issued task."""
        _validate_task_id(task_id)
        return self.tasks + task_id

    def host_task(self, host: str, task_id: str) -> str:
        """Key of an issued task in its host's index."""
        _validate_task_id(task_id)
        return self.host_tasks(host) + task_id

    def task_health(self, task_id: str) -> str:
        """Key of a task's actual state."""
        _validate_task_id(task_id)
        return self.health + task_id

    def agent(self, host: str) -> str:
        """Key of a host's live record."""
        return self.agents + validate_name(host, "host name")

    def lock(self, cluster: str, service: str) -> str:
        """Key of the scheduler lock of one service in one cluster."""
        return (f"{self.locks}{validate_name(cluster, 'cluster name', allow_dash=False)}/"
                f"{validate_name(service, 'service name')}")

    def service_status(self, cluster: str, service: str) -> str:
        """Key of the status record of one service in one cluster."""
        return (f"{self.service_statuses}"
                f"{validate_name(cluster, 'cluster name', allow_dash=False)}/"
                f"{validate_name(service, 'service name')}")

    def host_alloc(self, host: str) -> str:
        """Key of a host's allocation marker (bumped by every commit placing on it)."""
        return self.host_allocs + validate_name(host, "host name")

    def rollout(self, cluster: str, service: str) -> str:
        """Key of the rollout history of one service in one cluster."""
        return (f"{self.rollouts}{validate_name(cluster, 'cluster name', allow_dash=False)}/"
                f"{validate_name(service, 'service name')}")

    def environment(self, name: str) -> str:
        """Key of an environment."""
        return self.environments + validate_name(name, "environment name")

    def deployment(self, environment: str, deployment_id: str) -> str:
        """Key of one deployment of an environment."""
        return (self.environment_deployments(environment)
                + validate_name(deployment_id, "deployment id"))

    def job(self, job_id: str) -> str:
        """Key of a job record."""
        return self.job_records + validate_name(job_id, "job id")

    def job_queued(self, job_id: str) -> str:
        """Key marking a job queued."""
        return self.jobs_queued + validate_name(job_id, "job id")

    def job_running(self, node: str, job_id: str) -> str:
        """Key marking a job running on ``node``."""
        return self.node_jobs_running(node) + validate_name(job_id, "job id")

    def job_finished(self, state: str, epoch: int, job_id: str) -> str:
        """Key marking a job ended in ``state`` at UNIX time ``epoch`` (seconds)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not (
                0 <= epoch < 10 ** EPOCH_DIGITS):
            raise InvalidName(f"invalid job epoch {epoch!r}: must be an integer in "
                              f"[0, 10^{EPOCH_DIGITS})")
        return (f"{self.jobs_finished(state)}{epoch:0{EPOCH_DIGITS}d}/"
                f"{validate_name(job_id, 'job id')}")

    def job_node(self, node: str) -> str:
        """Key of a live job worker's record."""
        return self.job_nodes + validate_name(node, "node name")

    @property
    def job_cleaner(self) -> str:
        """Key of the job cleaner's lock."""
        return f"{self.prefix}jobs/cleaner"

    def build(self, key: Key) -> str:
        """The string form of a parsed key."""
        match key:
            case ClusterKey(name=name):
                return self.cluster(name)
            case ServiceKey(name=name):
                return self.service(name)
            case TaskDefinitionKey(name=name, version=version):
                return self.task_definition(name, version)
            case HostConfigKey(name=name):
                return self.host_config(name)
            case TaskKey(task_id=task_id):
                return self.task(task_id)
            case HostTaskKey(host=host, task_id=task_id):
                return self.host_task(host, task_id)
            case HealthKey(task_id=task_id):
                return self.task_health(task_id)
            case AgentKey(host=host):
                return self.agent(host)
            case LockKey(cluster=cluster, service=service):
                return self.lock(cluster, service)
            case ServiceStatusKey(cluster=cluster, service=service):
                return self.service_status(cluster, service)
            case HostAllocKey(host=host):
                return self.host_alloc(host)
            case RolloutKey(cluster=cluster, service=service):
                return self.rollout(cluster, service)
            case EnvironmentKey(name=name):
                return self.environment(name)
            case DeploymentKey(environment=environment, deployment_id=deployment_id):
                return self.deployment(environment, deployment_id)
            case JobKey(job_id=job_id):
                return self.job(job_id)
            case JobQueuedKey(job_id=job_id):
                return self.job_queued(job_id)
            case JobRunningKey(node=node, job_id=job_id):
                return self.job_running(node, job_id)
            case JobFinishedKey(state=state, epoch=epoch, job_id=job_id):
                return self.job_finished(state, epoch, job_id)
            case JobNodeKey(node=node):
                return self.job_node(node)
            case JobCleanerKey():
                return self.job_cleaner
        raise TypeError(f"not a key: {key!r}")

    def parse(self, key: str) -> Key:
        """Parse a key string; raises :class:`ValidationError` if it is not a skedlib key."""
        if not key.startswith(self.prefix):
            raise ValidationError(f"key {key!r} is not under prefix {self.prefix!r}")
        parts = key[len(self.prefix):].split("/")
        parsed: Key | None = None
        match parts:
            case ["config", "clusters", name]:
                parsed = ClusterKey(name)
            case ["config", "services", name]:
                parsed = ServiceKey(name)
            case ["config", "task_definitions", name, version] if (
                    version.isascii() and version.isdigit()
                    and (version == "0" or not version.startswith("0"))):
                parsed = TaskDefinitionKey(name, int(version))
            case ["config", "hosts", name]:
                parsed = HostConfigKey(name)
            case ["state", "tasks", task_id]:
                parsed = TaskKey(task_id)
            case ["state", "hosts", host, task_id]:
                parsed = HostTaskKey(host, task_id)
            case ["state", "health", task_id]:
                parsed = HealthKey(task_id)
            case ["state", "agents", host]:
                parsed = AgentKey(host)
            case ["locks", cluster, service]:
                parsed = LockKey(cluster, service)
            case ["state", "services", cluster, service]:
                parsed = ServiceStatusKey(cluster, service)
            case ["state", "alloc", host]:
                parsed = HostAllocKey(host)
            case ["state", "rollouts", cluster, service]:
                parsed = RolloutKey(cluster, service)
            case ["config", "environments", name]:
                parsed = EnvironmentKey(name)
            case ["state", "deployments", environment, deployment_id]:
                parsed = DeploymentKey(environment, deployment_id)
            case ["jobs", "records", job_id]:
                parsed = JobKey(job_id)
            case ["jobs", "status", "queued", job_id]:
                parsed = JobQueuedKey(job_id)
            case ["jobs", "status", "running", node, job_id]:
                parsed = JobRunningKey(node, job_id)
            case ["jobs", "status", state, epoch, job_id] if (
                    state in FINISHED_JOB_STATES and epoch.isascii() and epoch.isdigit()
                    and len(epoch) == EPOCH_DIGITS):
                parsed = JobFinishedKey(state, int(epoch), job_id)
            case ["jobs", "nodes", node]:
                parsed = JobNodeKey(node)
            case ["jobs", "cleaner"]:
                parsed = JobCleanerKey()
        if parsed is None:
            raise ValidationError(f"key {key!r} is not in skedlib's key schema")
        if self.build(parsed) != key:  # validates every name in it
            raise ValidationError(f"key {key!r} is not in skedlib's key schema")
        return parsed
