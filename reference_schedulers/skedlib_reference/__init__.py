"""skedlib's reference schedulers, built only on the public SDK."""

from typing import TYPE_CHECKING

from skedlib import lazy_attributes

if TYPE_CHECKING:
    from skedlib_reference.schedulers import BinpackScheduler, DaemonScheduler, SpreadScheduler

__all__ = ["BinpackScheduler", "DaemonScheduler", "SpreadScheduler"]

# imported on first use: registering the plugin must not load the scheduling framework
__getattr__ = lazy_attributes(__name__, {
    "BinpackScheduler": "skedlib_reference.schedulers",
    "DaemonScheduler": "skedlib_reference.schedulers",
    "SpreadScheduler": "skedlib_reference.schedulers",
})
