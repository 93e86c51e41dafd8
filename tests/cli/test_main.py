"""The ``sked`` CLI, in-process and as the installed console script."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import pytest
import yaml

from skedlib.cli.example import examples
from skedlib.cli.main import main
from skedlib.client import Client
from skedlib.codecs import decode, load_manifest
from skedlib.models import Service
from skedlib.validation import check_service
from tests.harness.cli import sked_script

HELLO = Path(str(examples()["hello-world"]))  # as the installed package ships it


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
    # what comes back is what was applied, with validation's defaults filled in
    applied = load_manifest(HELLO).manifest.services
    assert listed == [check_service(s, "") for s in applied]


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_get_output_applies_back_unchanged(url: str, tmp_path: Path, fmt: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """``sked get KIND -o json|yaml`` is a manifest section: applying it changes nothing."""
    assert main(["--backend", url, "apply", "-f", str(HELLO)]) == 0
    capsys.readouterr()
    sections = {}
    for kind in ("clusters", "services", "task_definitions"):
        assert main(["--backend", url, "get", kind, "-o", fmt]) == 0
        sections[kind] = yaml.safe_load(capsys.readouterr().out)  # JSON is YAML too
    again = tmp_path / f"again.{fmt}"
    again.write_text(yaml.safe_dump(sections))
    with Client.open(url) as c:
        revision = c.backend.current_revision()
    assert main(["--backend", url, "apply", "-f", str(again)]) == 0
    out, err = capsys.readouterr()
    assert out.split("\n")[:-1] == [f"{label} unchanged" for label in (
        "task_definitions/helloworld:1", "services/helloworld", "clusters/default")]
    assert err == ""
    with Client.open(url) as c:
        assert c.backend.current_revision() == revision


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


@pytest.mark.parametrize(("manifest", "message"), [
    ("services:\n  - name: web\n    task_name: [\n", "line 4 column 1: malformed YAML"),
    ('services: [{name: "a\\nb", task_name: helloworld, task_version: 1}]',
     'services[0] "a\\nb": field name: invalid service name'),
    ('services: [{name: "x\\e[2Jy", task_name: helloworld, task_version: 1}]',
     'services[0] "x\\x1b[2Jy": field name'),
    ("services: [{name: web, task_name: helloworld, task_version: 1, min: 5, desired: 4, "
     "max: 3}]", "need 0 ≤ min ≤ desired ≤ max, got min=5 desired=4 max=3"),
    ("services: [{name: web, task_name: gone, task_version: 1}]",
     'services[0] "web": field task_version: task definition "gone" version 1 does not exist'),
])
def test_bad_manifests_are_one_printable_line_and_write_nothing(
        url: str, tmp_path: Path, manifest: str, message: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--backend", url, "apply", "-f", str(HELLO)]) == 0
    with Client.open(url) as c:
        before = c.backend.list("").items
    bad = tmp_path / "bad.yml"
    bad.write_text(manifest)
    capsys.readouterr()
    assert main(["--backend", url, "apply", "-f", str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"sked: error: {bad}: ") and message in err, err
    assert err.count("\n") == 1 and err[:-1].isprintable()
    with Client.open(url) as c:
        assert c.backend.list("").items == before


def test_unknown_fields_warn_and_the_rest_is_applied(url: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    text = HELLO.read_text().replace("desired: 2", "desired: 2\n    colour: red")
    manifest = tmp_path / "m.yml"
    manifest.write_text(text)
    assert main(["--backend", url, "apply", "-f", str(manifest)]) == 0
    err = capsys.readouterr().err
    assert err == f'warning: {manifest}: services[0] "helloworld": field colour: unknown ' \
                  "field, ignored\n"
    with Client.open(url) as c:
        assert [s.name for s in c.services()] == ["helloworld"]


@pytest.mark.parametrize(("argv", "message"), [
    (["get", "bogus"], "sked: error: argument kind: unknown kind 'bogus'"),
    (["get", "services", "-o", "xml"], "sked: error: argument -o/--output: invalid choice"),
    (["apply"], "sked: error: the following arguments are required: -f/--file"),
    (["--backend", "sqlite:///x.db?timeout=soon", "get", "services"],
     "sked: error: sqlite:///x.db?timeout=soon: timeout must be"),
    (["--backend", "memory://?max_txn_ops=0", "get", "services"],
     "sked: error: memory://?max_txn_ops=0: max_txn_ops must be"),
])
def test_usage_and_url_errors_are_one_line(argv: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    assert code in (1, 2)
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_delete(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--backend", url, "apply", "-f", str(HELLO)])
    assert main(["--backend", url, "delete", "service", "helloworld"]) == 0
    assert main(["--backend", url, "delete", "service", "helloworld"]) == 1
    assert "not found" in capsys.readouterr().err


def test_console_script_uses_sked_backend_env(tmp_path: Path) -> None:
    sked = sked_script()
    env = dict(os.environ, SKED_BACKEND=f"sqlite://{tmp_path}/env.db")
    run = subprocess.run([sked, "apply", "-f", str(HELLO)], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    run = subprocess.run([sked, "get", "services"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert "helloworld" in run.stdout
    assert (tmp_path / "env.db").exists()


def test_version_names_skedlib_and_each_installed_plugin() -> None:
    from importlib.metadata import version

    out = subprocess.run([sked_script(), "--version"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    lines = subprocess.run([sked_script(), "version"], capture_output=True, text=True,
                           timeout=60, check=True).stdout.splitlines()
    assert out.splitlines() == lines  # --version prints what sked version prints
    assert lines[0] == f"skedlib {version('skedlib')}"
    assert lines[1] == f"python {platform.python_version()}"
    # the reference schedulers ship in skedlib's wheel, registered as any plugin is
    assert f"skedlib {version('skedlib')} (plugin: reference)" in lines[2:]
    # the first-party plugins installed here, each with its own distribution's version
    assert f"skedlib-etcd {version('skedlib-etcd')} (plugin: etcd)" in lines[2:]
    info = json.loads(subprocess.run([sked_script(), "version", "-o", "json"],
                                     capture_output=True, text=True, timeout=60,
                                     check=True).stdout)
    assert info["skedlib"] == version("skedlib")
    assert info["python"] == platform.python_version()
    assert {"name": "skedlib-etcd", "version": version("skedlib-etcd"),
            "entry_points": ["etcd"]} in info["plugins"]
