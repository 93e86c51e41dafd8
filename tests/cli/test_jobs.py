"""``sked job submit|status|ls|cancel|wait|logs|nodes`` over a real SQLite store, with the
job worker's side simulated as in ``tests/api/test_jobs_api.py`` (``tests/jobs/fakes.py``:
store transitions, and a tiny log server). Most commands run ``sked``'s ``main``
in-process; ``logs`` runs the installed ``sked`` so its raw bytes on stdout are checked as
a pipe receives them."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable

import pytest
import yaml

from skedlib.cli.jobs import parse_cores, parse_size, summary
from skedlib.cli.main import main
from skedlib.client import Client
from skedlib.jobs import Job, JobStore
from tests.harness.cli import sked_script
from tests.jobs.fakes import (
    OUTPUT,
    LogNode,
    Worker,
    client,
    closed_port_url,
    later,
    log_node,
    url,
)

__all__ = ["client", "log_node", "url"]  # fixtures, imported to be used here

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def sked(url: str, client: Client, capsys: pytest.CaptureFixture[str]) -> Run:
    """``sked(*argv) -> (exit status, stdout, stderr)``, in-process, on the test's store."""
    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main(["--backend", url, "--prefix", client.keys.prefix, *argv])
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err
    return run


def _store(client: Client) -> JobStore:
    return JobStore(client.store)


def _one_line_error(err: str, code: int, status: int = 1) -> str:
    assert code == status, (code, err)
    assert err.count("\n") == 1 and err.startswith("sked: error: "), err
    assert "Traceback" not in err
    return err


# -- sizes ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "mib"), [
    ("0", 0), ("512", 512), ("512M", 512), ("512m", 512), ("2G", 2048), ("2g", 2048),
    ("2GiB", 2048), ("2GB", 2048), ("2Gi", 2048), ("1.5G", 1536), (".5G", 512),
    ("1T", 1024 * 1024), ("2048K", 2), ("100K", 1), ("1536k", 2), (" 64 ", 64),
    ("3 G", 3072),
])
def test_sizes(text: str, mib: int) -> None:
    assert parse_size(text) == mib


