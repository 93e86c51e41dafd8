"""Files and directories that hold state or output, created readable by their owner only.

The mode is given at creation (``os.open``/``os.mkdir`` with a mode, which the umask can
only narrow), never by a ``chmod`` after the content is written, so there is no moment
when another local user could open the file. A file or directory of skedlib's own making
that already exists with a wider mode (from an earlier version) is narrowed when it is
opened again.

- state (the SQLite store, pid records, tokens): files :data:`STATE_FILE_MODE` (0600),
  directories :data:`STATE_DIR_MODE` (0700);
- logs (task and job output): files :data:`LOG_FILE_MODE` (0640) inside 0700
  directories: private by default; an operator who wants a log-reading group opens the
  directory to that group (``chgrp`` + ``chmod 2750``) and the files already allow it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO

__all__ = ["LOG_FILE_MODE", "STATE_DIR_MODE", "STATE_FILE_MODE", "HeldError",
           "SecretFileError", "create_secret", "hold_exclusively", "narrow", "open_append",
           "open_truncate", "private_dirs", "read_secret", "write_private"]

STATE_FILE_MODE = 0o600
STATE_DIR_MODE = 0o700
LOG_FILE_MODE = 0o640


def _narrow_fd(fd: int, mode: int) -> None:
    st = os.fstat(fd)
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & ~mode:
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & mode)


def narrow(path: Path, mode: int) -> None:
    """Take away from an existing ``path`` (of our making) the permissions ``mode`` does
    not give; nothing when it is missing, not ours, or a symbolic link."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid():
        return
    if stat.S_IMODE(st.st_mode) & ~mode:
        os.chmod(path, stat.S_IMODE(st.st_mode) & mode)


def private_dirs(path: Path, *, narrow_existing: bool = True) -> Path:
    """Create ``path`` and its missing parents with mode 0700 (``mkdir -p``); an existing
    ``path`` is narrowed to 0700 unless ``narrow_existing`` is false (a directory the
    user chose and skedlib does not own, like the one a store file is put in)."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made by another process meanwhile
            os.mkdir(d, STATE_DIR_MODE)
    if narrow_existing and not missing:
        narrow(path, STATE_DIR_MODE)
    return path


def open_append(path: str | os.PathLike[str], mode: int = LOG_FILE_MODE) -> BinaryIO:
    """``path`` opened for appending (created with ``mode``; an existing file is narrowed
    to it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, mode)
    try:
        _narrow_fd(fd, mode)
    except OSError:
        os.close(fd)
        raise
    return os.fdopen(fd, "ab")


class HeldError(OSError):
    """Another process holds the lock file (:func:`hold_exclusively`)."""

    def __init__(self, path: Path, pid: str) -> None:
        super().__init__(f"{path} is held by process {pid or 'unknown'}")
        self.path, self.pid = path, pid


def hold_exclusively(path: Path) -> int:
    """Hold ``path`` (created 0600) for as long as this process lives: an exclusive
    ``flock`` on a descriptor no child inherits (``O_CLOEXEC``; the processes a program
    starts close it), which the kernel lets go of when the process ends, however it ends.
    The file says the holder's pid. Returns the descriptor (closing it lets go); raises
    :class:`HeldError` naming the holder's pid when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, STATE_FILE_MODE)
    try:
        _narrow_fd(fd, STATE_FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HeldError(path, os.pread(fd, 32, 0).decode(errors="replace").strip()) \
                from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        os.close(fd)
        raise
    return fd


def open_truncate(path: Path, mode: int) -> BinaryIO:
    """``path`` opened for writing from the start (created with ``mode``, an existing file
    narrowed to it and emptied)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        _narrow_fd(fd, mode)
    except OSError:
        os.close(fd)
        raise
    return os.fdopen(fd, "wb")


def write_private(path: Path, data: bytes, mode: int = STATE_FILE_MODE) -> None:
    """Write ``data`` to ``path`` atomically (a temp file beside it, then a rename), the
    file readable by its owner only."""
    tmp = path.with_name(path.name + ".tmp")
    with open_truncate(tmp, mode) as f:
        f.write(data)
    os.replace(tmp, path)


class SecretFileError(Exception):
    """A secret file that cannot be read or must not be trusted; the message says why in
    a few words (the caller names the file and what it holds)."""


def read_secret(path: Path | str, *, owner_only: bool) -> str:
    """The secret in ``path`` (surrounding whitespace dropped).

    The file must be a regular file (a symbolic link is not followed, a FIFO not waited
    on) that other users cannot read. With ``owner_only`` it must also be this user's and
    closed to its group: a token skedlib itself makes and trusts. Without it a group may
    read it (``0640``, an operators' group) and anyone may own it (a credential an
    operator hands to the process). Raises :class:`SecretFileError`, or ``OSError`` when
    it cannot be opened (``FileNotFoundError`` included)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        mode = stat.S_IMODE(info.st_mode)
        if not stat.S_ISREG(info.st_mode):
            raise SecretFileError("not a regular file")
        if owner_only and info.st_uid != os.geteuid():
            raise SecretFileError(f"owned by uid {info.st_uid}, not by this user; someone "
                                  "else may know it")
        if owner_only and mode & 0o077:
            raise SecretFileError(f"mode {mode:04o}; others may read it (chmod 600)")
        if mode & 0o007:
            raise SecretFileError(f"mode {mode:04o}; readable by every user (chmod o-rwx, "
                                  "e.g. 600)")
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
    finally:
        os.close(fd)
    secret = data.decode("utf-8", errors="surrogateescape").strip()
    if not secret:
        raise SecretFileError("empty")
    return secret


def create_secret(path: Path) -> str:
    """A new random secret (32 bytes, URL-safe base64) in the new file ``path``, mode
    0600 from its creation, its missing directories 0700.

    It is written to a private temporary file first and linked into place, so a process
    starting at the same moment finds either no file or the whole secret, and an existing
    file or symbolic link is never overwritten nor followed: raises ``FileExistsError``
    if ``path`` exists."""
    private_dirs(path.parent, narrow_existing=False)
    secret = secrets.token_urlsafe(32)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 STATE_FILE_MODE)
    try:
        try:
            os.write(fd, f"{secret}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(temp, path)  # fails if path exists, whatever it is
    finally:
        temp.unlink(missing_ok=True)
    return secret
