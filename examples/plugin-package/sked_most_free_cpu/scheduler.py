"""``most-free-cpu``: each task goes to the feasible host with the most free CPU.

Built on skedlib's public SDK: :class:`ServiceScheduler` does the bookkeeping (which
instances are missing, rejected, on a gone host, or of an old version), the stock
filters say which hosts are feasible, and one custom :class:`Scorer` ranks them.
"""

from __future__ import annotations

from collections.abc import Sequence

from skedlib import HostState, Scorer, Service, ServiceScheduler, Snapshot, TaskRequest


class MostFreeCpu(Scorer):
    """Free CPU units after placing the task, as a fraction of the host's total."""

    name = "most_free_cpu"

    def score(self, request: TaskRequest, host: HostState) -> float:
        if not host.total.cpu_units:
            return 0.0
        return (host.free.cpu_units - request.demand.cpu_units) / host.total.cpu_units


class MostFreeCpuScheduler(ServiceScheduler):
    """Stock filters (resources, ports, constraints, draining, rejections), then
    :class:`MostFreeCpu`."""

    name = "most-free-cpu"

    def scorers(self, snapshot: Snapshot, service: Service,
                hosts: Sequence[HostState]) -> list[Scorer]:
        return [MostFreeCpu()]
