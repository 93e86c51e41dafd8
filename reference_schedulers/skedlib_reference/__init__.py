"""skedlib's reference schedulers, built only on the public SDK."""

from skedlib_reference.schedulers import BinpackScheduler, DaemonScheduler, SpreadScheduler

__all__ = ["BinpackScheduler", "DaemonScheduler", "SpreadScheduler"]
