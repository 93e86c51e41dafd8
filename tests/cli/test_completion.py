"""``sked completion bash|zsh|fish``: the scripts load in their shell and complete
``sked``'s subcommands and options, asking the installed ``sked`` (argcomplete)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from skedlib.cli.main import main
from tests.harness.cli import BIN, sked_script
from tests.harness.common import skip_or_fail

BASH_COMPLETE = """
eval "$(sked completion bash)"
complete -p sked >/dev/null || exit 3
COMP_LINE="$1"; COMP_POINT=${#COMP_LINE}; COMP_TYPE=9
read -ra COMP_WORDS <<< "$COMP_LINE"
[[ "$COMP_LINE" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
_python_argcomplete sked "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\\n' "${COMPREPLY[@]}"
"""


def _env() -> dict[str, str]:
    sked_script()  # fails the test when sked is not installed
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def _bash_complete(line: str) -> list[str]:
    run = subprocess.run(["bash", "-c", BASH_COMPLETE, "bash", line], env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return [w.strip() for w in run.stdout.splitlines() if w.strip()]


def test_bash_completes_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    assert _bash_complete("sked ge") == ["get"]
    assert {"apply", "get", "tasks", "hosts", "job", "config", "completion",
            "version"} <= set(_bash_complete("sked "))
    assert set(_bash_complete("sked job ")) >= {"submit", "wait", "ls", "status"}
    assert set(_bash_complete("sked config u")) == {"use-context"}


def test_bash_completes_options_and_their_values() -> None:
    options = set(_bash_complete("sked get services -"))
    assert {"-o", "--output", "--no-headers", "--sort-by", "-l", "--selector",
            "--watch", "--backend", "--context", "--no-color"} <= options
    assert set(_bash_complete("sked tasks -o ")) == {"table", "wide", "json", "yaml", "name"}
    assert set(_bash_complete("sked get ")) >= {"clusters", "services", "task_definitions",
                                               "hosts", "tasks"}
    assert _bash_complete("sked get se") == ["services"]
    assert set(_bash_complete("sked completion ")) - {"-h", "--help"} == {"bash", "zsh",
                                                                          "fish"}


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_scripts_are_printed(shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    assert "sked" in script and "_ARGCOMPLETE" in script
    if shell == "fish":
        assert "complete --command sked" in script
    else:
        assert "_python_argcomplete" in script


def test_fish_completes_a_subcommand() -> None:
    if shutil.which("fish") is None:
        skip_or_fail("fish is not installed (scripts/install-exec-tools.sh installs it)")
    run = subprocess.run(["fish", "-c", "sked completion fish | source; complete -C 'sked ge'"],
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "get" in run.stdout.split()


def test_zsh_script_loads() -> None:
    if shutil.which("zsh") is None:
        skip_or_fail("zsh is not installed (scripts/install-exec-tools.sh installs it)")
    run = subprocess.run(["zsh", "-c", "autoload -U compinit && compinit -u && "
                                       "source <(sked completion zsh) && "
                                       "print ${_comps[sked]}"],
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "_python_argcomplete"


def test_unknown_shell_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["completion", "powershell"])
    assert exc.value.code == 2
    assert "invalid choice: 'powershell'" in capsys.readouterr().err
