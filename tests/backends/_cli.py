"""Running the ``sked`` console script as a user would, for the bad-input tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def sked_fails(url: str) -> str:
    """Run ``sked --backend URL get services``; it must exit 1: return its stderr.

    gRPC's own logging is left as a user has it (``GRPC_VERBOSITY`` and ``GRPC_TRACE`` are
    removed from the environment), so the output shows exactly what a user would see.
    """
    sked = shutil.which("sked", path=str(Path(sys.executable).parent))
    assert sked is not None, "the sked console script is not installed next to this Python"
    env = {k: v for k, v in os.environ.items() if k not in ("GRPC_VERBOSITY", "GRPC_TRACE")}
    run = subprocess.run([sked, "--backend", url, "get", "services"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, (run.returncode, run.stdout, run.stderr)
    print(f"\n$ sked --backend '{url}' get services\n{run.stderr}", end="")
    return run.stderr
