"""The units' part of the registry (jobs, assignments, unit states) kept in memory for the
API's reads: built from one snapshot at revision R, then kept current by a watch from R + 1.

Reads stay linearizable, as fleet's API reading etcd directly was: a read first asks etcd
for its current revision H (one small linearizable request) and is served from memory only
once the view has applied every event up to H, so whatever any client wrote before the
read began (a PUT through this API included) shows. The watch covers the whole keyspace,
not just the prefix: every revision etcd makes is a write with at least one event, so the
view reaches H as soon as the events of H arrive, whether or not H touched our keys
(etcd's own progress requests cannot tell this reliably before 3.4.24 / 3.5.8: they may
announce a revision whose events are still on their way).

The view follows etcd only while it is read. The first read starts it and is answered
from etcd; the snapshot is read after it, and a page asked for meanwhile waits for the
snapshot rather than read the same keys at the same time. A view nobody read for `idle_s`
stops watching and lets its memory go. Following every write costs CPU on every machine
(a 1,000-unit apply is thousands of events), which a cluster that nobody lists should not
pay.

When the view cannot answer (not built yet, its watch broken, or still behind H after
`catch_up_s`) it returns None and the caller reads etcd directly. A broken stream is
watched again from the last revision applied; a compacted start revision, or a view that
stays behind although etcd answers (a watch cancelled without a word), is read anew.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator

from fleetd.job import JobState
from fleetd.registry.etcd import Event, RegistryUnavailable, WatchCompacted
from fleetd.registry.keys import Kind
from fleetd.registry.registry import JobRecord, Registry, UnitsPage, decode, state_record
from fleetd.status import UnitStateRecord

log = logging.getLogger("fleetd.view")

CATCH_UP_S = 1.0  # how long a read waits for the view to reach etcd's revision
IDLE_S = 60.0  # unread for this long, the view stops following etcd
RETRY_S = 0.5  # between attempts to read or watch again while etcd is away
DECODED_KEPT = 8192  # decoded jobs kept at least (more when the view holds more jobs)
_RESYNC = object()  # a reader found the view behind a live etcd: read it anew


class _Sink:
    """Where one watch delivers: its events are applied at once, on the watch's own thread
    (a reader waiting for them is woken one thread switch sooner than through a queue,
    which counts on a busy machine); its end goes to the view's thread."""

    def __init__(self, view: UnitsView, token: object, control: queue.Queue) -> None:
        self.view = view
        self.token = token
        self.control = control

    def put(self, item: list[Event] | BaseException) -> None:
        if isinstance(item, list):
            if item:
                self.view._apply_events(self.token, item)
        else:
            self.control.put(item)


