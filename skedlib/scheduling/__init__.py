"""The scheduling SDK: snapshots, extension points, plans, their validation and commit.

A scheduler reads a :class:`Snapshot`, returns a :class:`Plan` (through
:class:`Scheduler.plan`), and the plan is checked with :func:`validate_plan` and written
with :func:`commit_plan` under optimistic concurrency.
"""

from skedlib.constraints import Constraint, parse_constraint
from skedlib.scheduling.cache import Change, SnapshotCache
from skedlib.scheduling.commit import CommitResult, commit_plan
from skedlib.scheduling.executable import (
    ExecHost,
    ExecPlacement,
    ExecRequest,
    ExecResponse,
    ExecRun,
    ExecScheduler,
    ExecSchedulerError,
    ExecSchedulers,
)
from skedlib.scheduling.framework import (
    CAPACITY_BACKOFF,
    BestFit,
    ConstraintsFilter,
    DistinctHostFilter,
    Filter,
    HostPool,
    LeastLoaded,
    NotDraining,
    NotRejectedBefore,
    Placement,
    Placer,
    PortsFree,
    ResourcesFit,
    Scorer,
    ServiceHosts,
    SpreadAttribute,
    TaskRequest,
    Unschedulable,
    capacity_rejection_holds,
    stock_filters,
)
from skedlib.scheduling.plan import Plan, PlanProblem, validate_plan
from skedlib.scheduling.scheduler import Scheduler, SchedulingResult, ServiceScheduler
from skedlib.scheduling.snapshot import (
    HostState,
    ShareIndex,
    Snapshot,
    demand_of,
    host_share,
    is_task_healthy,
    read_snapshot,
)

__all__ = [
    "CAPACITY_BACKOFF",
    "BestFit",
    "Change",
    "CommitResult",
    "Constraint",
    "ConstraintsFilter",
    "DistinctHostFilter",
    "ExecHost",
    "ExecPlacement",
    "ExecRequest",
    "ExecResponse",
    "ExecRun",
    "ExecScheduler",
    "ExecSchedulerError",
    "ExecSchedulers",
    "Filter",
    "HostPool",
    "HostState",
    "LeastLoaded",
    "NotDraining",
    "NotRejectedBefore",
    "Placement",
    "Placer",
    "Plan",
    "PlanProblem",
    "PortsFree",
    "ResourcesFit",
    "Scheduler",
    "SchedulingResult",
    "Scorer",
    "ServiceHosts",
    "ServiceScheduler",
    "ShareIndex",
    "Snapshot",
    "SnapshotCache",
    "SpreadAttribute",
    "TaskRequest",
    "Unschedulable",
    "capacity_rejection_holds",
    "commit_plan",
    "demand_of",
    "host_share",
    "is_task_healthy",
    "parse_constraint",
    "read_snapshot",
    "stock_filters",
    "validate_plan",
]
