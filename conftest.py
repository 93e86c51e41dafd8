"""Session-wide guards.

A test that leaves a non-daemon thread running would keep the interpreter from exiting
after the run (Python joins such threads before ``atexit``), so the test servers would
never be stopped and the run would hang. At the end of the session such threads are
named with their stacks, the servers are stopped, and the process exits with pytest's
status.

A run started in the background by a shell without job control inherits SIGINT (and
SIGQUIT) ignored, and so would every program a test starts: the tests that stop a watch
with Ctrl-C would wait for nothing. The session puts Python's own handler back first.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback

import pytest

_STATUS: list[int] = []


def pytest_configure(config: pytest.Config) -> None:
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _STATUS.append(int(exitstatus))


def pytest_unconfigure(config: pytest.Config) -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # only the main pytest process guards its exit
    lingering = [t for t in threading.enumerate()
                 if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    if not lingering:
        return
    frames = sys._current_frames()
    out = sys.__stderr__ or sys.stderr
    print(f"\nconftest: {len(lingering)} non-daemon thread(s) left running by the tests:",
          file=out)
    for t in lingering:
        print(f"--- {t.name}", file=out)
        frame = frames.get(t.ident or -1)
        if frame is not None:
            print("".join(traceback.format_stack(frame)), file=out)
    from tests.harness.common import _stop_all
    _stop_all()
    out.flush()
    sys.stdout.flush()
    status = _STATUS[-1] if _STATUS else 1
    os._exit(status if status else 1)  # a leaked thread is a failure of the run
