"""skedlib-docker: the ``docker`` executor for skedlib agents, as a plugin.

Installing the package registers the executor through the ``skedlib`` entry-point group,
so an agent runs containers whose ``type`` is ``docker`` on the host's Docker engine. The
executor is :class:`skedlib_docker.executor.DockerEngineExecutor`; its blob (Sked's
``image``, ``cmd``, ``entry``, ``container_port``, ``ports``, ``env``, ``work_dir``,
``volumes``, ``flags``) is :class:`skedlib_docker.config.DockerConfig`, declared to skedlib
so ``sked apply`` checks it, and its translation into Docker SDK arguments is
:func:`skedlib_docker.spec.build_run_spec`.
See ``docs/executors/docker.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from skedlib import lazy_attributes
from skedlib_docker.config import DockerConfig

__all__ = [
    "DockerConfig",
    "DockerEngineExecutor",
    "DockerError",
    "DockerOptions",
    "DockerUnavailable",
    "RunSpec",
    "build_run_spec",
    "container_name",
]

__version__ = "0.1.0"

if TYPE_CHECKING:
    from skedlib_docker.executor import (
        DockerEngineExecutor,
        DockerError,
        DockerOptions,
        DockerUnavailable,
    )
    from skedlib_docker.spec import RunSpec, build_run_spec, container_name

# imported on first use: registering the plugin must not load its client library
__getattr__ = lazy_attributes(__name__, {
    "DockerEngineExecutor": "skedlib_docker.executor",
    "DockerError": "skedlib_docker.executor",
    "DockerOptions": "skedlib_docker.executor",
    "DockerUnavailable": "skedlib_docker.executor",
    "RunSpec": "skedlib_docker.spec",
    "build_run_spec": "skedlib_docker.spec",
    "container_name": "skedlib_docker.spec",
})
