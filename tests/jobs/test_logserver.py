"""The job output server refuses what an attacker on the same machine would try: no or a
wrong token (401), a symbolic link in its directory (not followed), a bad or huge offset
(400 and one line, not a dropped connection); it listens on loopback by default and its
token, directories and logs are private."""

from __future__ import annotations

import http.client
import os
import stat
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from skedlib.api import ApiServer
from skedlib.cli.agent import build_parser, worker_config_from_args
from skedlib.client import Client
from skedlib.errors import SkedError
from skedlib.jobs.models import JobNode, JobRequirements
from skedlib.jobs.store import JobStore
from skedlib.logserver import LogServer, LogSource, fetch_log, load_token
from tests.api.conftest import Http
from tests.jobs.conftest import JobLoop

TOKEN = "s3cret-token"


def job_log_server(logs: Path, token: str = TOKEN) -> LogServer:
    """The log server of job worker n1 over ``logs`` (as the job worker makes it)."""
    jobs = LogSource("job", logs, lambda job_id, _query: [f"{job_id}.log"],
                     lambda job_id: False)
    return LogServer("job worker n1", {"jobs": jobs}, ("127.0.0.1", 0), "", token=token)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LogServer]:
    """A log server of node n1 over ``tmp_path/logs`` with one job's output."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "j1.log").write_bytes(b"hello\nworld\n")
    srv = job_log_server(logs)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def get(srv: LogServer, path: str, token: str | None = TOKEN) -> tuple[int, bytes]:
    """GET ``path`` from the server (with ``token`` as the bearer token unless None)."""
    url = urllib.parse.urlsplit(srv.url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_the_token_is_required(server: LogServer) -> None:
    assert get(server, "/v1/jobs/j1/logs") == (200, b"hello\nworld\n")
    for token in (None, "", "wrong", TOKEN + "x"):
        status, body = get(server, "/v1/jobs/j1/logs", token)
        assert status == 401, token
        assert body.count(b"\n") == 1 and b"hello" not in body
    assert get(server, "/v1/ping", None)[0] == 200  # says who answers, nothing more
    with pytest.raises(SkedError, match="token is required"):
        job_log_server(server.sources["jobs"].directory, token="")


def test_a_symbolic_link_in_the_log_directory_is_not_followed(server: LogServer,
                                                               tmp_path: Path) -> None:
    (server.sources["jobs"].directory / "evil.log").symlink_to("/etc/passwd")
    secret = tmp_path / "secret"
    secret.write_bytes(b"root:x:0:0\n")
    (server.sources["jobs"].directory / "evil2.log").symlink_to(secret)
    for job in ("evil", "evil2"):
        for follow in ("false", "true"):
            status, body = get(server, f"/v1/jobs/{job}/logs?follow={follow}")
            assert status == 404 and b"root:" not in body, (job, follow)
    # not a regular file: refused, not waited on
    os.mkfifo(server.sources["jobs"].directory / "fifo.log")
    assert get(server, "/v1/jobs/fifo/logs")[0] == 404


@pytest.mark.parametrize("offset", ["99999999999999999999", "9223372036854775808", "-1",
                                    "abc", "1.5", "\u0661", "0x10", "+5"])
def test_a_bad_offset_is_a_400_with_one_line(server: LogServer, offset: str) -> None:
    for follow in ("false", "true"):
        query = urllib.parse.urlencode({"offset": offset, "follow": follow})
        status, body = get(server, f"/v1/jobs/j1/logs?{query}")
        assert status == 400 and body.startswith(b"offset must be an integer"), body
        assert body.count(b"\n") == 1
    assert get(server, "/v1/jobs/j1/logs?offset=6") == (200, b"world\n")
    assert get(server, "/v1/jobs/j1/logs?offset=1000") == (200, b"")
    status, body = get(server, f"/v1/jobs/j1/logs?offset={2**63 - 1}")  # beyond any file
    assert status in (200, 400) and body.count(b"\n") <= 1


def test_the_default_listen_is_loopback_and_published_as_such() -> None:
    args = build_parser().parse_args(["--jobs-only", "--host", "n1",
                                      "--address", "192.0.2.7"])
    config = worker_config_from_args(args)
    assert config.listen == ("127.0.0.1", 0) and config.advertise == "127.0.0.1"
    args = build_parser().parse_args(["--jobs-only", "--host", "n1", "--address",
                                      "192.0.2.7", "--jobs-listen", "0.0.0.0:7001"])
    config = worker_config_from_args(args)  # every interface: only when asked for
    assert config.listen == ("0.0.0.0", 7001) and config.advertise == "192.0.2.7"
    with pytest.raises(SystemExit):  # ":7001" no longer means every interface
        build_parser().parse_args(["--jobs-listen", ":7001"])


def test_the_token_is_random_kept_private_and_reused(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "log-token"
        token = load_token(path)
        assert len(token) >= 32 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert load_token(path) == token
        assert load_token(tmp_path / "other") != token
        os.chmod(path, 0o644)
        assert load_token(path) == token and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_worker_serves_on_loopback_with_its_token_and_keeps_its_files_private(
        sqlite_jobs: JobLoop) -> None:
    old = os.umask(0)  # the worker inherits it: the modes must come from the code
    try:
        sqlite_jobs.start_worker(0, slots=1)
    finally:
        os.umask(old)
    node = sqlite_jobs.node(0)
    job = sqlite_jobs.jobs.submit("sh", ["-c", "echo out; echo err >&2"])
    (done,) = sqlite_jobs.wait_finished([job.id])
    assert done.status == "complete"
    assert b"".join(sqlite_jobs.jobs.logs(job.id)) == b"out\nerr\n"  # with the token
    kv = sqlite_jobs.backend.get(sqlite_jobs.jobs.keys.job_node(node))
    assert kv is not None
    record = msgspec.json.decode(kv.value, type=JobNode)
    assert done.log_url.startswith("http://127.0.0.1:") and record.log_url == done.log_url
    url = urllib.parse.urlsplit(done.log_url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=10)
    conn.request("GET", f"/v1/jobs/{job.id}/logs")
    resp = conn.getresponse()
    assert resp.status == 401 and b"out" not in resp.read()
    conn.close()
    state = sqlite_jobs.tmp / node
    token_file = state / "jobs" / "log-token"
    assert token_file.read_text().strip() == record.log_token != ""
    assert mode(token_file) == 0o600
    for d in (state / "jobs", state / "jobs" / "logs", state / "jobs" / "work"):
        assert mode(d) == 0o700, d
    assert mode(state / "jobs" / "logs" / f"{job.id}.log") == 0o640


def test_the_api_does_not_list_a_nodes_token(tmp_path: Path) -> None:
    with Client.open(f"sqlite://{tmp_path}/s.db") as client:
        node = JobNode(name="n1", capacity=JobRequirements(memory=1, cpu_units=1, disk=0),
                       slots=1, log_url="http://127.0.0.1:1", log_token="n0de-secret")
        client.backend.put(JobStore(client.store).keys.job_node("n1"),
                           msgspec.json.encode(node))
        with ApiServer(client, "127.0.0.1", 0, token="api-token") as server:
            status, body = Http(server.url, "api-token").get("/nodes")
    assert status == 200 and [n["name"] for n in body["items"]] == ["n1"]
    assert "n0de-secret" not in str(body) and body["items"][0]["log_token"] == ""


def test_a_job_that_wrote_nothing_leaves_no_file_and_its_file_serves_the_next_job(
        sqlite_jobs: JobLoop) -> None:
    sqlite_jobs.start_worker(0, slots=1)
    node = sqlite_jobs.node(0)
    kv = sqlite_jobs.backend.get(sqlite_jobs.jobs.keys.job_node(node))
    assert kv is not None
    if not msgspec.json.decode(kv.value, type=JobNode).limits.startswith("cgroup"):
        # (a machine without cgroups: as the other limit tests, a skip, not a failure)
        pytest.skip("an output file is reused only after a job's cgroups were seen "
                    "empty: this machine gives the worker no cgroups")
    logs = sqlite_jobs.tmp / node / "jobs" / "logs"
    quiet = sqlite_jobs.jobs.submit("true")
    (done,) = sqlite_jobs.wait_finished([quiet.id])
    assert (done.status, done.output_bytes) == ("complete", 0)
    assert not (logs / f"{quiet.id}.log").exists()
    (spare,) = logs.glob(".free-*")
    inode = spare.stat().st_ino
    assert b"".join(sqlite_jobs.jobs.logs(quiet.id)) == b""  # the node is not asked
    loud = sqlite_jobs.jobs.submit("sh", ["-c", "echo hello; echo oops >&2; exit 3"])
    (done,) = sqlite_jobs.wait_finished([loud.id])
    assert (done.status, done.exit_code, done.output_bytes) == ("failed", 3, 11)
    path = logs / f"{loud.id}.log"
    assert path.stat().st_ino == inode and not list(logs.glob(".free-*"))
    assert mode(path) == 0o640 and path.read_bytes() == b"hello\noops\n"
    assert b"".join(sqlite_jobs.jobs.logs(loud.id)) == b"hello\noops\n"
    missing = sqlite_jobs.jobs.submit("no-such-command-anywhere")
    (done,) = sqlite_jobs.wait_finished([missing.id])
    assert (done.status, done.output_bytes) == ("failed", 0)
    assert b"".join(sqlite_jobs.jobs.logs(missing.id)) == b""


def test_a_reader_of_a_file_handed_to_the_next_job_gets_none_of_that_jobs_output(
        tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "j1.log").write_bytes(b"")
    running = {"j1"}
    jobs = LogSource("job", logs, lambda job_id, _query: [f"{job_id}.log"],
                     lambda job_id: job_id in running, moves=True)
    srv = LogServer("job worker n1", {"jobs": jobs}, ("127.0.0.1", 0), "", token=TOKEN)
    srv.start()
    try:
        # the response has begun: the server holds j1's (empty) file open
        body = fetch_log(srv.url, "jobs", "j1", TOKEN, follow=True, where="node n1",
                         what="job j1")
        # j1 ends having written nothing; its file goes to j2, which writes
        os.rename(logs / "j1.log", logs / "j2.log")
        with (logs / "j2.log").open("ab") as out:
            out.write(b"j2's secret\n")
        running.clear()
        assert b"".join(body) == b""
        assert get(srv, "/v1/jobs/j2/logs") == (200, b"j2's secret\n")
    finally:
        srv.stop()
