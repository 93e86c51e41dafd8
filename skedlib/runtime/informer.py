"""Following a prefix of the store without gaps: the one list-and-watch loop.

An :class:`Informer` lists a prefix, hands the listing to ``on_list``, then watches from
the listing's revision + 1 and hands every batch of events to ``on_events``. It owns the
parts every watcher needs and nobody should write again:

- **resume**: after a batch whose last revision is ``r`` a new watch starts at ``r + 1``,
  so a watch that broke (a member restarted, the network blinked) resumes exactly;
- **compaction**: when the revision to resume from was compacted away it lists again and
  calls ``on_list`` with the fresh listing (the caller diffs it against what it knew);
- **backoff**: while the backend cannot be reached it retries with :class:`Backoff` and
  logs one line per failure;
- **stop**: :meth:`Informer.stop` wakes a blocked watch at once;
- **kinds**: with ``kinds=("delete",)`` (or ``("put",)``) only those events are handed
  on, filtered by the backend (:meth:`~skedlib.store.base.Backend.watch_kinds`: etcd's
  server leaves the others out of the stream).

Run it on a thread of its own (:meth:`start`) or in the caller's thread (:meth:`run`).
For a single "wait until something under this prefix changes" there is
:func:`wait_for_change`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection

from skedlib.errors import BackendError, Compacted
from skedlib.runtime.backoff import Backoff
from skedlib.store.base import Backend, ListResult, Watch, WatchEvent, WatchKind, check_watch_kinds

__all__ = ["Informer", "wait_for_change"]

log = logging.getLogger(__name__)


class Informer:
    """Calls ``on_list`` with every (re)listing and ``on_events`` with every watch batch.

    Both callbacks run on the informer's thread, one at a time, in revision order. An
    exception other than a :class:`~skedlib.errors.BackendError` raised by a callback
    stops the informer and is logged; a ``BackendError`` is retried like a failed watch
    (from the last revision handed out, so nothing is lost or repeated).

    ``kinds`` (default: both) limits the events handed to ``on_events`` to puts or to
    deletes; ``on_list`` gets every listing whole.
    """

    def __init__(self, backend: Backend, prefix: str, *,
                 on_list: Callable[[ListResult], None],
                 on_events: Callable[[list[WatchEvent]], None],
                 name: str | None = None, poll_timeout: float = 1.0,
                 backoff: Backoff | None = None,
                 kinds: Collection[WatchKind] | None = None) -> None:
        self.backend = backend
        self.prefix = prefix
        self.on_list = on_list
        self.on_events = on_events
        self.name = name or f"informer {prefix}"
        self.poll_timeout = poll_timeout
        self.backoff = backoff or Backoff(initial=0.2, maximum=5.0)
        self.kinds = None if kinds is None else check_watch_kinds(kinds)
        self.synced = threading.Event()
        """Set once the first listing was handed to ``on_list``."""
        self._revision = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._watch: Watch | None = None
        self._thread: threading.Thread | None = None

    @property
    def revision(self) -> int:
        """The last revision handed out (a listing's or an event's); 0 before the first."""
        return self._revision

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop.is_set()

    def start(self) -> Informer:
        """Run :meth:`run` on a daemon thread; returns ``self``."""
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop following; a blocked watch returns at once. Idempotent."""
        self._stop.set()
        with self._lock:
            watch = self._watch
        if watch is not None:
            watch.close()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout=timeout)

    def run(self) -> None:
        """Follow the prefix in this thread until :meth:`stop`."""
        relist = True
        while not self._stop.is_set():
            try:
                if relist:
                    listed = self.backend.list(self.prefix)
                    self.on_list(listed)
                    self._revision = listed.revision
                    self.synced.set()
                    relist = False
                self._follow()
            except Compacted as exc:
                log.info("%s: fell behind compaction (%s): listing again", self.name, exc)
                relist = True
            except BackendError as exc:
                if self._stop.is_set():
                    return
                delay = self.backoff.next()
                log.warning("%s: %s (retrying in %.1fs)", self.name, exc, delay)
                self._stop.wait(delay)
            except Exception:
                log.exception("%s: stopped by an unexpected error", self.name)
                self._stop.set()
                raise

    def _follow(self) -> None:
        start = self._revision + 1
        watch = (self.backend.watch(self.prefix, start) if self.kinds is None
                 else self.backend.watch_kinds(self.prefix, start, self.kinds))
        with self._lock:
            self._watch = watch
        try:
            if self._stop.is_set():
                return
            with watch:
                while not self._stop.is_set() and not watch.closed:  # closed: reopen
                    events = watch.next(timeout=self.poll_timeout)
                    if events:
                        self.on_events(events)
                        self._revision = events[-1].revision
                        self.backoff.reset()
        finally:
            with self._lock:
                self._watch = None


def wait_for_change(backend: Backend, prefix: str, after: int, timeout: float) -> int | None:
    """Block until something under ``prefix`` changes after revision ``after``, at most
    ``timeout`` seconds.

    Returns the revision to wait after next time (the last change seen, or after a
    compaction, which hides whether anything changed, the current revision), or None
    when the time ran out or the backend could not be reached; the caller reads again
    either way."""
    if timeout <= 0:
        return None
    try:
        with backend.watch(prefix, after + 1) as watch:
            events = watch.next(timeout=timeout)
            return events[-1].revision if events else None
    except Compacted:
        try:
            return backend.current_revision(prefix)
        except BackendError:
            return None
    except BackendError as exc:
        log.debug("waiting for a change under %s: %s", prefix, exc)
        time.sleep(min(timeout, 0.5))  # not a busy loop for callers that wait again
        return None