@pytest.mark.parametrize("text", ["", "-1", "1.5", "12X", "G", "1e3", "1,5G", "2GG",
                                  "0x10", "99999999999T"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match=r"^bad size"):
        parse_size(text)


def test_cores() -> None:
    assert (parse_cores("1"), parse_cores("1.5"), parse_cores("0.25")) == (1024, 1536, 256)
    for bad in ("0", "-1", "x", "nan", "inf"):
        with pytest.raises(ValueError, match="bad CPU"):
            parse_cores(bad)


# -- submit ---------------------------------------------------------------------------------
def test_submit_prints_the_id_and_stores_the_spec(client: Client, sked: Run) -> None:
    code, out, err = sked("job", "submit", "--memory", "2G", "--cpu", "1.5", "--disk", "1T",
                          "--env", "A=1", "--env", "B=x=y", "--cwd", "/srv", "--name", "train",
                          "--no-restart", "--max-attempts", "5", "--timeout", "90",
                          "--", "python3", "train.py", "--epochs", "3", "--", "-x")
    assert (code, err) == (0, "")
    job_id = out.strip()
    assert out == f"{job_id}\n"
    job = _store(client).get(job_id).job
    assert (job.command, job.args) == ("python3", ["train.py", "--epochs", "3", "--", "-x"])
    assert (job.requirements.memory, job.requirements.cpu_units, job.requirements.disk) == (
        2048, 1536, 1024 * 1024)
    assert (job.env, job.cwd, job.name) == ({"A": "1", "B": "x=y"}, "/srv", "train")
    assert (job.restart_on_node_failure, job.max_attempts, job.timeout) == (False, 5, 90 * 10**9)
    assert job.status == "queued"

    code, out, _ = sked("job", "submit", "--cpu-units", "300", "-o", "json", "echo", "hi")
    assert code == 0
    doc = json.loads(out)
    assert (doc["command"], doc["args"], doc["requirements"]["cpu_units"]) == (
        "echo", ["hi"], 300)
    code, out, _ = sked("job", "submit", "-o", "yaml", "--id", "y1", "true")
    assert code == 0 and yaml.safe_load(out)["id"] == "y1"


def test_submit_refusals_are_one_line(client: Client, sked: Run) -> None:
    assert sked("job", "submit", "--id", "once", "true")[0] == 0
    code, _, err = sked("job", "submit", "--id", "once", "true")
    assert _one_line_error(err, code) == "sked: error: job once already exists\n"
    code, _, err = sked("job", "submit", "--max-attempts", "0", "true")
    assert "field max_attempts: must be within 1..100" in _one_line_error(err, code)
    code, _, err = sked("job", "submit", "--id", "a/b", "true")
    assert "invalid job id 'a/b'" in _one_line_error(err, code)
    for argv, why in (
            (["--memory", "12X"], "argument --memory: bad size '12X': expected MiB as an "
                                  "integer, or a number with K, M, G or T (binary), e.g. 512M "
                                  "or 2G"),
            (["--disk", "1.5"], "argument --disk: bad size '1.5': a number without a unit "
                                "is MiB and must be whole"),
            (["--cpu", "0"], "argument --cpu: bad CPU '0'"),
            (["--env", "NOVALUE"], "argument --env: bad environment variable 'NOVALUE': "
                                   "expected KEY=VALUE"),
            (["--cpu", "1", "--cpu-units", "5"], "argument --cpu-units: not allowed with "
                                                 "argument --cpu"),
            ([], "the following arguments are required: CMD [ARGS…]")):
        code, _, err = sked("job", "submit", *argv, *(["true"] if argv else []))
        assert why in _one_line_error(err, code, status=2), err
        assert "(see sked job submit --help)" in err
    assert [j.id for j in _store(client).list()] == ["once"]


def test_submit_wait_waits_and_exits_with_the_outcome(client: Client, sked: Run) -> None:
    worker = Worker(client)

    def run_it() -> None:
        for _ in range(200):
            queued = _store(client).list("queued")
            if queued:
                worker.claim(queued[0].id)
                worker.finish(queued[0].id, "failed", 2)
                return
            time.sleep(0.02)

    later(0.1, run_it)
    code, out, err = sked("job", "submit", "--wait", "--", "sh", "-c", "exit 2")
    job_id, line = out.splitlines()
    assert (code, err) == (1, "")
    assert line.startswith(f"job {job_id} failed on node n1 after ")
    assert line.endswith(": exit code 2; exited with status 2")
    code, _, err = sked("job", "submit", "--wait", "--wait-timeout", "0.2", "true")
    assert "is still queued after 0.2s: waiting for a node with free resources" in \
        _one_line_error(err, code)


# -- status, ls -----------------------------------------------------------------------------
def test_status_shows_state_node_attempts_exit_reason_and_times(client: Client,
                                                                sked: Run) -> None:
    _, out, _ = sked("job", "submit", "--memory", "512M", "--cpu", "0.5", "--name", "etl",
                     "--timeout", "3600", "--", "sh", "-c", "echo a b")
    job_id = out.strip()
    code, out, _ = sked("job", "status", job_id)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"job {job_id}: queued"
    fields = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    assert fields["name"] == "etl" and fields["command"] == "sh -c 'echo a b'"
    assert fields["requirements"] == "memory 512 MiB, cpu_units 512"
    assert (fields["attempts"], fields["exit code"], fields["timeout"]) == ("0/3", "-", "1h")
    assert fields["reason"] == "no job worker is running"
    assert fields["started"] == "-" and "ago)" in fields["submitted"]

    worker = Worker(client, "n1", memory=256)
    _, out, _ = sked("job", "status", job_id)
    assert "reason:       no node can meet its requirements (memory 512 MiB" in out
    worker = Worker(client, "n2")
    worker.claim(job_id)
    worker.finish(job_id, "failed", -9, "killed: memory limit")
    _, out, _ = sked("job", "status", job_id)
    assert out.startswith(f"job {job_id}: failed\n")
    assert "exit code:    -9 (killed by SIGKILL)" in out and "node:         n2" in out
    assert "attempts:     1/3" in out and "reason:       killed: memory limit" in out
    code, out, _ = sked("job", "status", job_id, "-o", "json")
    doc = json.loads(out)
    assert (code, doc["id"], doc["status"], doc["exit_code"]) == (0, job_id, "failed", -9)

    code, _, err = sked("job", "status", "nope")
    assert _one_line_error(err, code) == "sked: error: job nope not found\n"


def test_ls_lists_filters_and_trims(client: Client, sked: Run) -> None:
    code, out, _ = sked("job", "ls")
    assert (code, out) == (0, "no jobs\n")
    for i in (1, 2, 3):
        sked("job", "submit", "--id", f"j{i}", "--name", f"n{i}", "--memory",
             "100G" if i == 3 else "1", "true")
    worker = Worker(client, "w1", memory=1024)
    worker.claim("j1")
    worker.finish("j1", "complete", 0, "exited 0 " + "x" * 100)
    code, out, _ = sked("job", "ls")
    header, rule, *rows = out.splitlines()
    assert header.split() == ["id", "name", "status", "node", "exit", "age", "duration",
                              "reason"]
    assert set(rule) == {"-"}
    assert [r.split()[:5] for r in rows] == [["j1", "n1", "complete", "w1", "0"],
                                            ["j2", "n2", "queued", "-", "-"],
                                            ["j3", "n3", "queued", "-", "-"]]
    assert rows[0].endswith("…") and len(rows[0].split("exited 0 ")[1]) == 60 - len("exited 0 ")
    assert "waiting for a node with free resources" in rows[1]
    assert "no node can meet its requirements" in rows[2]
    code, out, _ = sked("job", "ls", "--status", "queued", "-o", "json")
    assert [j["id"] for j in json.loads(out)] == ["j2", "j3"]
    assert json.loads(out)[0]["reason"] == "waiting for a node with free resources"
    assert sked("job", "ls", "--status", "running")[1] == "no jobs running\n"
    code, _, err = sked("job", "ls", "--status", "done")
    assert code == 2 and "invalid choice: 'done'" in err


# -- cancel, wait ---------------------------------------------------------------------------
def test_cancel(client: Client, sked: Run) -> None:
    worker = Worker(client)
    for i in (1, 2, 3):
        sked("job", "submit", "--id", f"c{i}", "true")
    worker.claim("c2")
    worker.claim("c3")
    worker.finish("c3")
    code, out, _ = sked("job", "cancel", "c1")
    assert (code, out) == (0, "job c1 canceled (it was queued)\n")
    code, out, _ = sked("job", "cancel", "c2")
    assert (code, out) == (0, "job c2 canceled (it was running on node n1, which stops it)\n")
    assert _store(client).get("c2").job.status == "canceled"
    code, _, err = sked("job", "cancel", "c1")
    assert _one_line_error(err, code) == "sked: error: job c1 is already canceled (canceled)\n"
    code, _, err = sked("job", "cancel", "c3")
    assert "job c3 is already complete" in _one_line_error(err, code)
    code, _, err = sked("job", "cancel", "nope")
    assert _one_line_error(err, code) == "sked: error: job nope not found\n"
    assert _store(client).inconsistencies() == []


def test_wait_exit_status_follows_the_outcome(client: Client, sked: Run) -> None:
    worker = Worker(client)
    for i in (1, 2, 3, 4):
        sked("job", "submit", "--id", f"w{i}", "true")
    worker.claim("w1")
    later(0.3, worker.finish, "w1", "complete", 0)
    code, out, _ = sked("job", "wait", "w1", "--timeout", "60")
    # it was running when the wait began: "complete" means the wait lasted until the
    # finish, and a wait that ran out would have ended with an error instead
    assert code == 0 and out.startswith("job w1 complete on node n1 after ")
    assert out.endswith(": exited with status 0\n")
    worker.claim("w2")
    worker.finish("w2", "failed", 1, "exited with status 1")
    code, out, _ = sked("job", "wait", "w2")
    assert code == 1 and out.count("\n") == 1 and "failed" in out and "status 1" in out
    later(0.2, _store(client).cancel, "w3", "canceled by alice")
    code, out, _ = sked("job", "wait", "w3")
    assert (code, out) == (1, "job w3 canceled: canceled by alice\n")
    code, out, _ = sked("job", "wait", "w2", "-o", "json")
    assert code == 1 and json.loads(out)["exit_code"] == 1
    code, _, err = sked("job", "wait", "w4", "--timeout", "0.2")
    assert _one_line_error(err, code) == ("sked: error: job w4 is still queued after 0.2s: "
                                          "waiting for a node with free resources\n")
    code, _, err = sked("job", "wait", "nope", "--timeout", "1")
    assert _one_line_error(err, code) == "sked: error: job nope not found\n"


def test_wait_for_several_jobs(client: Client, sked: Run) -> None:
    """``sked job wait A B C``: a line per job; 0 only when every one succeeded."""
    worker = Worker(client)
    for i in (1, 2, 3):
        sked("job", "submit", "--id", f"m{i}", "true")
    for i in (1, 2, 3):
        worker.claim(f"m{i}")
    worker.finish("m1", "complete", 0)
    later(0.3, worker.finish, "m2", "complete", 0)  # ends while the wait is on
    code, out, err = sked("job", "wait", "m1", "m2", "--timeout", "60")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert [line.split()[:3] for line in lines] == [["job", "m1", "complete"],
                                                    ["job", "m2", "complete"]]
    worker.finish("m3", "failed", 2, "exited with status 2")
    code, out, _ = sked("job", "wait", "m1", "m3", "m2")
    assert code == 1 and out.count("\n") == 3 and "job m3 failed" in out
    code, out, _ = sked("job", "wait", "m1", "m2", "-o", "json")
    assert code == 0 and [j["id"] for j in json.loads(out)] == ["m1", "m2"]  # a list
    code, out, _ = sked("job", "wait", "m1", "nope")
    assert out.startswith("job m1 complete")  # the jobs that ended are told first
    assert _one_line_error(_, code) == "sked: error: job nope not found\n"
    code, _, err = sked("job", "wait")
    assert code == 2 and "the following arguments are required: ID" in err


def test_list_output_conventions(client: Client, sked: Run) -> None:
    """``job ls`` and ``job nodes`` take the output options of every list command."""
    for i in (1, 2, 3):
        sked("job", "submit", "--id", f"o{i}", "--name", f"n{4 - i}", "true")
    code, out, _ = sked("job", "ls", "-o", "name")
    assert (code, out) == (0, "job/o1\njob/o2\njob/o3\n")
    code, out, _ = sked("job", "ls", "--sort-by", "name", "--no-headers")
    assert [line.split()[0] for line in out.splitlines()] == ["o3", "o2", "o1"]
    code, out, _ = sked("job", "ls", "-o", "json", "--sort-by", "name")
    assert [j["id"] for j in json.loads(out)] == ["o3", "o2", "o1"]
    code, out, _ = sked("job", "status", "o1", "-o", "name")
    assert out == "job/o1\n"
    code, out, _ = sked("job", "nodes", "-o", "json")
    assert (code, json.loads(out)) == (0, [])


def test_summary_of_a_job_that_never_ran() -> None:
    job = Job(id="x", command="true", status="canceled", reason="canceled", finished_at=1.0)
    assert summary(job) == "job x canceled"


# -- logs -----------------------------------------------------------------------------------
def _logs(url: str, client: Client, *argv: str, timeout: float = 30
          ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sked_script(), "--backend", url, "--prefix", client.keys.prefix, "job",
                           "logs", *argv], capture_output=True, timeout=timeout, check=False)


