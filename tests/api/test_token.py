"""Where ``sked serve``'s token comes from: with none configured, a random one in a file
only its owner can read, made on the first start (0600 from the start, whatever the
umask), reused on the next, never printed; a token file others could read or that is
not a regular file is refused; ``--public`` (or a non-loopback address) needs an
explicit token; ``--token`` (a secret on the command line) is refused."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from skedlib.api import (
    TOKEN_ENV,
    create_token_file,
    default_token_path,
    find_token,
    read_token_file,
    token_for_serve,
)
from skedlib.cli.main import main as sked_main
from skedlib.client import Client
from skedlib.errors import ValidationError
from tests.api.conftest import Http


@pytest.fixture(autouse=True)
def _no_token_in_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[Client]:
    with Client.open(f"sqlite://{tmp_path}/store.db") as c:
        yield c


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_first_start_makes_a_0600_token_file_beside_the_store_and_reuses_it(
        sqlite: Client, tmp_path: Path) -> None:
    old = os.umask(0)  # even a careless umask must not expose it
    try:
        token, source = token_for_serve(sqlite.backend, None, public=False)
    finally:
        os.umask(old)
    path = tmp_path / "store.db.api-token"
    assert default_token_path(sqlite.backend) == path
    assert source == f"token file {path} (new)" and token not in source
    assert _mode(path) == 0o600 and path.read_text().strip() == token
    assert len(token) >= 40
    again, source = token_for_serve(sqlite.backend, None, public=False)
    assert (again, source) == (token, f"token file {path}")
    assert find_token(sqlite.backend) == token  # a client on this machine finds it


def test_other_stores_keep_it_in_the_users_config(tmp_path: Path) -> None:
    with Client.open(f"memory://{uuid.uuid4().hex}") as c:
        path = default_token_path(c.backend)
        assert path == tmp_path / "config" / "skedlib" / "api-token"
        token, _ = token_for_serve(c.backend, None, public=False)
        assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
        assert find_token(c.backend) == token


def test_the_environment_and_an_explicit_file_come_first(
        sqlite: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    given = tmp_path / "given"
    token = create_token_file(given)
    assert token_for_serve(sqlite.backend, given, public=True) == (
        token, f"token file {given}")
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert token_for_serve(sqlite.backend, None, public=True) == ("from-env",
                                                                  f"${TOKEN_ENV}")
    assert find_token(sqlite.backend) == "from-env"
    assert not default_token_path(sqlite.backend).exists()


def test_public_needs_an_explicit_token(sqlite: Client) -> None:
    with pytest.raises(ValidationError, match="--public: an explicit token is required"):
        token_for_serve(sqlite.backend, None, public=True)
    assert not default_token_path(sqlite.backend).exists()


def test_a_token_file_others_could_know_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t"
    create_token_file(path)
    with pytest.raises(FileExistsError):
        create_token_file(path)  # never overwritten
    path.chmod(0o644)
    with pytest.raises(ValidationError, match=r"mode 0644; others may read it"):
        read_token_file(path)
    path.chmod(0o620)
    with pytest.raises(ValidationError, match=r"mode 0620"):
        read_token_file(path)
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(ValidationError, match=f"token file {link}: "):
        read_token_file(link)
    with pytest.raises(FileExistsError):
        create_token_file(link)
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(ValidationError, match="not a regular file"):
        read_token_file(tmp_path / "dir")
    os.mkfifo(tmp_path / "fifo", 0o600)  # would block a plain open
    with pytest.raises(ValidationError, match="not a regular file"):
        read_token_file(tmp_path / "fifo")
    empty = tmp_path / "empty"
    empty.touch(mode=0o600)
    with pytest.raises(ValidationError, match="empty"):
        read_token_file(empty)
    with pytest.raises(ValidationError, match="No such file"):
        read_token_file(tmp_path / "missing")


def _sked(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = sked_main(list(argv))
    return code, out.getvalue()


def test_serve_refuses_public_without_a_token_and_a_token_on_the_command_line(
        tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/s.db"
    for argv in (["--public"], ["--public", "--listen", "0.0.0.0:0"],
                 ["--public", "--listen", "[::]:0"]):
        code, out = _sked("--backend", url, "serve", *argv)
        assert code == 1 and out.count("\n") == 1, out
        assert "--public: an explicit token is required" in out
    code, out = _sked("--backend", url, "serve", "--listen", "0.0.0.0:0")
    assert code == 1 and "pass --public" in out and out.count("\n") == 1
    code, out = _sked("--backend", url, "serve", "--token", "s3cret")
    assert code == 1 and "--token: a secret on the command line" in out
    assert "s3cret" not in out and out.count("\n") == 1
    assert not (tmp_path / "s.db.api-token").exists()


def _start(sked: str, url: str) -> tuple[subprocess.Popen[str], str, str]:
    proc = subprocess.Popen([sked, "--backend", url, "serve", "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if k != TOKEN_ENV})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, line, line.split("listening on ")[1].split()[0]


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    return err


def test_serve_makes_the_token_file_says_where_and_finds_it_again(tmp_path: Path) -> None:
    sked = shutil.which("sked", path=str(Path(sys.executable).parent))
    assert sked is not None
    url, path = f"sqlite://{tmp_path}/s.db", tmp_path / "s.db.api-token"
    proc, line, api = _start(sked, url)
    try:
        assert f"token file {path} (new)" in line, line
        token = path.read_text().strip()
        assert _mode(path) == 0o600
        assert Http(api).get("/jobs")[0] == 401
        assert Http(api, token).get("/jobs")[0] == 200
    finally:
        err = _stop(proc)
    assert token not in line and token not in err
    proc, line, api = _start(sked, url)  # restarted: the same token
    try:
        assert f"token file {path})" in line and "(new)" not in line, line
        assert Http(api, token).get("/jobs")[0] == 200
    finally:
        _stop(proc)


def test_servers_starting_together_agree_on_one_token(sqlite: Client) -> None:
    with ThreadPoolExecutor(8) as pool:
        tokens = set(pool.map(lambda _: token_for_serve(sqlite.backend, None, False)[0],
                              range(16)))
    assert tokens == {read_token_file(default_token_path(sqlite.backend))}
    leftovers = [p.name for p in default_token_path(sqlite.backend).parent.iterdir()
                 if p.name.startswith(".")]
    assert leftovers == []


def test_serve_takes_a_read_only_token_from_a_file(tmp_path: Path) -> None:
    sked = shutil.which("sked", path=str(Path(sys.executable).parent))
    assert sked is not None
    url, reader_file = f"sqlite://{tmp_path}/s.db", tmp_path / "reader.token"
    reader_file.write_text("reader-token-0123456789\n")
    reader_file.chmod(0o600)
    proc = subprocess.Popen(
        [sked, "--backend", url, "serve", "--listen", "127.0.0.1:0",
         "--read-token-file", str(reader_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if k != TOKEN_ENV})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    try:
        assert f"read-only token from token file {reader_file}" in line, line
        api = line.split("listening on ")[1].split()[0]
        token = (tmp_path / "s.db.api-token").read_text().strip()
        reader = Http(api, "reader-token-0123456789")
        assert reader.get("/jobs")[0] == 200
        status, body = reader.post("/jobs", {"command": "true"})
        assert status == 403 and "may only read" in body["message"]
        assert Http(api, token).post("/jobs", {"command": "true"})[0] == 201
    finally:
        _stop(proc)
    assert "reader-token-0123456789" not in line
    # the same token for both is refused, in one line
    token_file = tmp_path / "admin.token"
    token_file.write_text("reader-token-0123456789\n")
    token_file.chmod(0o600)
    code, out = _sked("--backend", url, "serve", "--token-file", str(token_file),
                      "--read-token-file", str(reader_file))
    assert code == 1 and "the same as the full token" in out and out.count("\n") == 1
