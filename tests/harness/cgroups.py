"""Removing the cgroups of a test's hosts once its agents and task processes are killed.

A service task's cgroup outlives its agent by design (a restarted agent takes it over), so
a test that kills its agents leaves its hosts' cgroups behind; the fixtures remove them.
"""

from __future__ import annotations

import glob
import os
import signal
from collections.abc import Iterable

from skedlib.executors import limits

__all__ = ["remove_task_cgroups"]


def remove_task_cgroups(hosts: Iterable[str]) -> None:
    """Kill what is left in the task cgroups of ``hosts`` and remove them with their
    parents (``skedlib-tasks-<host>-<hash>`` in every hierarchy)."""
    own = limits._own_cgroups()
    bases: set[str] = set()
    for mount in limits._mounts():
        key = "" if mount.fstype == "cgroup2" else next(
            (c for c in sorted(mount.options) if c in own), "")
        here = limits._cgroup_dir(mount, own.get(key, "/"))
        bases.update({here, os.path.dirname(here), mount.point})
    for base in bases:
        for host in hosts:
            pattern = os.path.join(glob.escape(base), f"skedlib-tasks-{limits._safe(host)}-*")
            for parent in glob.glob(pattern):
                for child in glob.glob(os.path.join(glob.escape(parent), "task-*")):
                    limits._signal_cgroups([child], signal.SIGKILL, 2.0)
                    limits._rmdir(child, 2.0)
                limits._rmdir(parent, 2.0)
