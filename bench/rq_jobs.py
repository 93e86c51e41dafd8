"""The job functions ``bench/jobs.py`` enqueues to RQ (a helper module, not a bench).

RQ workers import the function by its dotted name, ``rq_jobs.run_true``: they are
started with ``bench/`` as their working directory and on their import path.
"""

from __future__ import annotations

import subprocess

__all__ = ["run_true"]


def run_true() -> None:
    """What the skedlib jobs run: the program ``true``, as a child process."""
    subprocess.run(["true"], check=True)
