"""A task's life on the agent, as a pure state machine: inputs in, new state and effects out.

:func:`step` takes a task's :class:`TaskState`, one input (the issued state changed, a
start finished, a container exited, a health report, a timer fired, a stop or a
rejection finished …), a :class:`View` of what the store holds for the task, and the time;
it returns the new state and the :data:`Effect` s the agent must carry out, in order
(start, stop, reject, admit, arm a timer, publish the health record …). It runs no thread,
sleeps never and does no I/O, so every path can be driven by a test.

Phases::

    idle ─admit─▶ starting ─ok─▶ running
                     │              │ an essential container exits, a check stays critical
                     │              ▼
                     └─failed─▶ a failed attempt (stopping first while containers run)
                                    ├─ attempts left: backoff ─timer─▶ idle
                                    └─ max_attempts reached: rejecting ─▶ rejected
    not wanted: stopping (while containers run) ─▶ rejected, or forgotten (its key is gone)
    fenced (cut off from the store): stopping (while containers run) ─▶ fenced ─▶ idle

One operation (start, stop, reject) is in flight per task at a time (``busy``); inputs
that would start another wait for it to finish. A failed attempt (an essential container
exited, a check stayed critical, a start failed) is counted; the task is restarted after
:meth:`Backoff.delay` of the attempt count, until ``max_attempts`` failed attempts, when
it is rejected. A task that ran healthy for ``attempt_reset`` seconds counts from zero
again.

A task is *fenced* while the agent could not renew its host lease for the task's
``stop_after_disconnect`` (the agent decides, :mod:`~skedlib.agent.fencing`): it is
stopped, or kept from starting, until the agent lifts the fence. Its next start then
re-claims its key first (``Start(claim=True)``), so that a scheduler that moved it
meanwhile either has done so (the start finds the key changed) or now cannot.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal

from skedlib.runtime.backoff import Backoff
from skedlib.validation import DEFAULT_MAX_ATTEMPTS

__all__ = [
    "Admit",
    "Admitted",
    "Adopted",
    "Effect",
    "Exited",
    "Forget",
    "GiveUp",
    "HealthReport",
    "Input",
    "Issued",
    "Log",
    "Phase",
    "Policy",
    "Publish",
    "Reconcile",
    "Reject",
    "RejectDone",
    "Release",
    "Start",
    "StartFailed",
    "StartOk",
    "Step",
    "Stop",
    "StopDone",
    "StopNow",
    "TaskState",
    "Timer",
    "TimerFired",
    "UnwatchHealth",
    "View",
    "step",
]

Phase = Literal["idle", "starting", "running", "stopping", "backoff", "rejecting",
                "rejected", "gone", "fenced"]


@dataclass(frozen=True)
class Policy:
    """The agent's restart policy."""

    host: str
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.2, maximum=10.0))
    """Delay before restart ``n`` is ``backoff.delay(n)``."""
    attempt_reset: float = 60.0
    """Seconds of healthy running after which failed attempts are forgotten."""


@dataclass(frozen=True)
class View:
    """What the store holds for the task when the input arrives (the agent derives it)."""

    present: bool = True
    """The task's key exists on this host."""
    wanted: bool = True
    """The key holds a runnable task, not marked rejected (or marked before our own
    rejection was written, then issued again)."""
    invalid: str = ""
    """Why the stored value is not a runnable task, when it is a JSON object not yet
    marked rejected (so the rejection can be written back)."""
    unwritable: str = ""
    """Why the stored value is not a runnable task, when it is not a JSON object."""
    reject_reason: str = ""
    """The stored task's own ``reject_reason``."""
    changed: bool = False
    """The issued version runs differently from the running one (spec or port)."""
    newer: bool = True
    """The store holds a newer version than the one the last operation used (or none)."""
    active: bool = True
    """The agent has adopted what ran before it and is not shutting down: only then is
    the issued state acted on."""
    fenced: bool = False
    """The agent could not renew its host lease for the task's ``stop_after_disconnect``
    (and has not lifted the fence since): the task must not run."""


