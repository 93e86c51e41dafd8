"""The garbage collector and thread switch settings of a program that runs the scheduler
daemon: ``skedlib-scheduler`` sets them at its start, and the library leaves the process
alone."""

from __future__ import annotations

import gc
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from skedlib.client import Client
from skedlib.scheduler import (
    GC_THRESHOLDS,
    SWITCH_INTERVAL,
    SchedulerDaemon,
    tune_gc,
    tune_switch_interval,
)


@pytest.fixture
def thresholds() -> Iterator[None]:
    """Give the test process its collector thresholds and switch interval back after the
    test."""
    before, interval = gc.get_threshold(), sys.getswitchinterval()
    yield
    gc.set_threshold(*before)
    sys.setswitchinterval(interval)


def test_tune_gc_sets_the_thresholds_and_returns_the_old_ones(thresholds: None) -> None:
    gc.set_threshold(700, 10, 10)
    assert tune_gc() == (700, 10, 10)
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700  # fewer young collections than Python's default
    assert tune_gc() == GC_THRESHOLDS  # idempotent


def test_tune_switch_interval_sets_it_and_returns_the_old_one(thresholds: None) -> None:
    sys.setswitchinterval(0.005)
    assert tune_switch_interval() == pytest.approx(0.005)
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
    assert SWITCH_INTERVAL < 0.005  # a thread back from SQLite or gRPC waits less
    assert tune_switch_interval() == pytest.approx(SWITCH_INTERVAL)  # idempotent


def test_the_library_daemon_leaves_the_collector_alone(thresholds: None) -> None:
    gc.set_threshold(700, 10, 10)
    sys.setswitchinterval(0.005)
    with Client.open(f"memory://{uuid.uuid4().hex}") as client:
        daemon = SchedulerDaemon(client.store, workers=1, resync=60)
        daemon.start()
        try:
            assert daemon.wait_ready(5)
        finally:
            daemon.stop()
    assert gc.get_threshold() == (700, 10, 10)
    assert sys.getswitchinterval() == pytest.approx(0.005)


PROGRAM = """
import gc, os, signal, sys, threading
from skedlib.cli.scheduler import main
gc.set_threshold(700, 10, 10)
sys.setswitchinterval(0.005)
threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
code = main(["--backend", sys.argv[1], "--workers", "1"])
print(*gc.get_threshold(), sys.getswitchinterval())
sys.exit(code)
"""


def test_skedlib_scheduler_sets_the_collector_and_switch_interval_at_its_start(
        tmp_path: Path) -> None:
    """The program's own entry point, on a throwaway SQLite store, stopped by SIGTERM."""
    out = subprocess.run([sys.executable, "-c", PROGRAM, f"sqlite://{tmp_path / 'st.db'}"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    *thresholds, interval = out.stdout.split()
    assert tuple(int(x) for x in thresholds) == GC_THRESHOLDS
    assert float(interval) == pytest.approx(SWITCH_INTERVAL)
