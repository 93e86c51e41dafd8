"""The pure task-lifecycle state machine, driven by hypothesis against a simulated world.

The world plays the store (the task issued, changed, withdrawn, rejected by someone
else, replaced by a bad record), the agent's fence (cut off from the store, and back),
the worker pool (operations finishing in any order the
rules pick, with any outcome), the containers (exits), the health provider and the
timers (any armed timer may fire, stale ones included). After every step the invariants
the agent relies on are checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from skedlib.agent import lifecycle as lc
from skedlib.runtime import Backoff

MAX_ATTEMPTS = 3


@dataclass
class World:
    """What the store and the worker pool hold, as the machine's environment."""

    present: bool = True
    wanted: bool = True
    invalid: str = ""
    changed: bool = False
    newer: bool = True
    pending: str | None = None
    """The operation in flight: start, stop or reject."""
    holding: bool = False
    """Containers run (as far as the world knows)."""
    timers: list[int] = field(default_factory=list)
    forgotten: bool = False
    admit: str | None = None
    """What admission answers (None: accepted)."""
    version: int = 1
    """Bumped by every new version of the key (or its deletion)."""
    exhausted: int = 0
    """The version at which the task used up its attempts (0: it has not)."""
    undelivered: bool = False
    """The key changed under an operation and the watch has not delivered it yet."""
    fenced: bool = False
    """The agent could not renew its lease for the task's stop_after_disconnect."""
    must_claim: bool = False
    """A fence went up since the last successful start: the next start re-claims."""
    fenced_while_starting: bool = False
    """A fence went up while the start in flight ran."""

    def view(self) -> lc.View:
        return lc.View(present=self.present, wanted=self.wanted, invalid=self.invalid,
                       changed=self.changed, newer=self.newer, fenced=self.fenced)


class LifecycleMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.policy = lc.Policy("h1", Backoff(initial=0.2, maximum=2.0), attempt_reset=1e9)
        self.state = lc.TaskState("t1", max_attempts=MAX_ATTEMPTS)
        self.world = World()
        self.now = 1.0
        self.delays: list[float] = []
        self.feed(lc.Issued())

    # -- feeding the machine and carrying out its effects ----------------------------
    def feed(self, event: lc.Input) -> None:
        assert not self.world.forgotten, "an input reached a forgotten task"
        self.now += 1.0
        result = lc.step(self.state, event, self.world.view(), self.policy, now=self.now,
                         wall=self.now)
        self.state = result.state
        for effect in result.effects:
            self.perform(effect)

    def perform(self, effect: lc.Effect) -> None:
        w = self.world
        if isinstance(effect, lc.Start | lc.Stop | lc.Reject):
            assert w.pending is None, f"{effect} while {w.pending} is in flight"
        if isinstance(effect, lc.Admit):
            self.feed(lc.Admitted(w.admit))
        elif isinstance(effect, lc.Start):
            assert not w.holding, "started while containers still run"
            assert w.wanted, "started a task that is not wanted"
            assert not w.fenced, "started a fenced task"
            assert effect.claim or not w.must_claim, "started after a fence without a claim"
            # out of attempts: never started again, unless a newer version was issued
            assert (self.state.attempts < self.state.max_attempts
                    or w.version > w.exhausted), "started after max_attempts"
            w.pending, w.newer = "start", False
            w.fenced_while_starting = False
        elif isinstance(effect, lc.Stop):
            w.pending, w.newer = "stop", False
            assert w.fenced or not effect.fence, "a fencing stop without a fence"
        elif isinstance(effect, lc.Reject):
            w.pending, w.newer = "reject", False
            if self.state.attempts >= self.state.max_attempts:
                w.exhausted = w.version
        elif isinstance(effect, lc.Timer):
            w.timers.append(effect.token)
            self.delays.append(effect.delay)
            assert effect.delay <= max(self.policy.backoff.maximum, 1.0)
            if self.state.phase == "backoff":
                assert effect.delay <= self.policy.backoff.maximum
                assert effect.delay == self.policy.backoff.delay(self.state.attempts)
        elif isinstance(effect, lc.Forget):
            assert not w.holding and w.pending is None, "forgot a task that still runs"
            assert not w.present
            w.forgotten = True

    # -- the store --------------------------------------------------------------------
    @rule(admit=st.sampled_from([None, None, "no room"]))
    def issue(self, admit: str | None) -> None:
        w = self.world
        if w.forgotten:  # issued again after it was forgotten: the agent tracks it anew
            self.state = lc.TaskState("t1", max_attempts=MAX_ATTEMPTS)
            w.forgotten, w.timers = False, []
            w.must_claim = w.fenced  # delivered by the watch: as fresh as any issue
        w.present, w.wanted, w.invalid, w.changed = True, True, "", False
        w.admit = admit
        self.new_version()

    @precondition(lambda self: not self.world.forgotten and self.world.wanted)
    @rule()
    def change(self) -> None:
        self.world.changed = True
        self.new_version()

    @precondition(lambda self: not self.world.forgotten)
    @rule()
    def withdraw(self) -> None:
        w = self.world
        w.present, w.wanted, w.invalid = False, False, ""
        self.new_version()

    @precondition(lambda self: not self.world.forgotten)
    @rule(bad=st.booleans())
    def rejected_elsewhere(self, bad: bool) -> None:
        w = self.world
        w.present, w.wanted = True, False
        w.invalid = "not a task" if bad else ""
        self.new_version()

    def new_version(self) -> None:
        """The watch delivers a new version of the key (or its deletion)."""
        w = self.world
        w.version += 1
        w.newer, w.undelivered = True, False
        self.feed(lc.Issued())

    @precondition(lambda self: self.world.undelivered and not self.world.forgotten)
    @rule()
    def deliver(self) -> None:
        """The version an operation tripped over arrives."""
        self.new_version()

    def key_changed(self, delivered: bool) -> None:
        """An operation found the key changed: the watch has or has not delivered it."""
        w = self.world
        w.version += 1
        if delivered:
            w.newer = True
        else:
            w.undelivered = True

    # -- the worker pool ----------------------------------------------------------------
    @precondition(lambda self: self.world.pending == "start")
    @rule(outcome=st.sampled_from(["ok", "ok-exited", "ok-health-refused", "stale",
                                   "rejected", "failed", "failed", "failed"]),
          delivered=st.booleans())
    def start_done(self, outcome: str, delivered: bool) -> None:
        w = self.world
        w.pending = None
        if outcome.startswith("ok"):
            w.holding = True
            w.must_claim = w.fenced or w.fenced_while_starting
            w.changed = False  # the running version is the issued one
            exited = lc.Exited("c", "exited") if outcome == "ok-exited" else None
            refused = "bad check" if outcome == "ok-health-refused" else ""
            self.feed(lc.StartOk(MAX_ATTEMPTS, has_checks=True, health_rejected=refused,
                                 exited=exited))
        elif outcome == "failed":
            self.feed(lc.StartFailed("failed", "boom", MAX_ATTEMPTS))
        elif outcome == "rejected":
            self.feed(lc.StartFailed("rejected", "no", MAX_ATTEMPTS))
        else:
            self.key_changed(delivered)
            self.feed(lc.StartFailed("stale", max_attempts=MAX_ATTEMPTS))

    @precondition(lambda self: self.world.pending == "stop")
    @rule()
    def stop_done(self) -> None:
        self.world.pending, self.world.holding = None, False
        self.feed(lc.StopDone())

    @precondition(lambda self: self.world.pending == "reject")
    @rule(outcome=st.sampled_from(["written", "changed", "invalid", "error"]),
          delivered=st.booleans())
    def reject_done(self, outcome: str, delivered: bool) -> None:
        w = self.world
        w.pending, w.holding = None, False
        if outcome == "written":
            w.wanted, w.invalid = False, ""  # stored as rejected (by us)
        elif outcome == "changed":
            self.key_changed(delivered)
        self.feed(lc.RejectDone(outcome, "store away"))  # type: ignore[arg-type]

    # -- the fence ----------------------------------------------------------------------
    @precondition(lambda self: not self.world.forgotten and not self.world.fenced)
    @rule()
    def fence_up(self) -> None:
        """The lease was not renewed for the task's stop_after_disconnect."""
        w = self.world
        w.fenced = w.must_claim = True
        w.fenced_while_starting = w.fenced_while_starting or w.pending == "start"
        self.feed(lc.Reconcile())

    @precondition(lambda self: not self.world.forgotten and self.world.fenced)
    @rule()
    def fence_lifted(self) -> None:
        self.world.fenced = False
        self.feed(lc.Reconcile())

    # -- containers, checks, timers, pressure --------------------------------------------
    @precondition(lambda self: not self.world.forgotten)
    @rule(essential=st.booleans())
    def container_exits(self, essential: bool) -> None:
        self.feed(lc.Exited("c", "exited with 1", essential=essential))

    @precondition(lambda self: not self.world.forgotten)
    @rule(state=st.sampled_from(["healthy", "unhealthy", "starting"]))
    def health(self, state: str) -> None:
        self.feed(lc.HealthReport(state, "http", "refused"))

    @precondition(lambda self: bool(self.world.timers) and not self.world.forgotten)
    @rule(data=st.data())
    def timer_fires(self, data: st.DataObject) -> None:
        token = data.draw(st.sampled_from(self.world.timers))
        self.world.timers.remove(token)
        self.feed(lc.TimerFired(token))

    @precondition(lambda self: not self.world.forgotten and self.state.phase == "running"
                  and not self.state.busy)
    @rule()
    def give_up(self) -> None:
        self.feed(lc.GiveUp("memory pressure"))

    # -- invariants -----------------------------------------------------------------------
    @invariant()
    def one_operation_at_a_time(self) -> None:
        assert self.state.busy == (self.world.pending is not None)

    @invariant()
    def holding_matches_the_world(self) -> None:
        if self.world.pending is None:
            assert self.state.holding == self.world.holding

    @invariant()
    def never_more_starts_than_attempts_allow(self) -> None:
        # each start after the first follows a failed attempt (or a stop for a change,
        # a stale start, a lost rejection); failures alone never exceed max_attempts
        assert self.state.attempts <= self.state.max_attempts

    @invariant()
    def given_up_after_max_attempts(self) -> None:
        s, w = self.state, self.world
        if (s.attempts >= s.max_attempts and w.wanted and not w.forgotten
                and w.version == w.exhausted):
            assert s.phase in ("rejecting", "rejected", "stopping"), s.phase

    @invariant()
    def nothing_runs_behind_a_fence(self) -> None:
        w = self.world
        if w.fenced and w.pending is None and not w.forgotten:
            assert not w.holding, f"containers run behind the fence ({self.state.phase})"

    @invariant()
    def nothing_runs_unclaimed_after_a_fence(self) -> None:
        # a start that spanned a fence is stopped and started again with a claim
        w = self.world
        if w.holding and w.pending is None and not w.forgotten:
            assert not w.must_claim, f"runs unclaimed after a fence ({self.state.phase})"

    @invariant()
    def phases_agree_with_the_operation(self) -> None:
        expected = {"start": "starting", "stop": "stopping", "reject": "rejecting"}
        if self.world.pending is not None:
            assert self.state.phase == expected[self.world.pending]

    def teardown(self) -> None:
        """Withdraw the task and let everything finish: it must end stopped and forgotten."""
        w = self.world
        if w.forgotten:
            return
        w.present, w.wanted, w.invalid = False, False, ""
        self.new_version()
        for _ in range(20):
            if w.pending == "start":
                w.pending, w.holding = None, True
                self.feed(lc.StartOk(MAX_ATTEMPTS, has_checks=False))
            elif w.pending == "stop":
                w.pending, w.holding = None, False
                self.feed(lc.StopDone())
            elif w.pending == "reject":
                w.pending, w.holding = None, False
                self.feed(lc.RejectDone("changed"))
            elif w.undelivered:
                self.new_version()
            elif w.timers and not w.forgotten:
                self.feed(lc.TimerFired(w.timers.pop()))
            else:
                break
        assert w.forgotten, f"a withdrawn task was not forgotten (phase {self.state.phase})"
        assert not w.holding and w.pending is None