@dataclass
class TaskState:
    """Everything the machine knows of one task. Read it freely; change it with :func:`step`."""

    task_id: str
    phase: Phase = "idle"
    busy: bool = False
    """An operation (start, stop, reject) is in flight."""
    holding: bool = False
    """Containers of the task are (or may be) running and must be stopped before it goes."""
    stale: bool = False
    """An operation found the stored task changed: wait for the new version."""
    exit_pending: bool = False
    """A container exited while the task was starting: look again once it started."""
    attempts: int = 0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    message: str = ""
    reject_capacity: bool = False
    """The rejection being written is for want of room only."""
    run_started: float = 0.0
    """Monotonic time the current run started (0: not running)."""
    healthy: bool = False
    ever_healthy: bool = False
    healthy_since: float = 0.0
    """Wall-clock time ``healthy`` last changed (0: never)."""
    timer: int = 0
    """The timer that counts (an older one firing is ignored); 0: none."""
    timers: int = 0
    """Timers armed so far (the next one's number)."""
    after_stop: Literal["reconcile", "failure"] = "reconcile"
    claim: bool = False
    """The task was fenced: its next start re-claims its key first."""
    fenced_while_starting: bool = False
    """A fence went up while the start in flight ran (it did not re-claim for that one)."""


# -- inputs ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Issued:
    """A new version of the task's key was read (or it was deleted)."""

    reconcile: bool = True
    """Judge it now (False while the first listing is read, before adoption)."""


@dataclass(frozen=True)
class Reconcile:
    """Judge the task again (after adoption, a stop finished …)."""


@dataclass(frozen=True)
class Admitted:
    """The answer to :class:`Admit`: None, or why this host cannot run the task."""

    reason: str | None
    capacity: bool = False
    """Only room is missing (memory, CPU, disk, a busy fixed port): the rejection may
    expire."""


@dataclass(frozen=True)
class StartOk:
    """The start finished: every container runs."""

    max_attempts: int
    has_checks: bool
    health_rejected: str = ""
    """The health provider refused the task's checks (then it is rejected)."""
    exited: Exited | None = None
    """With ``exit_pending``: the first container found exited, if any."""


@dataclass(frozen=True)
class StartFailed:
    """The start failed: ``stale`` (the key changed meanwhile), ``rejected`` (the task
    can never run here) or ``failed`` (a failed attempt)."""

    kind: Literal["stale", "rejected", "failed"]
    reason: str = ""
    max_attempts: int | None = None
    capacity: bool = False
    """``rejected`` for want of room only (a busy fixed port): the rejection may expire."""


@dataclass(frozen=True)
class Exited:
    """A container of the task exited (``known``: one the agent started or adopted)."""

    container: str
    what: str
    essential: bool = True
    known: bool = True


@dataclass(frozen=True)
class HealthReport:
    """The health provider's verdict: ``healthy``, ``unhealthy`` (failed: restart) or
    another state (not yet healthy); ``check`` and ``output`` name the first critical
    check (empty: none), ``threshold`` how many critical results in a row failed it."""

    state: str
    check: str = ""
    output: str = ""
    threshold: int = 3


@dataclass(frozen=True)
class TimerFired:
    """Timer ``token`` (from a :class:`Timer` effect) fired."""

    token: int


@dataclass(frozen=True)
class StopDone:
    """The stop finished (errors are logged by the agent; the containers are gone)."""


@dataclass(frozen=True)
class RejectDone:
    """Writing the rejection finished: ``written``, ``changed`` (the key changed or went
    away: nothing written), ``invalid`` (not a JSON object: rejected locally only) or
    ``error`` (the store failed: retried)."""

    outcome: Literal["written", "changed", "invalid", "error"]
    error: str = ""


@dataclass(frozen=True)
class GiveUp:
    """Reject the task now (memory pressure)."""

    reason: str


@dataclass(frozen=True)
class Adopted:
    """The task's containers were found running after a restart and are kept."""

    max_attempts: int
    has_checks: bool
    description: str = ""
    health_rejected: str = ""


@dataclass(frozen=True)
class StopNow:
    """Stop what the task holds (orphans found at adoption, shutdown), then judge again."""

    why: str


Input = (Issued | Reconcile | Admitted | StartOk | StartFailed | Exited | HealthReport
         | TimerFired | StopDone | RejectDone | GiveUp | Adopted | StopNow)


# -- effects --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Admit:
    """Decide whether this host can run the issued task; answer with :class:`Admitted`."""


@dataclass(frozen=True)
class Start:
    """Start the issued task (answer: :class:`StartOk` or :class:`StartFailed`)."""

    claim: bool = False
    """Write the key back at the revision known before starting (a ``stale`` failure
    when it changed): the task was fenced, and may have been moved meanwhile."""


