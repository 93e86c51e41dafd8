"""Registers the reference schedulers through the ``skedlib_schedulers`` hook.

The schedulers (and the scheduling framework under them) are imported when one is
created, so loading the registry — which every skedlib process does — stays cheap for
the processes that never schedule (an agent, a job worker, the CLI)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from skedlib import hookimpl

if TYPE_CHECKING:
    from skedlib_reference.schedulers import BinpackScheduler, DaemonScheduler, SpreadScheduler


def _binpack() -> BinpackScheduler:
    from skedlib_reference.schedulers import BinpackScheduler

    return BinpackScheduler()


def _spread() -> SpreadScheduler:
    from skedlib_reference.schedulers import SpreadScheduler

    return SpreadScheduler()


def _daemon() -> DaemonScheduler:
    from skedlib_reference.schedulers import DaemonScheduler

    return DaemonScheduler()


@hookimpl
def skedlib_schedulers() -> Mapping[str, Callable[..., Any]]:
    """``binpack``, ``spread`` and ``daemon``."""
    return {"binpack": _binpack, "spread": _spread, "daemon": _daemon}
