"""The reaper of a limiter's jobs: kills them once the process that started them is gone.

Started by :mod:`skedlib.executors.limits` (one per limiter whose jobs must die with it,
as ``python -I -S _reaper.py LABEL``, in a session of its own so that a signal to the
worker's process group does not reach it) with its standard input the read end of a
pipe whose only write end the worker holds. The worker tells it, one line each, what
its jobs are::

    +c <dir>    a cgroup its jobs run in: kill every process in it (and below it)
    -c <dir>    no longer
    +g <pid>    a job's process group (the kinds without cgroups)
    -g <pid>    no longer

When the pipe ends (the worker exited, was killed, or closed its limiter) the reaper
SIGKILLs every process group it holds and every process in the cgroups it holds, again
until they are empty (processes forked meanwhile) or 10 seconds have passed, removes
those cgroups, and exits. It imports nothing of skedlib, so it starts in milliseconds,
and it uses no CPU until then.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

_SETTLE = 10.0
"""Seconds the reaper goes on killing processes forked meanwhile."""


_WORKER = os.getppid()
"""The worker that started the reaper. While one of its threads starts a job, the worker
is listed in that job's cgroup (cgroup v1); a worker that closed its limiter meanwhile
must not be killed with its jobs. Once it is gone the reaper has another parent, and a
process that took its pid since is killed like any other."""


def _pids(cgroup: str) -> set[int]:
    """Every process in ``cgroup`` and the cgroups below it (the reaper's own, and a
    live worker's, left out: see :data:`_WORKER`)."""
    pids: set[int] = set()
    for top, _dirs, files in os.walk(cgroup):
        if "cgroup.procs" not in files:
            continue
        with contextlib.suppress(OSError), open(os.path.join(top, "cgroup.procs"),
                                                 "rb") as f:
            pids.update(int(tok) for tok in f.read().split() if tok.isdigit())
    pids.discard(os.getpid())
    if os.getppid() == _WORKER:  # still our parent: alive, it closed its limiter
        pids.discard(_WORKER)
    return pids


def reap(cgroups: set[str], groups: set[int]) -> None:
    """Kill the process groups, then every process in the cgroups until they are empty
    (or :data:`_SETTLE` seconds have passed), and remove the cgroups."""
    for pgid in groups:
        for kill in (os.killpg, os.kill):  # the group, and its leader if it left it
            with contextlib.suppress(OSError):
                kill(pgid, signal.SIGKILL)
    deadline = time.monotonic() + _SETTLE
    while cgroups:
        pids = {pid for cgroup in cgroups for pid in _pids(cgroup)}
        if not pids or time.monotonic() >= deadline:
            break
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)
    for cgroup in sorted(cgroups, key=len, reverse=True):  # the deepest first
        for top, _dirs, _files in sorted(os.walk(cgroup), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):
                os.rmdir(top)


def main() -> None:
    """Read the worker's lines until the pipe ends, then :func:`reap`."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)  # only the end of the pipe ends the reaper
    cgroups: set[str] = set()
    groups: set[int] = set()
    pending = b""
    while True:
        try:
            chunk = os.read(0, 65536)
        except InterruptedError:  # pragma: no cover (PEP 475 retries)
            continue
        except OSError:
            break
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            op, _, arg = os.fsdecode(line).partition(" ")
            if op in ("+c", "-c"):
                (cgroups.add if op == "+c" else cgroups.discard)(arg)
            elif op in ("+g", "-g") and arg.isdigit():
                (groups.add if op == "+g" else groups.discard)(int(arg))
    reap(cgroups, groups)


if __name__ == "__main__":
    main()
    sys.exit(0)