@dataclass(frozen=True)
class Stop:
    """Stop the task's containers (answer: :class:`StopDone`); log ``why`` if set."""

    why: str = ""
    fence: bool = False
    """A fencing stop: it must not wait behind other operations, and its grace period
    ends by the time the lease would expire (the agent logs and counts it)."""


@dataclass(frozen=True)
class Reject:
    """Stop the containers and write the rejection back (answer: :class:`RejectDone`)."""

    reason: str
    capacity: bool = False
    """For want of room only: written as a capacity rejection, which expires."""


@dataclass(frozen=True)
class Timer:
    """Arm timer ``token``: feed :class:`TimerFired` after ``delay`` seconds."""

    delay: float
    token: int


@dataclass(frozen=True)
class Publish:
    """Write the task's health record (if it changed)."""


@dataclass(frozen=True)
class Release:
    """Give back the task's resources and port."""


@dataclass(frozen=True)
class Forget:
    """The key is gone and nothing runs: drop the task and its health record."""


@dataclass(frozen=True)
class UnwatchHealth:
    """Stop watching the task's checks."""


@dataclass(frozen=True)
class Log:
    """A line for the agent's log."""

    level: Literal["info", "warning", "error"]
    message: str


Effect = Admit | Start | Stop | Reject | Timer | Publish | Release | Forget | UnwatchHealth | Log


@dataclass(frozen=True)
class Step:
    """:func:`step`'s result: the new state and the effects to carry out, in order."""

    state: TaskState
    effects: list[Effect]


def step(state: TaskState, event: Input, view: View, policy: Policy, *, now: float,
         wall: float = 0.0) -> Step:
    """The task's next state and the effects to carry out. ``state`` is not changed.

    ``now`` is monotonic time (attempt reset), ``wall`` the wall clock (``healthy_since``).
    """
    machine = _Machine(copy.copy(state), view, policy, now, wall)
    machine.handle(event)
    return Step(machine.s, machine.effects)


