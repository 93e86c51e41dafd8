"""The ``consul`` health provider: the Consul agent of this host runs the tasks' checks.

An agent that uses this provider (``skedlib-agent --health-provider consul``; the
default with a ``consul://`` backend) lets Consul run a task's checks instead of
checking locally: the task becomes a Consul service on the Consul agent of the host it
runs on, with its containers' checks (mapped as :mod:`skedlib_consul.checks` says), and
its health is read back from that agent. :class:`ConsulHealthProvider` follows the
contract of :mod:`skedlib.health.provider`; every method returns at once, Consul is only
talked to from the provider's threads (sync, follow, and the catalog cleaner), through
:class:`~skedlib_consul.agent_client.ConsulAgentClient` (every call with a timeout):

- ``validate`` resolves the checks as the local provider does
  (:func:`skedlib.resolve_checks`: one kind, a usable target, parsable
  durations) and raises :class:`~skedlib.executors.base.TaskRejected`.
- ``watch(task, port)`` registers the task as a service (ID the task id, Name the
  service, Port ``port``, Tags the definition's tags and the mark ``skedlib-host=<host>``;
  ``consul.naming=original``: the original program's naming, see
  :mod:`skedlib_consul.catalog`) with its checks and a liveness TTL check that the sync
  thread passes every third of ``consul.liveness_ttl`` while the task is watched; intervals and
  timeouts are the resolved ones (Consul raises intervals below 1 s to 1 s), script
  checks get ``PROVIDED_PORT``, ``SKED_TASK_ID`` and ``SKED_HOST`` exported. A
  registration that fails (Consul unreachable) is retried with backoff; one Consul
  refuses (HTTP 400) makes the task ``unhealthy`` with Consul's reason. An earlier
  registration of the same task is removed first (Consul would otherwise keep an old
  TTL check's status).
- ``unwatch(task_id)`` deregisters the service (and its checks), retried until it
  succeeds or the task is watched again. ``close()`` leaves still-watched tasks
  registered (they keep running; the next agent adopts and registers them again) but
  finishes pending deregistrations (for a few seconds at most).
- Results are followed with a blocking query on ``/v1/health/node/<node>`` (the node
  name comes from ``/v1/agent/self``); when the statuses of our checks there change (or
  every 5 s) the provider reads ``/v1/agent/checks`` and ``/v1/agent/services`` (the
  agent's own, up-to-date view with outputs) and calls ``on_change`` when a status
  changed. A watched task whose service vanished from the agent (a restarted dev agent)
  is registered again.

- On start and every ``consul.clean_interval`` the sync thread deregisters the
  registrations marked with this host whose task is neither issued to the host nor
  watched; a :class:`~skedlib_consul.catalog.CatalogCleaner`, when elected, removes dead
  nodes' entries from the catalog (:mod:`skedlib_consul.catalog`).

How results become states (no result yet, consecutive critical results counted in
time against ``failure_threshold``) is in :mod:`skedlib_consul.states`; which Consul
agent is used (``consul.url``, ``consul.token``, ``consul.timeout``, else the backend's
endpoint on this host) in :mod:`skedlib_consul.local_agent`.

TTL checks: ``skedlib.pass_ttl_check`` works as with the local provider.
The provider reads each TTL task's health record (``state/health/<task_id>``) every
quarter TTL (0.25 s to 2 s) and forwards reports newer than the last one it forwarded
(and not older than the TTL, and not written by the agent from the provider's own
results) to Consul's ``/v1/agent/check/pass|warn|fail/<CheckID>`` with the report's
output as the note. Consul then keeps the check passing for the TTL after the report
reached it (up to a quarter TTL later than the report itself). A task may also report
to Consul directly: ``PUT /v1/agent/check/pass/<task id>:<container>:<check>`` on its
host's Consul agent (or :meth:`ConsulAgentClient.pass_ttl
<skedlib_consul.agent_client.ConsulAgentClient.pass_ttl>`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from skedlib import (
    BackendError,
    Backoff,
    CheckStatus,
    HealthContext,
    HealthProvider,
    Host,
    ResolvedCheck,
    Task,
    TaskHealth,
    ValidationError,
    decode,
    resolve_checks,
)
from skedlib_consul.agent_client import ConsulAgentClient
from skedlib_consul.catalog import (
    CatalogCleaner,
    RegistrationSettings,
    liveness_check_id,
    owner,
    registration,
    stale_local,
)
from skedlib_consul.checks import assign_check_ids, resolved_check_definitions
from skedlib_consul.local_agent import agent_options, registration_settings
from skedlib_consul.options import ConsulOptions
from skedlib_consul.states import TrackedCheck, TrackedTask

__all__ = ["FOLLOW_WAIT", "ConsulHealthProvider"]

log = logging.getLogger(__name__)

#: how long a blocking query on the node's health waits before the agent is read anyway
FOLLOW_WAIT = 5.0
_RETRY_INITIAL = 0.5
_RETRY_MAX = 10.0


class ConsulHealthProvider(HealthProvider):
    """The ``consul`` health provider: Consul's agent on this host runs the checks.

    See the module docstring for what is registered, how results are followed, how
    consecutive critical results are counted, and how TTL checks are passed. Daemon
    threads talk to Consul (each through its own connection pool): one registers,
    deregisters, forwards TTL reports, passes the liveness checks, sweeps stale
    registrations and confirms thresholds; one follows the node's health with blocking
    queries; the catalog cleaner stands for election and sweeps dead nodes' entries.
    ``options`` overrides where the Consul agent is (default:
    :func:`~skedlib_consul.local_agent.agent_options` of ``ctx``), ``settings`` how tasks
    are registered (default: :func:`~skedlib_consul.local_agent.registration_settings`).
    """

    name = "consul"

    def __init__(self, ctx: HealthContext, *, options: ConsulOptions | None = None,
                 settings: RegistrationSettings | None = None) -> None:
        self.ctx = ctx
        self.options = options or agent_options(ctx)
        self.settings = settings or registration_settings(ctx)
        """How tasks are registered and the catalog kept clean (``consul.naming`` …)."""
        self.url = self.options.base_url(0)
        self._sync_client = ConsulAgentClient(self.options, host=ctx.host)
        self._follow_client = ConsulAgentClient(self.options, host=ctx.host)
        self._tasks: dict[str, TrackedTask] = {}
        self._dirty: dict[str, float] = {}
        """Task ids whose registration must be brought in line, with when (monotonic)."""
        self._absent: set[str] = set()
        """Task ids known not to be registered (deregistered by us since)."""
        self._retries: dict[str, Backoff] = {}
        self._generation = 0
        self._cond = threading.Condition()
        self._refresh_lock = threading.Lock()
        self._last_refresh = 0.0
        self._last_refresh_try = 0.0
        self._warned: dict[str, str] = {}
        self._closed = False
        self._close_by = 0.0
        self._address = self.settings.address
        """The address advertised with the original naming (from the host record)."""
        self._next_alive = 0.0
        self._next_clean = 0.0  # the first sweep of stale registrations: at once
        self.cleaner: CatalogCleaner | None = None
        """The catalog cleaner of dead nodes' entries (when ``consul.catalog_cleaner``)."""
        if self.settings.catalog_cleaner:
            self.cleaner = CatalogCleaner(ctx.backend, ctx.keyspace,
                                          ConsulAgentClient(self.options, host=ctx.host),
                                          holder=ctx.host,
                                          interval=self.settings.clean_interval)
        self._sync_thread = threading.Thread(target=self._sync_loop, name="consul-health-sync",
                                             daemon=True)
        self._follow_thread = threading.Thread(target=self._follow_loop,
                                               name="consul-health-follow", daemon=True)
        self._sync_thread.start()
        self._follow_thread.start()
        if self.cleaner is not None:
            self.cleaner.start()

    def __repr__(self) -> str:
        return f"<ConsulHealthProvider {self.url}>"

    # -- the interface ----------------------------------------------------------------------
    def validate(self, task: Task, port: int) -> None:
        """Resolve every check (as the local provider); raises TaskRejected."""
        self._resolve(task, port)

    def _resolve(self, task: Task, port: int) -> tuple[list[ResolvedCheck], list[str]]:
        return resolve_checks(task, port), assign_check_ids(task)

    def _definitions(self, task: Task, port: int, resolved: list[ResolvedCheck],
                     ids: list[str]) -> list[dict[str, Any]]:
        return resolved_check_definitions(task, port, self.ctx.host, resolved, ids)

    def watch(self, task: Task, port: int) -> None:
        """Register ``task`` with Consul soon (replacing an earlier watch of it)."""
        resolved, ids = self._resolve(task, port)
        payload = registration(task, port, self._definitions(task, port, resolved, ids),
                               host=self.ctx.host, settings=self.settings)
        checks = [TrackedCheck.registering(r, check_id)
                  for r, check_id in zip(resolved, ids, strict=True)]
        with self._cond:
            self._generation += 1
            entry = TrackedTask(task=task, port=port, generation=self._generation,
                                payload=payload, checks=checks)
            entry.notified = entry.fingerprint(self.ctx.failure_threshold)
            self._tasks[task.id] = entry
            self._dirty[task.id] = time.monotonic()
            self._cond.notify_all()

    def unwatch(self, task_id: str) -> None:
        """Stop following ``task_id`` and deregister it from Consul soon. Idempotent."""
        with self._cond:
            self._tasks.pop(task_id, None)
            if task_id not in self._absent:
                self._dirty[task_id] = time.monotonic()
                self._cond.notify_all()

    def health(self, task_id: str) -> TaskHealth | None:
        """The latest results and the provider's state (see the module docstring)."""
        with self._cond:
            entry = self._tasks.get(task_id)
            if entry is None:
                return None
            state = entry.state(self.ctx.failure_threshold)
            checks = [msgspec.structs.replace(c.status) for c in entry.checks]
        return TaskHealth(task_id=task_id, host=self.ctx.host, state=state,
                          healthy=state == "healthy", checks=checks, updated_at=time.time())

    def close(self) -> None:
        """Stop both threads; pending deregistrations get a few seconds to finish first."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._close_by = time.monotonic() + min(2 * self.options.timeout, 10.0)
            self._cond.notify_all()
        self._sync_thread.join(timeout=max(0.0, self._close_by - time.monotonic()) + 1.0)
        self._follow_thread.join(timeout=0.5)
        if self.cleaner is not None:
            self.cleaner.close()
            self.cleaner.client.close()
        self._sync_client.close()
        self._follow_client.close()

    # -- notifications ----------------------------------------------------------------------
    def _changed(self) -> list[str]:
        """Task ids whose fingerprint moved since the last notification (lock held)."""
        out = []
        for task_id, entry in self._tasks.items():
            fp = entry.fingerprint(self.ctx.failure_threshold)
            if fp != entry.notified:
                entry.notified = fp
                out.append(task_id)
        return out

    def _notify(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            try:
                self.ctx.on_change(task_id)
            except Exception:
                log.exception("health change callback failed for %s", task_id)

    def _warn(self, topic: str, message: str) -> None:
        if self._warned.get(topic) != message:
            self._warned[topic] = message
            log.warning("%s", message)

    def _ok(self, topic: str) -> None:
        if self._warned.pop(topic, None) is not None:
            log.info("consul health provider: %s works again", topic)

    # -- reading Consul's results ---------------------------------------------------------
    def _refresh(self, client: ConsulAgentClient) -> bool:
        """Read the agent's services and checks, apply them, notify changes."""
        with self._refresh_lock:
            t = time.monotonic()
            with self._cond:
                self._last_refresh_try = t
            try:
                services, checks = client.local_state()
            except BackendError as exc:
                self._warn("read", f"consul health provider: cannot read checks from "
                                   f"{self.url}: {exc}")
                return False
            self._ok("read")
            with self._cond:
                self._last_refresh = t
                for task_id, entry in self._tasks.items():
                    if not entry.registered or entry.registered_at > t:
                        continue
                    if task_id not in services:
                        log.warning("consul health provider: %s vanished from the Consul "
                                    "agent %s; registering it again", task_id, self.url)
                        entry.reset()
                        self._dirty[task_id] = time.monotonic()
                        continue
                    entry.observe(checks, t)
                changed = self._changed()
                self._cond.notify_all()
        self._notify(changed)
        return True

    def _deadline(self) -> float | None:
        """The next time a fresh read of the agent would decide something (lock held)."""
        threshold = self.ctx.failure_threshold
        dues = [d for entry in self._tasks.values()
                if (d := entry.deadline(threshold, self._last_refresh)) is not None]
        return min(dues, default=None)

    # -- the sync thread --------------------------------------------------------------------
    def _next_job(self, now: float) -> tuple[tuple[Any, ...] | None, float | None]:
        """The next job due, or None and how long to wait (lock held)."""
        wait: float | None = None

        def later(at: float) -> None:
            nonlocal wait
            wait = at - now if wait is None else min(wait, at - now)

        for task_id, due in list(self._dirty.items()):
            entry = self._tasks.get(task_id)
            if self._closed and entry is not None:
                continue  # still watched: left registered
            if due > now:
                later(due)
                continue
            if entry is None:
                return ("deregister", task_id), None
            if entry.registered:
                del self._dirty[task_id]
                continue
            return ("register", task_id, entry.generation, entry.payload), None
        if self._closed:
            return None, wait
        if self._next_clean <= now:
            return ("clean",), None
        later(self._next_clean)
        if any(e.registered for e in self._tasks.values()):
            if self._next_alive <= now:
                return ("alive",), None
            later(self._next_alive)
        deadline = self._deadline()
        if deadline is not None:
            at = max(deadline, self._last_refresh_try + 1.0) if \
                self._last_refresh_try > self._last_refresh else deadline
            if at <= now:
                return ("refresh",), None
            later(at)
        for task_id, entry in self._tasks.items():
            if not entry.registered or not any(c.resolved.kind == "ttl" for c in entry.checks):
                continue
            if entry.next_ttl_poll <= now:
                return ("ttl", task_id, entry.generation), None
            later(entry.next_ttl_poll)
        return None, wait

    def _sync_loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    if self._closed and now >= self._close_by:
                        return
                    job, wait = self._next_job(now)
                    if job is not None:
                        break
                    if self._closed:
                        if wait is None:
                            return
                        wait = min(wait, self._close_by - now)
                    self._cond.wait(wait)
            try:
                self._run_job(job)
            except Exception:  # a job never takes the thread down
                log.exception("consul health provider: %s failed", job[0])
                with self._cond:
                    self._cond.wait(1.0)

    def _run_job(self, job: tuple[Any, ...]) -> None:
        kind = job[0]
        if kind == "register":
            self._register(job[1], job[2], job[3])
        elif kind == "deregister":
            self._deregister(job[1])
        elif kind == "refresh":
            self._refresh(self._sync_client)
        elif kind == "ttl":
            self._forward_ttl(job[1], job[2])
        elif kind == "alive":
            self._pass_alive()
        elif kind == "clean":
            self._clean()

    def _backoff(self, task_id: str) -> float:
        backoff = self._retries.get(task_id)
        if backoff is None:
            backoff = self._retries[task_id] = Backoff(_RETRY_INITIAL, _RETRY_MAX)
        return backoff.next()

    def _host_address(self) -> str:
        """The host's address (its agent record's), once known; '' until then."""
        if not self._address:
            try:
                kv = self.ctx.backend.get(self.ctx.keyspace.agent(self.ctx.host))
                if kv is not None:
                    self._address = decode(kv.value, Host, where=kv.key).address
            except (BackendError, ValidationError) as exc:
                log.debug("consul health provider: cannot read the host's address: %s", exc)
        return self._address

    def _register(self, task_id: str, generation: int, payload: dict[str, Any]) -> None:
        client = self._sync_client
        if self.settings.naming == "original" and "Address" not in payload:
            address = self._host_address()
            if address:
                payload = {**payload, "Address": address}
        try:
            with self._cond:
                known_absent = task_id in self._absent
            if not known_absent:  # a re-registered TTL check would keep its old status
                client.deregister(task_id)
            client.register_payload(payload)
        except ValidationError as exc:
            with self._cond:
                entry = self._tasks.get(task_id)
                if entry is None or entry.generation != generation:
                    return
                self._absent.discard(task_id)
                self._dirty.pop(task_id, None)
                self._retries.pop(task_id, None)
                entry.refused = f"Consul refused the registration: {exc}"
                for c in entry.checks:
                    c.has_result = True
                    c.set_status("critical", entry.refused)
                changed = self._changed()
            log.warning("consul health provider: %s", entry.refused)
            self._notify(changed)
            return
        except BackendError as exc:
            with self._cond:
                self._absent.discard(task_id)
                entry = self._tasks.get(task_id)
                if entry is None or entry.generation != generation:
                    return
                delay = self._backoff(task_id)
                self._dirty[task_id] = time.monotonic() + delay
                for c in entry.checks:
                    c.set_status("critical", f"not registered with Consul yet: {exc}")
            self._warn(f"register:{task_id}", f"consul health provider: cannot register "
                                              f"{task_id} (retrying in {delay:.1f}s): {exc}")
            return
        self._warned.pop(f"register:{task_id}", None)
        with self._cond:
            self._absent.discard(task_id)
            self._retries.pop(task_id, None)
            entry = self._tasks.get(task_id)
            if entry is None or entry.generation != generation:
                return  # unwatched or watched again meanwhile: the dirty mark stays
            self._dirty.pop(task_id, None)
            entry.registered, entry.registered_at = True, time.monotonic()
            entry.next_ttl_poll = entry.registered_at
            for c in entry.checks:
                c.set_status("critical", "registered with Consul; not checked yet")
            self._cond.notify_all()
        log.debug("consul health provider: registered %s on %s", task_id, self.url)
        self._refresh(self._sync_client)

    def _deregister(self, task_id: str) -> None:
        try:
            self._sync_client.deregister(task_id)
        except BackendError as exc:
            with self._cond:
                if task_id in self._tasks:
                    return
                delay = self._backoff(task_id)
                self._dirty[task_id] = time.monotonic() + delay
            self._warn(f"deregister:{task_id}", f"consul health provider: cannot deregister "
                                                f"{task_id} (retrying in {delay:.1f}s): {exc}")
            return
        self._warned.pop(f"deregister:{task_id}", None)
        with self._cond:
            self._retries.pop(task_id, None)
            if task_id not in self._tasks:
                self._dirty.pop(task_id, None)
                self._absent.add(task_id)
        log.debug("consul health provider: deregistered %s from %s", task_id, self.url)

    def _pass_alive(self) -> None:
        """Pass the liveness check of every registered task (see
        :mod:`skedlib_consul.catalog`): one read of the agent's checks, one call each."""
        with self._cond:
            self._next_alive = time.monotonic() + self.settings.liveness_ttl / 3
            wanted = [liveness_check_id(task_id) for task_id, e in self._tasks.items()
                      if e.registered]
        try:
            present = self._sync_client.local_state()[1]
            self._sync_client.pass_checks([c for c in wanted if c in present],
                                          note=f"skedlib agent {self.ctx.host} is running")
        except (BackendError, ValidationError) as exc:
            self._warn("alive", f"consul health provider: cannot pass the liveness checks "
                                f"on {self.url}: {exc}")
            return
        self._ok("alive")

    def _clean(self) -> None:
        """Deregister this host's registrations whose task is neither issued here nor
        watched (left by a killed agent, or moved away while it was down)."""
        with self._cond:
            self._next_clean = time.monotonic() + self.settings.clean_interval
        host = self.ctx.host
        try:
            services = self._sync_client.services()
            if not any(owner(svc.get("Tags")) == host for svc in services.values()
                       if isinstance(svc, Mapping)):
                return
            prefix = self.ctx.keyspace.host_tasks(host)
            issued = {kv.key[len(prefix):] for kv in self.ctx.backend.list(prefix).items}
            with self._cond:
                keep = issued | set(self._tasks)
            for sid in stale_local(services, host, keep):
                self._sync_client.deregister(sid)
                with self._cond:
                    if sid not in self._tasks:
                        self._absent.add(sid)
                log.info("consul health provider: deregistered %s from %s: it is not "
                         "issued to %s", sid, self.url, host)
        except BackendError as exc:
            self._warn("clean", f"consul health provider: cannot look for stale "
                                f"registrations on {self.url}: {exc}")
            return
        self._ok("clean")

    def _forward_ttl(self, task_id: str, generation: int) -> None:
        """Forward reports of the task's ttl checks from its health record to Consul."""
        with self._cond:
            entry = self._tasks.get(task_id)
            if entry is None or entry.generation != generation:
                return
            ttl_checks = [c for c in entry.checks if c.resolved.kind == "ttl"]
            entry.next_ttl_poll = time.monotonic() + min(c.resolved.interval
                                                         for c in ttl_checks)
        reports: dict[str, CheckStatus] = {}
        try:
            kv = self.ctx.backend.get(self.ctx.keyspace.task_health(task_id))
            if kv is not None:
                record = decode(kv.value, TaskHealth, where=kv.key)
                reports = {c.name: c for c in record.checks}
        except (BackendError, ValidationError) as exc:
            log.debug("ttl checks of %s: cannot read the health record: %s", task_id, exc)
            return
        todo: list[tuple[TrackedCheck, CheckStatus]] = []
        now = time.time()
        with self._cond:
            if self._tasks.get(task_id) is not entry:
                return
            for c in ttl_checks:
                r = reports.get(c.resolved.name)
                if (r is None or r.updated_at <= c.forwarded_at or r.updated_at in c.produced
                        or (r.status != "critical" and now - r.updated_at > c.resolved.ttl)):
                    continue
                todo.append((c, r))
        forwarded = False
        for c, r in todo:
            try:
                self._sync_client.set_ttl(task_id, r.status, c.check_id, note=r.output)
            except (BackendError, ValidationError) as exc:
                self._warn(f"ttl:{task_id}", f"consul health provider: cannot report ttl "
                                             f"check {c.check_id} to Consul: {exc}")
                continue
            self._warned.pop(f"ttl:{task_id}", None)
            with self._cond:
                c.forwarded_at = max(c.forwarded_at, r.updated_at)
            forwarded = True
        if forwarded:
            self._refresh(self._sync_client)

    # -- the follow thread ------------------------------------------------------------------
    def _follow_loop(self) -> None:
        client = self._follow_client
        node: str | None = None
        index = 0
        pause = Backoff(_RETRY_INITIAL, _RETRY_MAX)
        last_sig: Any = None
        last_read = 0.0
        while True:
            with self._cond:
                while not self._closed and not any(e.registered for e in self._tasks.values()):
                    self._cond.wait()
                if self._closed:
                    return
                ours = {c.check_id for e in self._tasks.values() for c in e.checks}
            try:
                if node is None:
                    node = client.node_name()
                new_index, body = client.wait_node(node, index, FOLLOW_WAIT)
            except BackendError as exc:
                if self._closed:
                    return
                self._warn("follow", f"consul health provider: cannot follow the health of "
                                     f"the Consul agent {self.url} (retrying): {exc}")
                node, index = None, 0
                with self._cond:
                    self._cond.wait(pause.next())
                continue
            except Exception:
                log.exception("consul health provider: following %s failed", self.url)
                with self._cond:
                    self._cond.wait(_RETRY_MAX)
                continue
            if self._closed:
                return
            self._ok("follow")
            pause.reset()
            index = new_index if new_index >= index else 0  # an index that went back: reset
            sig = sorted((str(c.get("CheckID")), str(c.get("Status"))) for c in body
                         if isinstance(c, Mapping) and c.get("CheckID") in ours)
            if sig != last_sig or time.monotonic() - last_read >= FOLLOW_WAIT:
                last_sig, last_read = sig, time.monotonic()
                try:
                    self._refresh(client)
                except Exception:
                    log.exception("consul health provider: reading %s failed", self.url)
