"""``sked completion bash|zsh|fish``: shell completion, by argcomplete.

The printed script registers ``sked`` with the shell; on each Tab the shell runs ``sked``
with argcomplete's environment variables set, and :func:`complete` (called by ``main``
before parsing) answers from ``sked``'s own argument parser and exits. So completion
always matches the installed ``sked``: every subcommand, option and choice (``-o``
formats, ``get`` kinds), with nothing generated to keep in step (docs/decisions.md,
"CLI conventions").
"""

from __future__ import annotations

import argparse
import os
from typing import Any

__all__ = ["SHELLS", "add_parser", "cmd_completion", "complete", "script"]

SHELLS = ("bash", "zsh", "fish")

_INSTALL = {
    "bash": "sked completion bash > ~/.local/share/bash-completion/completions/sked",
    "zsh": "sked completion zsh > \"${fpath[1]}/_sked\"  (or: source <(sked completion zsh))",
    "fish": "sked completion fish > ~/.config/fish/completions/sked.fish",
}


def add_parser(sub: Any) -> None:
    """Add ``completion`` to ``sked``'s subcommands."""
    p = sub.add_parser(
        "completion", help="print a shell completion script (bash, zsh, fish)",
        description="Print the script that makes SHELL complete sked's commands and "
                    "options. Install it with: " + "; ".join(_INSTALL.values()),
    )
    p.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash, zsh or fish")
    p.set_defaults(func=cmd_completion, needs_backend=False)


def script(shell: str, program: str = "sked") -> str:
    """The completion script of ``program`` for ``shell``."""
    # imported only here and in complete(): sked's other commands do without
    from argcomplete.shell_integration import shellcode

    return shellcode([program], shell=shell)


def cmd_completion(client: None, args: argparse.Namespace) -> int:
    """``sked completion SHELL``."""
    del client
    print(script(args.shell), end="")
    return 0


def complete(parser: argparse.ArgumentParser) -> None:
    """When the shell asks for completions (argcomplete's ``_ARGCOMPLETE`` is set),
    answer from ``parser`` and exit; otherwise return at once."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    import argcomplete

    argcomplete.autocomplete(parser)
