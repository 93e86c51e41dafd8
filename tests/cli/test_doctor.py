"""Bad records under the CLI: quarantined with one warning, listed by ``sked doctor``;
read-only commands never create a store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import skedlib.codecs
from skedlib.cli.doctor import removal_command
from skedlib.cli.main import main
from skedlib.client import Client
from skedlib.codecs import InvalidRecord, encode, find_invalid_records
from skedlib.keys import Keyspace
from skedlib.models import Cluster, Task, TaskDefinition

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "skedlib" / "examples" / "hello-world.yml"
KS = Keyspace()


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    # once per key and revision *per process*: each test is a new "process"
    monkeypatch.setattr(skedlib.codecs, "_warned", skedlib.codecs._Warned())


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite://{tmp_path}/cli.db"
    assert main(["--backend", url, "apply", "-f", str(HELLO)]) == 0
    return url


def _task(instance: int) -> Task:
    return Task(cluster=Cluster(name="default"), service="helloworld", instance=instance,
                task_definition=TaskDefinition(name="helloworld", version=1))


def _poison(url: str) -> None:
    with Client.open(url) as c:
        c.backend.put(KS.agent("junk"), b"\x00garbage")
        c.backend.put(KS.prefix + "config/services/a\0b", b'{"name": "x", "task_name": "x"}')
        c.backend.put(KS.task("default-helloworld-1-5"), encode(_task(0)))


@pytest.mark.parametrize("argv", [["tasks"], ["hosts"], ["get", "services"],
                                  ["get", "hosts"], ["get", "tasks"]])
def test_readers_skip_bad_records_with_one_warning_each(
        url: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    _poison(url)
    capsys.readouterr()
    assert main(["--backend", url, *argv]) == 0
    out, err = capsys.readouterr()
    warnings = err.splitlines()
    assert warnings and all(w.startswith("sked: warning: ") for w in warnings), err
    for key in ("state/agents/junk", "state/tasks/default-helloworld-1-5", "a\\x00b"):
        assert sum(key in w for w in warnings) <= 1, err  # never twice
    assert "default-helloworld-1-5" not in out and "junk" not in out
    # read again in the same process: no new warning for the same versions
    assert main(["--backend", url, *argv]) == 0
    assert capsys.readouterr().err == ""


def test_get_services_counts_the_invalid_records_of_a_service(
        url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _poison(url)
    capsys.readouterr()
    assert main(["--backend", url, "get", "services"]) == 0
    assert "1 invalid record(s) (see sked doctor)" in capsys.readouterr().out


def test_doctor_lists_invalid_records_and_how_to_remove_them(
        url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--backend", url, "doctor"]) == 0
    assert capsys.readouterr().out == "no invalid records\n"
    _poison(url)
    assert main(["--backend", url, "doctor"]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "3 invalid record(s) (every reader skips them):"
    assert ("sked/config/services/a\\x00b\n  why: sked/config/services/a\\x00b: not a valid "
            "key") in out
    assert "sked/state/agents/junk\n  why: sked/state/agents/junk: malformed JSON" in out
    assert ("sked/state/tasks/default-helloworld-1-5\n  why: sked/state/tasks/default-helloworl"
            "d-1-5: the record's id default-helloworld-1-0 does not match its key "
            "(default-helloworld-1-5)\n  remove: sked doctor --delete "
            "sked/state/tasks/default-helloworld-1-5") in out
    assert main(["--backend", url, "doctor", "-o", "json"]) == 1
    listed = json.loads(capsys.readouterr().out)
    assert [r["key"] for r in listed] == ["sked/config/services/a\\x00b",
                                          "sked/state/agents/junk",
                                          "sked/state/tasks/default-helloworld-1-5"]
    for r in listed:  # the printed command removes each, NUL in its key too
        assert r["remove"].startswith("sked doctor --delete ")
        assert main(["--backend", url, "doctor", "--delete", r["key"]]) == 0
    assert main(["--backend", url, "doctor"]) == 0
    # a valid record is not removed by doctor
    assert main(["--backend", url, "doctor", "--delete",
                 "sked/config/services/helloworld"]) == 1
    assert "not an invalid record" in capsys.readouterr().err


def test_find_invalid_records_skips_markers_and_foreign_keys(url: str) -> None:
    with Client.open(url) as c:
        c.backend.put(KS.prefix + "something/else", b"not json")
        c.backend.put(KS.host_alloc("h1"), b"")
        assert find_invalid_records(c.backend.list(KS.prefix).items, KS) == []


@pytest.mark.parametrize("argv", [["tasks"], ["hosts"], ["get", "services"], ["doctor"],
                                  ["rollout", "history", "helloworld"]])
def test_read_only_commands_never_create_a_store(tmp_path: Path, argv: list[str],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing" / "dir" / "x.db"
    assert main(["--backend", f"sqlite://{missing}", *argv]) == 1
    err = capsys.readouterr().err
    assert err == (f"sked: error: {missing}: no such store (nothing was applied there; a "
                   "write such as sked apply creates it)\n")
    assert not (tmp_path / "missing").exists()
    # a write still creates it
    assert main(["--backend", f"sqlite://{missing}", "apply", "-f", str(HELLO)]) == 0
    assert missing.exists()
    assert main(["--backend", f"sqlite://{missing}", *argv]) == 0


def test_applying_an_object_again_replaces_its_invalid_record(
        url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with Client.open(url) as c:
        c.backend.put(KS.service("helloworld"), b"{broken")
    assert main(["--backend", url, "doctor"]) == 1
    assert main(["--backend", url, "apply", "-f", str(HELLO)]) == 0
    assert "services/helloworld configured" in capsys.readouterr().out
    assert main(["--backend", url, "doctor"]) == 0


@pytest.mark.parametrize(("key", "command"), [
    ("sked/config/services/web", "sked delete service web"),
    ("sked/config/clusters/prod", "sked delete cluster prod"),
    ("sked/config/task_definitions/web/3", "sked delete task_definition web:3"),
    ("sked/config/hosts/h1", "sked delete host h1"),
    ("sked/state/agents/h1", "sked doctor --delete sked/state/agents/h1"),
    ("sked/config/services/a b\0", "sked doctor --delete 'sked/config/services/a b\\x00'"),
])
def test_each_invalid_record_gets_the_command_that_removes_it(url: str, key: str,
                                                              command: str) -> None:
    with Client.open(url) as c:
        assert removal_command(c, InvalidRecord(key, "why")) == command
