"""The skedlib hook implementations that register the ``docker`` executor and its blob.

Named by the entry point ``[project.entry-points.skedlib] docker = "skedlib_docker.plugin"``.
The executor module (and with it the Docker SDK) is imported only when an agent creates
the executor, so loading the registry stays cheap; the blob's Struct
(:class:`~skedlib_docker.config.DockerConfig`) imports nothing but msgspec, so ``sked
apply`` checks docker blobs without the SDK.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from skedlib import ExecutorContext, hookimpl
from skedlib_docker.config import DockerConfig

if TYPE_CHECKING:
    from skedlib_docker.executor import DockerEngineExecutor

__all__ = ["create_docker_executor", "skedlib_executor_configs", "skedlib_executors"]


def create_docker_executor(context: ExecutorContext) -> DockerEngineExecutor:
    """Create the ``docker`` executor for an agent (see :mod:`skedlib_docker.executor`)."""
    from skedlib_docker.executor import DockerEngineExecutor

    return DockerEngineExecutor(context)


@hookimpl
def skedlib_executors() -> Mapping[str, Callable[..., Any]]:
    """``docker``: containers on the host's Docker engine."""
    return {"docker": create_docker_executor}


@hookimpl
def skedlib_executor_configs() -> Mapping[str, type[msgspec.Struct]]:
    """``docker``: :class:`~skedlib_docker.config.DockerConfig`."""
    return {"docker": DockerConfig}
