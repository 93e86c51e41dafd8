"""The batch job model (work stealing): a run-to-completion command that any job worker may claim.

A :class:`Job` record lives under ``jobs/records/<id>``; beside it exactly one status key
says where it is in its life (``jobs/status/queued/<id>``, ``…/running/<node>/<id>``,
``…/<complete|failed|canceled>/<epoch>/<id>``). Every transition rewrites the record and
moves the status key in one transaction (:mod:`skedlib.jobs.store`), so the two never
disagree.

States::

    queued ──claim──▶ running ──exit 0──────────────▶ complete
      │  ▲              │ ├──exit ≠ 0, signal, limit,─▶ failed
      │  │              │ │  timeout, cannot start
      │  └─node lost,───┘ └──node lost, no restart ──▶ failed
      │    restart                (or attempts used up)
      └──cancel──▶ canceled ◀──cancel── running

Units: ``memory`` and ``disk`` are MiB, ``cpu_units`` 1/1024 of a core (as for tasks);
times are UNIX seconds (float); ``timeout`` is nanoseconds (JSON, as every duration in
skedlib), 0 for none.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Annotated, Literal

import msgspec

from skedlib.errors import ValidationError
from skedlib.keys import validate_name

__all__ = [
    "FINISHED_STATES",
    "JOB_STATES",
    "Job",
    "JobNode",
    "JobPage",
    "JobRequirements",
    "JobSpec",
    "JobState",
    "check_spec",
    "new_job_id",
]

JobState = Literal["queued", "running", "complete", "failed", "canceled"]
JOB_STATES: tuple[JobState, ...] = ("queued", "running", "complete", "failed", "canceled")
FINISHED_STATES: tuple[JobState, ...] = ("complete", "failed", "canceled")

NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class JobRequirements(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a job needs of its node, enforced while it runs (0: no requirement)."""

    memory: NonNegative = 0
    """MiB of memory; the job is killed when it uses more."""
    cpu_units: NonNegative = 0
    """CPU, 1024 per core; the job is throttled to it."""
    disk: NonNegative = 0
    """MiB of disk the node must have free for it (not enforced while it runs)."""

    def describe(self) -> str:
        """For people: ``memory 512 MiB, cpu_units 1024, disk 10 MiB`` (``none`` if empty)."""
        parts = [f"memory {self.memory} MiB" if self.memory else "",
                 f"cpu_units {self.cpu_units}" if self.cpu_units else "",
                 f"disk {self.disk} MiB" if self.disk else ""]
        return ", ".join(p for p in parts if p) or "none"

    def fits(self, free: JobRequirements) -> bool:
        """True when these requirements fit into ``free``."""
        return (self.memory <= free.memory and self.cpu_units <= free.cpu_units
                and self.disk <= free.disk)

    def plus(self, other: JobRequirements) -> JobRequirements:
        """The sum of two amounts."""
        return JobRequirements(memory=self.memory + other.memory,
                               cpu_units=self.cpu_units + other.cpu_units,
                               disk=self.disk + other.disk)

    def minus(self, other: JobRequirements) -> JobRequirements:
        """This amount less ``other``."""
        return JobRequirements(memory=self.memory - other.memory,
                               cpu_units=self.cpu_units - other.cpu_units,
                               disk=self.disk - other.disk)


class JobSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What to run: the body of a submit. Unknown fields are refused."""

    command: str
    """The program: a path, or a name looked up on the node's PATH."""
    args: list[str] = msgspec.field(default_factory=list)
    env: dict[str, str] = msgspec.field(default_factory=dict)
    """Added to the worker's environment."""
    cwd: str = ""
    """Working directory on the node (default: a fresh directory per job)."""
    requirements: JobRequirements = msgspec.field(default_factory=JobRequirements)
    restart_on_node_failure: bool = True
    """Queue the job again when its node dies while running it (at most ``max_attempts``)."""
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    """Attempts in all, counting each claim; beyond it a lost node fails the job."""
    timeout: NonNegative = 0
    """Nanoseconds the job may run before it is killed and failed (0: no limit)."""
    name: str = ""
    """A label for people; not unique."""


