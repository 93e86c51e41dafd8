"""The keys of environments and their deployments: a :class:`~skedlib.keys.KeyTable` of
their own under the keyspace prefix, built on the templates of :mod:`skedlib.keys`.
"""

from __future__ import annotations

import msgspec

from skedlib.keys import KeyTable, KeyTemplate, Name

__all__ = ["AnyEnvironmentKey", "DeploymentKey", "EnvironmentKey", "EnvironmentKeyspace"]


class EnvironmentKey(msgspec.Struct, frozen=True, tag=True):
    """An :class:`~skedlib.environments.Environment`."""

    name: str


class DeploymentKey(msgspec.Struct, frozen=True, tag=True):
    """A :class:`~skedlib.environments.Deployment` of an environment."""

    environment: str
    deployment_id: str


AnyEnvironmentKey = EnvironmentKey | DeploymentKey

_ENVIRONMENT = Name("environment name")


class EnvironmentKeyspace(KeyTable[AnyEnvironmentKey]):
    """Builds and parses the environment and deployment keys under a keyspace's prefix.

    >>> from skedlib.keys import Keyspace
    >>> EnvironmentKeyspace(Keyspace()).deployment("node-exporter", "00000001")
    'sked/state/deployments/node-exporter/00000001'
    """

    schema = "skedlib's environment key schema"

    # -- the table: one template per key ---------------------------------------------------
    #: desired state: what ``sked env`` and ``sked serve`` write
    environment = KeyTemplate("config/environments/{name}", EnvironmentKey,
                              name=_ENVIRONMENT)
    deployment = KeyTemplate("state/deployments/{environment}/{deployment_id}",
                             DeploymentKey, environment=_ENVIRONMENT,
                             deployment_id=Name("deployment id"))

    # -- prefixes --------------------------------------------------------------------------
    environments = environment.prefix()
    deployments = deployment.prefix()
    #: ``environment_deployments(environment)``: the deployments of one environment
    environment_deployments = deployment.prefix_for("environment")
