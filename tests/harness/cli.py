"""Running the installed ``sked`` console script as a user would.

- :data:`BIN`: the directory of this Python's console scripts (``sked``,
  ``skedlib-agent``, ``skedlib-scheduler``);
- :func:`sked_script`: the path of ``sked`` (fails the test when it is not installed);
- :func:`sked_fails`: ``sked --backend URL get services`` for the bad-input tests of the
  backends, which must exit 1 with one line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

__all__ = ["BIN", "sked_fails", "sked_script"]

BIN = Path(sys.executable).parent


def sked_script() -> str:
    """The path of the ``sked`` console script next to this Python; fails the test if it
    is not installed (``pip install -e .``)."""
    sked = shutil.which("sked", path=str(BIN))
    if sked is None:
        pytest.fail("the sked console script is not installed next to this Python",
                    pytrace=False)
    return sked


def sked_fails(url: str) -> str:
    """Run ``sked --backend URL get services``; it must exit 1: return its stderr.

    gRPC's own logging is left as a user has it (``GRPC_VERBOSITY`` and ``GRPC_TRACE`` are
    removed from the environment), so the output shows exactly what a user would see.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("GRPC_VERBOSITY", "GRPC_TRACE")}
    run = subprocess.run([sked_script(), "--backend", url, "get", "services"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, (run.returncode, run.stdout, run.stderr)
    print(f"\n$ sked --backend '{url}' get services\n{run.stderr}", end="")
    return run.stderr