class Job(msgspec.Struct, kw_only=True):
    """A job record: its spec and where it is in its life."""

    id: str
    command: str
    args: list[str] = msgspec.field(default_factory=list)
    env: dict[str, str] = msgspec.field(default_factory=dict)
    cwd: str = ""
    requirements: JobRequirements = msgspec.field(default_factory=JobRequirements)
    restart_on_node_failure: bool = True
    max_attempts: int = 3
    timeout: int = 0
    name: str = ""
    status: JobState = "queued"
    node: str = ""
    """The node running it, or the last node that ran it."""
    attempts: int = 0
    """How many times it was claimed."""
    exit_code: int | None = None
    """The command's exit status; negative: killed by that signal."""
    reason: str = ""
    """Why it is in its state, for people: the failure, who canceled, why it waits."""
    limits: str = ""
    """How the requirements were enforced on the node: cgroup2, cgroup1, rlimit or none."""
    log_url: str = ""
    """Where the node that ran it serves its output."""
    output_bytes: int | None = None
    """The size in bytes of the output (stdout and stderr) its node keeps, recorded when
    the node wrote its end; null (None) while it runs or when its node did not write its
    end. A node keeps no output file for a job that ended with none (0): there is
    nothing to fetch."""
    submitted_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None

    @classmethod
    def from_spec(cls, spec: JobSpec, job_id: str | None = None,
                  now: float | None = None) -> Job:
        """A queued job made of ``spec``."""
        return cls(id=job_id or new_job_id(), command=spec.command, args=list(spec.args),
                   env=dict(spec.env), cwd=spec.cwd, requirements=spec.requirements,
                   restart_on_node_failure=spec.restart_on_node_failure,
                   max_attempts=spec.max_attempts, timeout=spec.timeout, name=spec.name,
                   submitted_at=time.time() if now is None else now)

    @property
    def finished(self) -> bool:
        """True once complete, failed or canceled."""
        return self.status in FINISHED_STATES

    @property
    def succeeded(self) -> bool:
        """True when complete (the command exited 0)."""
        return self.status == "complete"


class JobNode(msgspec.Struct, kw_only=True):
    """A live job worker, under ``jobs/nodes/<name>`` bound to its lease."""

    name: str
    capacity: JobRequirements
    """What it offers jobs in all."""
    slots: int
    """Jobs it runs at once at most."""
    log_url: str = ""
    """Base URL of its log server."""
    log_token: str = ""
    """The bearer token its log server wants. Whoever can read the store can read it (and
    could already run jobs); the HTTP API leaves it out of node listings."""
    limits: str = ""
    """How it enforces requirements: cgroup2, cgroup1, rlimit or none."""
    pid: int = 0
    hostname: str = ""
    started_at: float = 0.0


class JobPage(msgspec.Struct, kw_only=True):
    """One page of a job listing; pass ``next_token`` back for the next."""

    items: list[Job]
    next_token: str | None = None


def new_job_id() -> str:
    """A new job id: a UUID version 7, so ids sort by submit time (RFC 9562)."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 \
        | 0b10 << 62 | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def check_spec(spec: JobSpec) -> JobSpec:
    """Refuse a spec a worker could never run: an empty command, a bad env name."""
    if not spec.command or "\x00" in spec.command:
        raise ValidationError("job: field command: must be a non-empty program name or path")
    for i, arg in enumerate(spec.args):
        if "\x00" in arg:
            raise ValidationError(f"job: field args[{i}]: contains a NUL character")
    for key, value in spec.env.items():
        if not key or "=" in key or "\x00" in key or "\x00" in value:
            raise ValidationError(f"job: field env.{key!r}: not a valid environment variable")
    if spec.name:
        validate_name(spec.name, "job name")
    return spec