class UnitsView:
    def __init__(self, registry: Registry, catch_up_s: float = CATCH_UP_S,
                 idle_s: float = IDLE_S) -> None:
        self.registry = registry
        self.keys = registry.keys
        self.catch_up_s = catch_up_s
        self.idle_s = idle_s
        self._last_read = 0.0  # monotonic time of the last read (or start)
        self._thread_lock = threading.Lock()  # starting and retiring the thread
        self._cond = threading.Condition()
        self._live = False  # built, and its watch running
        self._snapshotting = False  # a snapshot is being read: a listing waits for it
        self._listings = 0  # listings being served (from the view or from etcd)
        self._revision = 0  # every event up to it applied (0: not built)
        self._prefix = self.keys.prefix
        self._cut = len(self.keys.prefix)
        # name -> (stored value, its mod revision), as the watch gave them
        self._jobs: dict[str, tuple[bytes, int]] = {}
        self._globals: dict[str, tuple[bytes, int]] = {}
        self._names: list[str] = []  # of jobs and global jobs, sorted
        self._assigned: dict[str, set[str]] = {}  # name -> machines it is assigned to
        self._states: dict[str, dict[str, bytes]] = {}  # name -> machine -> stored state
        self._state_keys: list[str] = []  # "name/machine", sorted as etcd sorts their keys
        # Decoded jobs by their stored bytes and revision: listing 1,000 units decodes
        # 1,000 of them, most of a page's cost, and they rarely change between two
        # listings (states are kept decoded by `state_record`: a template's instances
        # share their states' bytes).
        self._decoded_jobs: dict[tuple[bytes, int], JobRecord] = {}
        self._events: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cancel_watch: Callable[[], None] = lambda: None  # the current watch's
        self._watch_token: object | None = None  # whose events are applied
        self.rebuilds = 0  # snapshots read (tests read it)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Follow etcd now (reads start it too: `_demand`)."""
        self._demand()

    def _demand(self) -> None:
        with self._thread_lock:
            self._last_read = time.monotonic()
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="units-view",
                                                daemon=True)
                self._thread.start()

    def _retired(self) -> bool:
        """Whether nobody read the view for `idle_s`: then it forgets everything, and the
        next read starts a new thread (under the lock, so never over this one's state)."""
        with self._thread_lock:
            if not self._unread():
                return False
            log.debug("units view: unread for %.0f s, stops following etcd", self.idle_s)
            with self._cond:
                self._live = False
                self._snapshotting = False
                self._revision = 0
                self._watch_token = None
                self._jobs, self._globals, self._names = {}, {}, []
                self._assigned, self._states, self._state_keys = {}, {}, []
                self._decoded_jobs = {}
                self._cond.notify_all()
            self._thread = None
            return True

    def _unread(self) -> bool:
        return time.monotonic() - self._last_read > self.idle_s

    @property
    def following(self) -> bool:
        """Whether a thread keeps the view (tests read it)."""
        return self._thread is not None

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._events.put(_RESYNC)
        with self._cond:  # no reader waits for a snapshot that may never come
            self._snapshotting = False
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    @property
    def live(self) -> bool:
        return self._live

    @property
    def revision(self) -> int:
        return self._revision

    def _run(self) -> None:
        while not self._stop.is_set() and not self._retired():
            try:
                if self._revision == 0:
                    with self._cond:
                        # After the listings being served: the one that started the view
                        # reads its page from etcd, and the snapshot would read the same
                        # keys at the same time (a 1,000-unit page took 3x as long).
                        self._cond.wait_for(lambda: not self._listings or self._stop.is_set(),
                                            self.catch_up_s)
                        self._snapshotting = True
                    self._build()
                events: queue.Queue = queue.Queue()
                token = object()
                with self._cond:
                    self._events, self._watch_token = events, token
                cancel = self.registry.etcd.watch("", self._revision + 1,
                                                  _Sink(self, token, events))  # type: ignore[arg-type]
                self._cancel_watch = cancel
            except WatchCompacted:
                self._forget("its watch start was compacted")
                continue
            except RegistryUnavailable as err:
                log.debug("units view: etcd unavailable: %s", err)
                self._built(live=False)
                self._stop.wait(RETRY_S)
                continue
            except BaseException:
                self._built(live=False)
                raise
            self._built(live=True)
            try:
                self._follow(events)
            finally:
                with self._cond:
                    self._live = False
                    self._cond.notify_all()
                cancel()

    def _built(self, live: bool) -> None:
        with self._cond:
            self._live = live
            self._snapshotting = False
            self._cond.notify_all()

    def _follow(self, events: queue.Queue) -> None:
        """Wait for the end of the watch (its events are applied by `_Sink` as they come)
        or for the view to stop."""
        while not self._stop.is_set():
            try:
                item = events.get(timeout=self.idle_s)
            except queue.Empty:
                if self._unread():
                    return  # `_run` stops the watch, then retires
                continue
            if item is _RESYNC:
                if not self._stop.is_set():
                    self._forget("it stayed behind etcd")
                return
            if isinstance(item, WatchCompacted):
                self._forget("its watch was compacted")
                return
            if isinstance(item, BaseException):
                log.debug("units view: watch ended (%s); watching again from %d", item,
                          self._revision + 1)
                with self._cond:  # readers go to etcd meanwhile, without waiting on us
                    self._live = False
                    self._watch_token = None
                    self._cond.notify_all()
                self._stop.wait(RETRY_S if isinstance(item, RegistryUnavailable) else 0)
                return

    def _apply_events(self, token: object, events: list[Event]) -> None:
        with self._cond:
            if token is not self._watch_token:
                return  # a watch the view has given up on: its events may be older
            for event in events:
                self._apply(event)
            self._cond.notify_all()

    def _forget(self, why: str) -> None:
        log.info("units view: read anew (%s)", why)
        with self._cond:
            self._revision = 0
            self._live = False
            self._watch_token = None

    def _build(self) -> None:
        etcd = self.registry.etcd
        revision, kvs = etcd.snapshot(self.keys.of(Kind.JOB))
        for kind in (Kind.GLOBAL, Kind.ASSIGN, Kind.STATE):
            kvs += etcd.snapshot(self.keys.of(kind), revision)[1]
        with self._cond:
            self._jobs, self._globals, self._names = {}, {}, []
            self._assigned, self._states, self._state_keys = {}, {}, []
            for kv in kvs:
                self._apply(Event(kv.key, kv.value, kv.mod_revision))
            self._revision = revision
            self.rebuilds += 1

    # -- events ------------------------------------------------------------------------------
    # Every event of the cluster passes here, so applying one is a few dict and list steps
    # on the raw key and value: values are decoded only when a read returns them.
    def _apply(self, event: Event) -> None:
        """One put or delete (under the lock)."""
        if event.revision > self._revision:
            self._revision = event.revision
        key = event.key
        if not key.startswith(self._prefix):
            return
        kind, _, rest = key[self._cut:].partition("/")
        if kind == "state":
            name, _, machine = rest.partition("/")
            if name and machine and "/" not in machine:
                self._state(name, machine, event.value)
        elif kind == "assign":
            machine, _, name = rest.partition("/")
            if not machine or not name or "/" in name:
                return
            if event.value is not None:
                self._assigned.setdefault(name, set()).add(machine)
            else:
                machines = self._assigned.get(name)
                if machines is not None:
                    machines.discard(machine)
                    if not machines:
                        del self._assigned[name]
        elif kind in ("job", "global") and rest and "/" not in rest:
            self._job(self._jobs if kind == "job" else self._globals, rest, event)

    def _job(self, table: dict[str, tuple[bytes, int]], name: str, event: Event) -> None:
        known = name in self._jobs or name in self._globals
        if event.value is None:
            table.pop(name, None)
            if known and name not in self._jobs and name not in self._globals:
                del self._names[bisect.bisect_left(self._names, name)]
            return
        table[name] = (event.value, event.revision)
        if not known:
            bisect.insort(self._names, name)

    def _state(self, name: str, machine: str, value: bytes | None) -> None:
        states = self._states.get(name)
        if value is not None:
            if states is None:
                states = self._states[name] = {}
            if machine not in states:
                bisect.insort(self._state_keys, f"{name}/{machine}")
            states[machine] = value
        elif states is not None and machine in states:
            del states[machine]
            if not states:
                del self._states[name]
            key = f"{name}/{machine}"
            del self._state_keys[bisect.bisect_left(self._state_keys, key)]

    # -- reads -------------------------------------------------------------------------------
    def _current(self, listed_at: int = 0, listing: bool = False) -> bool:
        """Wait until the view holds everything etcd committed before this call (True), or
        say it cannot answer (False: read etcd directly). A later page of a listing is as
        fresh as its first (`listed_at`: the revision that page was served at), as etcd's
        and Kubernetes' paged lists are: it costs no request to etcd.

        A `listing` waits (up to `catch_up_s`) for a snapshot being read rather than read
        the same keys from etcd at the same time."""
        self._demand()
        if not self._live and listing:
            with self._cond:
                self._cond.wait_for(lambda: self._live or not self._snapshotting,
                                    self.catch_up_s)
        if not self._live:
            return False
        if listed_at and self._revision >= listed_at:
            return True
        target = self.registry.etcd.revision()
        with self._cond:
            before = self._revision
            self._cond.wait_for(lambda: not self._live or self._revision >= target,
                                self.catch_up_s)
            if self._revision >= target and self._live:
                return True
            if self._live and self._revision == before:
                # etcd answers but no event came for a while: the watch ended without a
                # word (a stream that lags still moves, and is left to catch up)
                self._events.put(_RESYNC)
        return False

    @contextlib.contextmanager
    def listing(self) -> Iterator[None]:
        """Around serving a page, from the view or from etcd: a view starting to follow
        etcd reads its snapshot once no page is being served."""
        with self._cond:
            self._listings += 1
        try:
            yield
        finally:
            with self._cond:
                self._listings -= 1
                self._cond.notify_all()

    def _where(self, name: str) -> str:
        """The machine `name` is assigned to ("" if none; the first in key order if, for a
        moment, several)."""
        machines = self._assigned.get(name)
        if not machines:
            return ""
        return min(machines, key=self.keys.assignments_of)

    def _stored(self, name: str) -> tuple[bytes, int] | None:
        return self._jobs.get(name) or self._globals.get(name)

    def _stored_states(self, name: str) -> list[tuple[str, bytes]]:
        return sorted(self._states.get(name, {}).items())

    def _record(self, name: str, stored: tuple[bytes, int]) -> JobRecord | None:
        """The job of a stored value (None: malformed, or its unit body is gone)."""
        found = self._decoded_jobs.get(stored)
        if found is not None and found.job.name == name:
            return found
        try:
            data = decode(stored[0])
            digest, desired = data["hash"], JobState(data["desired"])
        except (ValueError, KeyError, TypeError):
            log.warning("units view: ignoring the malformed job %s", name)
            return None
        record = self.registry.job_record(name, digest, desired, stored[1])
        if record is not None:
            self._keep_job(stored, record)
        return record

    def _state_records(self, name: str, stored: list[tuple[str, bytes]]
                       ) -> list[UnitStateRecord]:
        found = []
        for machine, value in stored:
            try:  # identical values are decoded once (`state_record` keeps them)
                found.append(state_record(name, machine, value))
            except (ValueError, KeyError, TypeError):
                log.warning("units view: ignoring the malformed state of %s on %s",
                            name, machine)
        return found

    def _keep_job(self, stored: tuple[bytes, int], record: JobRecord) -> None:
        """Remember a decoded job; readers add to the table outside the lock, which is safe
        for single dict steps, and a table that outgrows the view (twice its jobs: the old
        and new values of a replace) starts over."""
        if len(self._decoded_jobs) >= max(DECODED_KEPT, 2 * len(self._names)):
            self._decoded_jobs.clear()
        self._decoded_jobs[stored] = record

    # Reads copy what they return under the lock and decode it after, so the watch's
    # events wait for no decoding.
    def units_page(self, after: str | None, limit: int, listed_at: int = 0
                   ) -> UnitsPage | None:
        """As `Registry.units_page`, from memory: O(page); None when the view cannot answer."""
        if not self._current(listed_at, listing=True):
            return None
        with self._cond:
            revision = self._revision
            first = bisect.bisect_right(self._names, after) if after is not None else 0
            names = self._names[first:first + limit]
            more = len(self._names) > first + limit
            rows = [(name, self._stored(name), self._where(name), self._stored_states(name))
                    for name in names]
        records, where, states = [], {}, {}
        for name, stored, machine, reported in rows:
            record = self._record(name, stored) if stored is not None else None
            if record is None:
                continue
            records.append(record)
            if machine:
                where[name] = machine
            if reported:
                states[name] = self._state_records(name, reported)
        return UnitsPage(revision, records, where, states, more)

    def unit_view(self, name: str
                  ) -> tuple[JobRecord | None, str, list[UnitStateRecord]] | None:
        """As `Registry.unit_view`, from memory: O(1); None when the view cannot answer."""
        if not self._current():
            return None
        with self._cond:
            stored, machine, reported = (self._stored(name), self._where(name),
                                         self._stored_states(name))
        record = self._record(name, stored) if stored is not None else None
        if record is None:
            return None, "", []
        return record, machine, self._state_records(name, reported)

    def guess(self, name: str) -> JobRecord | None:
        """The job as the view last saw it, without asking etcd whether that is current
        (None: not seen, or the view is not live): for writes that compare its revision."""
        if not self._live:
            return None
        with self._cond:
            stored = self._stored(name)
        return self._record(name, stored) if stored is not None else None

    def states_of(self, name: str) -> list[UnitStateRecord] | None:
        if not self._current():
            return None
        with self._cond:
            reported = self._stored_states(name)
        return self._state_records(name, reported)

    def states_page(self, after: tuple[str, str] | None, limit: int,
                    machine: str | None = None, listed_at: int = 0
                    ) -> tuple[list[UnitStateRecord], bool, int] | None:
        """As `Registry.states_page`, from memory, with the revision it was served at; None
        when the view cannot answer."""
        if not self._current(listed_at, listing=True):
            return None
        rows: list[tuple[str, str, bytes]] = []
        with self._cond:
            revision = self._revision
            keys = self._state_keys
            at = bisect.bisect_right(keys, f"{after[0]}/{after[1]}") if after is not None else 0
            while at < len(keys) and len(rows) <= limit:
                name, _, owner = keys[at].partition("/")
                if machine is None or owner == machine:
                    rows.append((name, owner, self._states[name][owner]))
                at += 1
        found = [r for name, owner, value in rows[:limit + 1]
                 for r in self._state_records(name, [(owner, value)])]
        return found[:limit], len(found) > limit, revision
