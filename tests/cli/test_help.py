"""``sked``'s help is written for users: every subcommand and option says what it does,
no text speaks of the project's history, and ``sked --help`` groups the commands."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest

from skedlib.cli.main import COMMAND_GROUPS, build_parser, main


def _actions(parser: argparse.ArgumentParser,
             path: str = "sked") -> Iterator[tuple[str, str, str | None]]:
    """(command path, option or subcommand, help) for every action of every parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                yield path, f"command {choice.dest}", choice.help
            for name, sub in action.choices.items():
                yield path + " " + name, "description", sub.description or ""
                yield from _actions(sub, f"{path} {name}")
        else:
            yield path, "/".join(action.option_strings) or action.dest, action.help


def test_every_subcommand_and_option_has_help() -> None:
    found = list(_actions(build_parser()))
    assert len(found) > 150  # the walk reached the subcommands' options
    missing = [f"{path}: {what}" for path, what, text in found
               if what != "description" and not text]
    assert missing == []


def test_help_does_not_speak_of_history() -> None:
    # the texts, not option names: `sked sim trace --seed` seeds a random generator
    texts = [f"{path}: {what}: {text}" for path, what, text in _actions(build_parser())
             if text and text is not argparse.SUPPRESS]
    assert [t for t in texts if re.search(r"(?i)\bseed\b", t.split(": ", 2)[2])] == []


def test_top_level_help_groups_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    titles = [title for title, _ in COMMAND_GROUPS]
    positions = [out.index(f"\n{title}:\n") for title in titles]
    assert positions == sorted(positions)
    looking = out[positions[0]:positions[1]]
    assert re.search(r"\n  get +show clusters, services", looking)
    assert "\n  apply " not in looking and "\n  apply " in out[positions[1]:positions[2]]
    # every command appears once, under some group
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in commands:
        assert len(re.findall(rf"\n  {re.escape(name)} ", out)) == 1, name
    assert out.startswith("usage: sked [OPTIONS] COMMAND ...")
