"""The scheduling SDK: snapshots of the store, plans, and their validation."""

from skedlib.scheduling.plan import Plan, PlanProblem, validate_plan
from skedlib.scheduling.snapshot import HostState, Snapshot, demand_of, read_snapshot

__all__ = ["HostState", "Plan", "PlanProblem", "Snapshot", "demand_of", "read_snapshot",
           "validate_plan"]
