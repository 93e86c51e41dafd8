"""The garbage collector setting of a program that runs the scheduler daemon:
``skedlib-scheduler`` sets it at its start, and the library leaves the process alone."""

from __future__ import annotations

import gc
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from skedlib.client import Client
from skedlib.scheduler import GC_THRESHOLDS, SchedulerDaemon, tune_gc


@pytest.fixture
def thresholds() -> Iterator[None]:
    """Give the test process its collector thresholds back after the test."""
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_tune_gc_sets_the_thresholds_and_returns_the_old_ones(thresholds: None) -> None:
    gc.set_threshold(700, 10, 10)
    assert tune_gc() == (700, 10, 10)
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700  # fewer young collections than Python's default
    assert tune_gc() == GC_THRESHOLDS  # idempotent


def test_the_library_daemon_leaves_the_collector_alone(thresholds: None) -> None:
    gc.set_threshold(700, 10, 10)
    with Client.open(f"memory://{uuid.uuid4().hex}") as client:
        daemon = SchedulerDaemon(client.store, workers=1, resync=60)
        daemon.start()
        try:
            assert daemon.wait_ready(5)
        finally:
            daemon.stop()
    assert gc.get_threshold() == (700, 10, 10)


PROGRAM = """
import gc, os, signal, sys, threading
from skedlib.cli.scheduler import main
gc.set_threshold(700, 10, 10)
threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
code = main(["--backend", sys.argv[1], "--workers", "1"])
print(*gc.get_threshold())
sys.exit(code)
"""


def test_skedlib_scheduler_sets_the_collector_at_its_start(tmp_path: Path) -> None:
    """The program's own entry point, on a throwaway SQLite store, stopped by SIGTERM."""
    out = subprocess.run([sys.executable, "-c", PROGRAM, f"sqlite://{tmp_path / 'st.db'}"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert tuple(int(x) for x in out.stdout.split()) == GC_THRESHOLDS
