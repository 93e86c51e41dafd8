"""Daemon-per-host environments and their deployments (``sked serve``, ``sked env``).

An :class:`Environment` names a cluster and a task definition; a :class:`Deployment`
puts one task of it on every eligible host of the cluster, through the scheduler daemon
(the environment is materialised as a ``daemon`` service of its own name). The REST API
over them is :mod:`skedlib.api`. See ``docs/environments.md`` and, for the REST API,
``docs/api.md``.
"""

from skedlib.environments.manager import Environments
from skedlib.environments.models import (
    DEFAULT_DEPLOYMENT_DEADLINE,
    Deleted,
    Deployment,
    DeploymentCreate,
    DeploymentPage,
    DeploymentStatus,
    Environment,
    EnvironmentCreate,
    EnvironmentHealth,
    EnvironmentPage,
    EnvironmentUpdate,
    EnvironmentView,
    ErrorBody,
    FailedHost,
)
from skedlib.environments.tracker import (
    Observed,
    environment_health,
    evaluate,
    observe,
    observe_all,
)

__all__ = [
    "DEFAULT_DEPLOYMENT_DEADLINE",
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
    "Environments",
    "ErrorBody",
    "FailedHost",
    "Observed",
    "environment_health",
    "evaluate",
    "observe",
    "observe_all",
]
