"""The ``sked`` CLI, in-process and as the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from skedlib.cli.main import main
from skedlib.client import Client
from skedlib.codecs import decode, load_manifest
from skedlib.models import Service

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello-world.yml"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path}/cli.db"


def test_apply_then_get_services_json_round_trips(url: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--backend", url, "apply", "-f", str(HELLO)]) == 0
    assert "services/helloworld created" in capsys.readouterr().out
    assert main(["--backend", url, "get", "services", "-o", "json"]) == 0
    listed = [decode(json.dumps(s).encode(), Service) for s in
              json.loads(capsys.readouterr().out)]
    with Client.open(url) as c:
        assert listed == c.services()
    applied = load_manifest(HELLO).manifest.services[0]
    assert (listed[0].name, listed[0].desired, listed[0].task_version) == (
        applied.name, applied.desired, applied.task_version)


def test_get_one_as_yaml_and_table(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--backend", url, "apply", "-f", str(HELLO)])
    capsys.readouterr()
    assert main(["--backend", url, "get", "td", "helloworld:1", "-o", "yaml"]) == 0
    assert "grace_period: 10000000000" in capsys.readouterr().out
    assert main(["--backend", url, "get", "clusters"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["name", "datacenter", "services", "hosts"]
    assert out[2].split()[0] == "default"


def test_errors_are_one_line_without_traceback(url: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("services: [{name: web, task_name: web, task_version: 1, desired: x}]\n")
    assert main(["--backend", url, "apply", "-f", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f'{bad}: services[0] "web": field desired' in err
    assert main(["--backend", url, "get", "services", "nope"]) == 1
    assert "service 'nope' not found" in capsys.readouterr().err
    assert main(["--backend", "nosuch://x", "get", "services"]) == 1
    assert "no backend named 'nosuch'" in capsys.readouterr().err


def test_delete(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--backend", url, "apply", "-f", str(HELLO)])
    assert main(["--backend", url, "delete", "service", "helloworld"]) == 0
    assert main(["--backend", url, "delete", "service", "helloworld"]) == 1
    assert "not found" in capsys.readouterr().err


def test_console_script_uses_sked_backend_env(tmp_path: Path) -> None:
    sked = shutil.which("sked", path=str(Path(sys.executable).parent))
    if sked is None:
        pytest.fail("the sked console script is not installed next to this Python")
    env = dict(os.environ, SKED_BACKEND=f"sqlite://{tmp_path}/env.db")
    run = subprocess.run([sked, "apply", "-f", str(HELLO)], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    run = subprocess.run([sked, "get", "services"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert "helloworld" in run.stdout
    assert (tmp_path / "env.db").exists()