LifecycleMachine.TestCase.settings = settings(max_examples=400, stateful_step_count=50,
                                              deadline=None)
TestLifecycleMachine = LifecycleMachine.TestCase


def test_restart_delays_follow_the_backoff() -> None:
    """Each failed attempt backs off by Backoff.delay(attempts), capped at the maximum."""
    policy = lc.Policy("h1", Backoff(initial=0.5, maximum=3.0), attempt_reset=60)
    state = lc.TaskState("t1", max_attempts=10)
    view = lc.View()
    delays = []
    state = lc.step(state, lc.Issued(), view, policy, now=0).state
    for n in range(1, 7):
        state = lc.step(state, lc.Admitted(None), view, policy, now=n).state
        result = lc.step(state, lc.StartFailed("failed", "boom"), view, policy, now=n)
        state = result.state
        timers = [e for e in result.effects if isinstance(e, lc.Timer)]
        assert state.phase == "backoff" and len(timers) == 1
        delays.append(timers[0].delay)
        result = lc.step(state, lc.TimerFired(timers[0].token), view, policy, now=n)
        state = result.state
        assert lc.Admit() in result.effects
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_rejected_after_max_attempts_and_not_started_again() -> None:
    policy = lc.Policy("h1", Backoff(initial=0.2, maximum=1.0))
    view = lc.View()
    state = lc.step(lc.TaskState("t1", max_attempts=2), lc.Issued(), view, policy,
                    now=0).state
    state = lc.step(state, lc.Admitted(None), view, policy, now=1).state
    state = lc.step(state, lc.StartFailed("failed", "boom", 2), view, policy, now=1).state
    state = lc.step(state, lc.TimerFired(state.timer), view, policy, now=2).state
    state = lc.step(state, lc.Admitted(None), view, policy, now=3).state
    result = lc.step(state, lc.StartFailed("failed", "boom", 2), view, policy, now=3)
    assert result.state.phase == "rejecting"
    assert lc.Reject("failed 2 times on host h1; last: start failed: boom") in result.effects
    result = lc.step(result.state, lc.RejectDone("written"), lc.View(wanted=False), policy,
                     now=4)
    assert result.state.phase == "rejected"
    assert not any(isinstance(e, lc.Admit | lc.Start) for e in result.effects)
    # a stale timer or another judgement does not start it again
    for event in (lc.TimerFired(1), lc.Reconcile()):
        result = lc.step(result.state, event, lc.View(wanted=False), policy, now=5)
        assert not any(isinstance(e, lc.Admit | lc.Start) for e in result.effects)


def test_a_healthy_run_forgets_earlier_failures() -> None:
    policy = lc.Policy("h1", Backoff(initial=0.2, maximum=1.0), attempt_reset=60)
    view = lc.View()
    state = lc.TaskState("t1", attempts=2, max_attempts=3)
    state = lc.step(state, lc.Admitted(None), view, policy, now=10).state
    state = lc.step(state, lc.StartOk(3, has_checks=False), view, policy, now=10).state
    assert state.healthy and state.ever_healthy
    result = lc.step(state, lc.Exited("c", "exited with 1"), view, policy, now=71)
    assert result.state.attempts == 1
    assert lc.Stop("") in result.effects
