"""The module the ``skedlib`` entry point names: it registers the scheduler by name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sked_most_free_cpu.scheduler import MostFreeCpuScheduler
from skedlib import hookimpl


@hookimpl
def skedlib_schedulers() -> Mapping[str, Callable[..., Any]]:
    """Scheduler names (a service's ``scheduler`` field) → factories (no arguments)."""
    return {"most-free-cpu": MostFreeCpuScheduler}
