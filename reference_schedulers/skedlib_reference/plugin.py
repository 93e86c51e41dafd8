"""Registers the reference schedulers through the ``skedlib_schedulers`` hook."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from skedlib import hookimpl
from skedlib_reference.schedulers import BinpackScheduler, DaemonScheduler, SpreadScheduler


@hookimpl
def skedlib_schedulers() -> Mapping[str, Callable[..., Any]]:
    """``binpack``, ``spread`` and ``daemon``."""
    return {"binpack": BinpackScheduler, "spread": SpreadScheduler, "daemon": DaemonScheduler}
