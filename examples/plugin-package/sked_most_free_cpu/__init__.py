"""An example third-party scheduler for skedlib: ``most-free-cpu``."""

from sked_most_free_cpu.scheduler import MostFreeCpu, MostFreeCpuScheduler

__all__ = ["MostFreeCpu", "MostFreeCpuScheduler"]