class _Machine:
    """One step's working copy: the state being changed and the effects so far."""

    def __init__(self, state: TaskState, view: View, policy: Policy, now: float,
                 wall: float) -> None:
        self.s = state
        self.view = view
        self.policy = policy
        self.now = now
        self.wall = wall
        self.effects: list[Effect] = []

    def emit(self, effect: Effect) -> None:
        self.effects.append(effect)

    def handle(self, event: Input) -> None:
        s = self.s
        if isinstance(event, Issued):
            s.stale = False
            if event.reconcile:
                self.reconcile()
        elif isinstance(event, Reconcile):
            self.reconcile()
        elif isinstance(event, Admitted):
            self.admitted(event.reason, event.capacity)
        elif isinstance(event, StartOk):
            self.start_ok(event)
        elif isinstance(event, StartFailed):
            self.start_failed(event)
        elif isinstance(event, Exited):
            self.exited(event)
        elif isinstance(event, HealthReport):
            self.health(event)
        elif isinstance(event, TimerFired):
            self.timer_fired(event.token)
        elif isinstance(event, StopDone):
            s.busy = s.holding = False
            s.phase = "idle"
            if s.after_stop == "failure":
                s.after_stop = "reconcile"
                self.after_failure()
            else:
                self.reconcile()
        elif isinstance(event, RejectDone):
            self.reject_done(event)
        elif isinstance(event, GiveUp):
            self.reject(event.reason)
        elif isinstance(event, Adopted):
            self.adopted(event)
        elif isinstance(event, StopNow):
            s.holding = True
            self.stop(event.why, then="reconcile")

    # -- judging the issued state ---------------------------------------------------------
    def reconcile(self) -> None:
        s, v = self.s, self.view
        if v.fenced:
            s.claim = True  # whatever starts it next, after the fence, re-claims it first
            s.fenced_while_starting = s.fenced_while_starting or s.phase == "starting"
        if s.busy or not v.active:
            return
        if not v.wanted:
            if s.holding:
                self.stop("its key was removed" if not v.present else "it is rejected",
                          then="reconcile")
                return
            s.timer = 0
            self.emit(Release())
            if not v.present:
                s.phase = "gone"
                self.emit(Forget())
            elif v.invalid:
                if not s.stale:
                    self.reject(v.invalid)
            elif v.unwritable:
                if s.message != v.unwritable:
                    self.emit(Log("error", f"cannot run {s.task_id}: {v.unwritable} (not a "
                                           "JSON object, so it cannot be marked rejected)"))
                s.message = v.unwritable
                s.phase = "rejected"
                self.emit(Publish())
            else:
                s.phase = "rejected"
                if v.reject_reason and not s.message:
                    s.message = v.reject_reason
                self.emit(Publish())
            return
        if s.phase == "rejecting":
            return  # writing the rejection is being retried
        if s.phase in ("rejected", "gone"):  # issued again
            s.phase = "idle"
            s.attempts, s.message = 0, ""
        if v.fenced:
            self.fence()
            return
        if s.phase == "fenced":  # the fence was lifted
            s.phase = "idle"
        if s.phase == "running":
            if v.changed:
                self.stop("its task changed", then="reconcile")
            elif s.claim:  # its start spanned a fence: its view may be stale
                self.stop("it started while the host was fenced; starting it again after "
                          "re-claiming it", then="reconcile")
            return
        if s.phase == "idle" and not s.stale:
            if s.attempts and s.attempts >= s.max_attempts:
                # its attempts are used up (a rejection lost a race with another write
                # of the same task): reject it again rather than start it once more
                self.reject(s.message)
                return
            self.emit(Admit())

    def fence(self) -> None:
        """Cut off from the store for longer than the task may run so: stop it, or keep
        it from starting (a backoff timer pending is dropped)."""
        s = self.s
        if s.holding:
            self.stop("", then="reconcile", fence=True)
        elif s.phase != "fenced":
            s.timer = 0
            s.phase = "fenced"
            s.message = "fenced: the agent could not renew its host lease"
            self.emit(Release())
            self.emit(Publish())

    def await_newer(self) -> None:
        """The store had a newer version than the operation used: judge that one."""
        if not self.view.newer:
            self.s.stale = True  # not delivered yet: the watch will bring it
        else:
            self.reconcile()

    # -- start --------------------------------------------------------------------------
    def admitted(self, reason: str | None, capacity: bool = False) -> None:
        s = self.s
        if reason is not None:
            self.reject(reason, capacity)
            return
        s.exit_pending = False
        s.fenced_while_starting = False
        s.phase = "starting"
        self.emit(Publish())
        s.busy = True
        self.emit(Start(s.claim))

    def start_ok(self, event: StartOk) -> None:
        s = self.s
        s.busy = False
        s.holding = True
        s.claim = s.fenced_while_starting  # a start re-claims or runs before the fence
        s.fenced_while_starting = False
        s.max_attempts = event.max_attempts
        s.run_started = self.now
        s.healthy = s.ever_healthy = False
        s.phase = "running"
        if event.health_rejected:
            self.reject(event.health_rejected)
            return
        if not event.has_checks:
            self.set_healthy(True)
        self.emit(Publish())
        if s.exit_pending:
            s.exit_pending = False
            if event.exited is not None:
                self.exited(event.exited)
        self.reconcile()

    def start_failed(self, event: StartFailed) -> None:
        s = self.s
        s.busy = False
        if event.max_attempts is not None:
            s.max_attempts = event.max_attempts
        if event.kind == "stale":
            self.emit(Release())
            s.phase = "idle"
            self.await_newer()
        elif event.kind == "rejected":
            self.emit(Release())
            self.reject(event.reason, event.capacity)
        else:
            s.phase = "idle"
            self.fail(f"start failed: {event.reason}")

    def adopted(self, event: Adopted) -> None:
        s = self.s
        s.holding = True
        s.max_attempts = event.max_attempts
        s.run_started = self.now
        s.phase = "running"
        self.emit(Log("info", f"adopted {s.task_id} ({event.description})"))
        if event.health_rejected:
            self.reject(event.health_rejected)
            return
        if not event.has_checks:
            self.set_healthy(True)
        self.emit(Publish())

    # -- running --------------------------------------------------------------------------
    def exited(self, event: Exited) -> None:
        s = self.s
        if s.phase == "starting":
            s.exit_pending = True
            return
        if s.phase != "running" or s.busy or not event.known:
            return
        if not event.essential:
            self.emit(Log("info", f"{s.task_id}: container {event.container} {event.what} "
                                  "(not essential)"))
            return
        self.fail(f"container {event.container} {event.what}")

    def health(self, event: HealthReport) -> None:
        s = self.s
        if s.phase != "running" or s.busy:
            return
        if event.state == "unhealthy":
            detail = (f"check {event.check} critical: {event.output}" if event.check
                      else "checks critical")
            self.fail(f"{detail} ({event.threshold} times in a row)")
            return
        if s.healthy and event.state != "healthy":
            self.emit(Log("warning", f"{s.task_id} is unhealthy"
                                     + (f": check {event.check}: {event.output}" if event.check
                                        else "")))
        elif not s.healthy and event.state == "healthy" and s.ever_healthy:
            self.emit(Log("info", f"{s.task_id} is healthy again"))
        self.set_healthy(event.state == "healthy")
        self.emit(Publish())

    def set_healthy(self, healthy: bool) -> None:
        s = self.s
        if healthy != s.healthy:
            s.healthy = healthy
            s.healthy_since = self.wall
            if healthy:
                if not s.ever_healthy:
                    self.emit(Log("info", f"{s.task_id} is healthy"))
                s.ever_healthy = True
                if s.phase == "running":
                    s.message = ""

    # -- failures, restarts and rejection -------------------------------------------------
    def fail(self, why: str) -> None:
        """A failed attempt: stop what is left, then back off or reject."""
        s = self.s
        ran = self.now - s.run_started if s.run_started else 0.0
        if s.ever_healthy and ran >= self.policy.attempt_reset:
            s.attempts = 0
        s.attempts += 1
        s.message = why
        s.run_started = 0.0
        self.emit(UnwatchHealth())
        self.set_healthy(False)
        self.emit(Log("warning", f"{s.task_id} failed (attempt {s.attempts} of "
                                 f"{s.max_attempts}): {why}"))
        if s.holding:
            self.stop("", then="failure")
        else:
            self.after_failure()

    def after_failure(self) -> None:
        s = self.s
        if not self.view.wanted:
            self.reconcile()
            return
        if s.attempts >= s.max_attempts:
            self.reject(f"failed {s.attempts} times on host {self.policy.host}; last: "
                        f"{s.message}")
            return
        delay = self.policy.backoff.delay(s.attempts)
        s.phase = "backoff"
        s.message = (f"{s.message}; restarting in {delay:.1f}s (attempt {s.attempts + 1} of "
                     f"{s.max_attempts})")
        self.emit(Publish())
        self.arm(delay)

    def timer_fired(self, token: int) -> None:
        s = self.s
        if token != s.timer:
            return
        if s.phase == "backoff":
            s.phase = "idle"
            self.reconcile()
        elif s.phase == "rejecting" and not s.busy and self.view.present:
            self.reject(s.message, s.reject_capacity)

    def arm(self, delay: float) -> None:
        s = self.s
        s.timers += 1
        s.timer = s.timers
        self.emit(Timer(delay, s.timer))

    def reject(self, reason: str, capacity: bool = False) -> None:
        s = self.s
        self.emit(UnwatchHealth())
        s.message = reason
        s.reject_capacity = capacity
        s.timer = 0
        self.set_healthy(False)
        s.phase = "rejecting"
        s.holding = False  # the reject operation stops them
        s.busy = True
        self.emit(Reject(reason, capacity))

    def reject_done(self, event: RejectDone) -> None:
        s = self.s
        s.busy = False
        self.emit(Release())
        if event.outcome == "written":
            s.phase = "rejected"
            self.emit(Log("warning", f"rejected {s.task_id}: {s.message}"))
            self.emit(Publish())
        elif event.outcome == "changed":  # judge the new version
            s.phase = "idle"
            self.await_newer()
        elif event.outcome == "invalid":
            self.emit(Log("error", f"cannot mark {s.task_id} rejected: {event.error}"))
            s.phase = "rejected"
            self.emit(Publish())
        else:  # phase stays "rejecting" until the retry
            self.emit(Log("warning", f"could not write the rejection of {s.task_id}: "
                                     f"{event.error} (retrying)"))
            self.arm(1.0)

    def stop(self, why: str, then: Literal["reconcile", "failure"], fence: bool = False
             ) -> None:
        s = self.s
        self.emit(UnwatchHealth())
        self.set_healthy(False)
        s.phase = "stopping"
        s.after_stop = then
        s.busy = True
        self.emit(Stop(why, fence))
