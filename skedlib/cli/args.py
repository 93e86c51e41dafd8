"""Command-line pieces shared by ``sked``, ``skedlib-agent`` and ``skedlib-scheduler``."""

from __future__ import annotations

import argparse

from skedlib.client import default_backend_url
from skedlib.keys import DEFAULT_PREFIX

__all__ = ["add_backend_options", "positive_number"]


def positive_number(text: str) -> float:
    """An argparse type: a number greater than zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    """``--backend URL`` (default ``$SKED_BACKEND``, else the embedded store) and
    ``--prefix``."""
    parser.add_argument("--backend", metavar="URL", default=None,
                        help="storage backend URL (default: $SKED_BACKEND or "
                             f"{default_backend_url()})")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX,
                        help="key prefix (default sked/)")
