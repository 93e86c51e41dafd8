"""The supervision helpers create state records 0600 and logs (and their rotated copies)
0640 whatever the umask, and narrow a log file left wider by an older version."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from skedlib._files import open_append
from skedlib.executors.supervision import LogRotator, read_record, write_record


def mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(autouse=True)
def open_umask() -> Iterator[None]:
    """A umask that takes nothing away: the modes come from the code alone."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_a_record_and_its_directories_are_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "t1" / "main.json"
    write_record(path, {"pid": 1})
    write_record(path, {"pid": 2})
    assert read_record(path) == {"pid": 2} and mode(path) == 0o600
    assert mode(tmp_path / "state") == mode(tmp_path / "state" / "t1") == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["main.json"]


def test_logs_and_their_rotated_copies_are_0640(tmp_path: Path) -> None:
    log = tmp_path / "main.out.log"
    with open_append(log) as f:
        f.write(b"x" * 100)
    assert mode(log) == 0o640
    rotator = LogRotator(max_bytes=10, backups=2)
    rotator.add(log)
    rotator.rotate_now()
    rotator.close()
    assert log.stat().st_size == 0 and mode(log.with_name("main.out.log.1")) == 0o640
    os.chmod(log, 0o666)  # left by an older version: narrowed when opened again
    open_append(log).close()
    assert mode(log) == 0o640
