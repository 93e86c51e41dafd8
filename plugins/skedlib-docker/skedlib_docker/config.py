"""The ``docker`` executor's blob: what a ``docker`` container's ``executor`` holds.

Declared to skedlib through the ``skedlib_executor_configs`` hook (see
:mod:`skedlib_docker.plugin`), so ``sked apply`` checks docker blobs on any machine where
this plugin is installed. This module imports nothing but msgspec: apply loads it without
the Docker SDK.
"""

from __future__ import annotations

import msgspec

__all__ = ["DockerConfig"]


class DockerConfig(msgspec.Struct, kw_only=True):
    """The ``docker`` executor's blob (Sked's JSON shape)::

        {"image": "ubuntu", "cmd": ["sked"], "entry": "", "container_port": 3000,
         "ports": ["5000:5000"], "env": ["K=V"], "work_dir": "/", "volumes": [],
         "flags": ["--net=host"]}

    Sked's fields are read too: ``cmd`` as one string (split like a shell would, run
    without one), ``net`` (``--network``), ``net_alias`` (``--network-alias``, on a
    user-defined network) and ``volume_driver`` (``--volume-driver``; the host policy
    must list the driver). ``net`` and ``volume_driver`` go through the host policy as
    the same flags would: ``net: host`` is refused unless ``docker.host_network``.
    """

    image: str
    cmd: list[str] | str = msgspec.field(default_factory=list)
    """The command: an argv list, or one string split as a shell would (``shlex``)."""
    entry: str = ""
    container_port: int = 0
    ports: list[str] = msgspec.field(default_factory=list)
    env: list[str] = msgspec.field(default_factory=list)
    work_dir: str = ""
    volumes: list[str] = msgspec.field(default_factory=list)
    flags: list[str] = msgspec.field(default_factory=list)
    name: str = ""
    net: str = ""
    """The network to join (``--network``); a ``--net``/``--network`` flag wins."""
    net_alias: str = ""
    """The container's alias on ``net`` (``--network-alias``)."""
    volume_driver: str = ""
    """The volume driver of the container's named volumes (``--volume-driver``)."""