def test_logs_writes_the_raw_bytes(url: str, client: Client, sked: Run,
                                   log_node: LogNode) -> None:
    worker = Worker(client, "n1", log_url=log_node.url)
    sked("job", "submit", "--id", "l1", "true")
    done = _logs(url, client, "l1")
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr == b"sked: error: job l1 has no output yet: it is queued and never " \
                          b"started\n"
    worker.claim("l1")
    log_node.append("l1", OUTPUT)
    done = _logs(url, client, "l1")
    assert (done.returncode, done.stdout, done.stderr) == (0, OUTPUT, b"")
    done = _logs(url, client, "l1", "--offset", "5")
    assert done.stdout == OUTPUT[5:] and log_node.requests[-1] == ("l1", 5, False)
    done = _logs(url, client, "nope")
    assert (done.returncode, done.stderr) == (1, b"sked: error: job nope not found\n")
    done = _logs(url, client, "l1", "--offset", "-3")
    assert done.returncode == 2 and b"bad offset '-3'" in done.stderr


def test_logs_follow_streams_until_the_job_ends(url: str, client: Client, sked: Run,
                                                log_node: LogNode) -> None:
    worker = Worker(client, "n1", log_url=log_node.url)
    sked("job", "submit", "--id", "f1", "true")
    worker.claim("f1")
    log_node.append("f1", b"first\n")
    with subprocess.Popen([sked_script(), "--backend", url, "--prefix", client.keys.prefix, "job",
                           "logs", "-f", "f1"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"first\n"  # flushed while the job runs
        assert proc.poll() is None
        log_node.append("f1", b"second\n")
        assert proc.stdout.readline() == b"second\n"
        log_node.append("f1", b"last\n")
        worker.finish("f1")
        log_node.done.add("f1")
        rest, err = proc.communicate(timeout=30)
    assert (proc.returncode, rest, err) == (0, b"last\n", b"")


def test_logs_from_an_unreachable_node(url: str, client: Client, sked: Run) -> None:
    sked("job", "submit", "--id", "u1", "true")
    Worker(client, "gone", log_url=closed_port_url()).claim("u1")
    done = _logs(url, client, "u1")
    assert done.returncode == 1 and done.stderr.count(b"\n") == 1
    assert b"node gone" in done.stderr and b"cannot be reached" in done.stderr


# -- nodes, usage ---------------------------------------------------------------------------
def test_nodes(client: Client, sked: Run) -> None:
    code, out, _ = sked("job", "nodes")
    assert (code, out) == (0, "no job workers (start one: skedlib-agent --jobs)\n")
    Worker(client, "n2", memory=1536, cpu_units=2048, disk=0, log_url="http://10.0.0.2:7001")
    Worker(client, "n1")
    code, out, _ = sked("job", "nodes")
    header, _, *rows = out.splitlines()
    assert header.split() == ["name", "slots", "memory", "cpu", "disk", "limits", "log",
                              "url", "host", "pid", "up"]
    assert rows[0].split()[:7] == ["n1", "4", "4G", "4", "10G", "rlimit", "-"]
    assert rows[1].split()[:8] == ["n2", "4", "1.5G", "2", "-", "rlimit",
                                   "http://10.0.0.2:7001", "host-a"]
    code, out, _ = sked("job", "nodes", "-o", "json")
    assert [n["name"] for n in json.loads(out)] == ["n1", "n2"]


def test_job_needs_a_subcommand(sked: Run) -> None:
    code, _, err = sked("job")
    assert code == 2 and "required: COMMAND" in err
    code, out, _ = sked("job", "--help")
    assert code == 0 and "submit" in out and "nodes" in out
