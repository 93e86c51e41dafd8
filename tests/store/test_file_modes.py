"""The SQLite store and the directory made for it are readable by their owner only, even
under a permissive umask; an older store left world-readable is narrowed when opened."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from skedlib.store.sqlite import SqliteBackend


def mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that takes nothing away: the modes come from the code alone."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("open_umask")
def test_a_new_store_and_its_directory_are_private(tmp_path: Path) -> None:
    path = tmp_path / "made" / "for" / "sked.db"
    backend = SqliteBackend(path)
    try:
        backend.put("sked/a", b"1")  # the WAL and its index exist from here on
        assert mode(path) == 0o600
        assert mode(Path(f"{path}-wal")) == 0o600
        assert mode(Path(f"{path}-shm")) == 0o600
        assert mode(tmp_path / "made") == mode(tmp_path / "made" / "for") == 0o700
    finally:
        backend.close()


@pytest.mark.usefixtures("open_umask")
def test_an_existing_world_readable_store_is_narrowed_but_not_its_directory(
        tmp_path: Path) -> None:
    path = tmp_path / "sked.db"
    backend = SqliteBackend(path)
    backend.put("sked/a", b"1")
    backend.close()
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if p.exists():
            os.chmod(p, 0o644)
    os.chmod(tmp_path, 0o755)  # the user's directory: not skedlib's to change
    backend = SqliteBackend(path)
    try:
        assert backend.get("sked/a") is not None
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            if p.exists():
                assert mode(p) == 0o600, p
        assert mode(tmp_path) == 0o755
    finally:
        backend.close()
