"""What `provision apply` waits on, kept from etcd's watch events instead of re-read.

`Observed` reads the jobs, the unit states and the sidekicks' announcement prefixes once,
at one revision R, and watches each prefix from R + 1: every later change arrives as an
event and updates the view, so a wait costs no etcd request however many units it waits
for (a rolling step of one unit and a create of a thousand alike). Events name the units
they touch, and only those units' lag is judged again (the pure `lagging`).

A watch that breaks (stream closed, revision compacted) is answered by reading everything
again at a new revision and watching from there: nothing between the two is missed.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterable, Mapping

from fleetd.job import JobState
from fleetd.registry.etcd import KV, Event, RegistryUnavailable, WatchCompacted
from fleetd.registry.keys import Kind
from fleetd.registry.registry import Registry, decode
from fleetd.status import UnitStateRecord
from provision.apply.convergence import Lag, lagging
from provision.apply.desired import DesiredUnit

RESYNC_PAUSE_S = 0.25  # after a watch broke, before everything is read again


def announcement_prefix(unit: DesiredUnit) -> str | None:
    if unit.announcement is None:
        return None
    return unit.announcement.key.rsplit("/", 1)[0] + "/"


class Observed:
    """Jobs, unit states and announcements as etcd holds them, fed by watches."""

    def __init__(self, registry: Registry, units: Iterable[DesiredUnit]) -> None:
        self.registry = registry
        self.units = {u.name: u for u in units}
        self.by_announcement = {u.announcement.key: u.name for u in self.units.values()
                                if u.announcement is not None}
        self.job_prefixes = [registry.keys.of(Kind.JOB), registry.keys.of(Kind.GLOBAL)]
        self.state_prefix = registry.keys.of(Kind.STATE)
        self.announcement_prefixes = sorted({p for u in self.units.values()
                                             if (p := announcement_prefix(u))})
        self.heads: dict[str, tuple[str, JobState]] = {}
        self.states: dict[str, dict[str, UnitStateRecord]] = {}  # unit -> machine -> record
        self.announced: dict[str, int] = {}  # key -> mod revision
        self.revision = 0  # the view holds everything up to this revision
        self.touched: set[str] = set()  # units whose keys changed since `take_touched`
        self.events: queue.Queue = queue.Queue()
        self.cancels: list[Callable[[], None]] = []
        self.stale = True  # read everything (again) before the view is trusted
        self.broke_at = 0.0

    # -- reading -----------------------------------------------------------------------------
    def sync(self) -> None:
        """Read every watched prefix at one revision and watch each from the next one.
        RegistryUnavailable when etcd does not answer (the caller waits it out)."""
        self.stop()
        etcd = self.registry.etcd
        revision = etcd.revision()
        heads: dict[str, tuple[str, JobState]] = {}
        for prefix in self.job_prefixes:
            _, kvs = etcd.snapshot(prefix, revision)
            for kv in kvs:
                head = _head(kv.value)
                if head is not None:
                    heads[kv.key[len(prefix):]] = head
        _, kvs = etcd.snapshot(self.state_prefix, revision)
        states: dict[str, dict[str, UnitStateRecord]] = {}
        for record in self.registry.state_records(kvs):
            states.setdefault(record.name, {})[record.machine] = record
        announced = {}
        for prefix in self.announcement_prefixes:
            _, kvs = etcd.snapshot(prefix, revision)
            announced.update((kv.key, kv.mod_revision) for kv in kvs)
        self.events = queue.Queue()
        try:
            for prefix in (*self.job_prefixes, self.state_prefix, *self.announcement_prefixes):
                self.cancels.append(etcd.watch(prefix, revision + 1, self.events))
        except WatchCompacted as err:  # compacted right after our read: read again
            self.stop()
            raise RegistryUnavailable(f"watch start: {err}") from err
        except BaseException:
            self.stop()
            raise
        self.heads, self.states, self.announced = heads, states, announced
        self.revision = revision
        self.touched = set(self.units)
        self.stale = False

    def wait(self, timeout: float) -> bool:
        """Apply the events that arrive within `timeout` (and all queued with the first);
        True when any arrived. A broken watch makes the view stale (`sync` again, which
        this holds back a little after a break: a stream failing at once is no spin)."""
        if self.stale:
            time.sleep(min(max(0.0, timeout), max(0.0, self.broke_at + RESYNC_PAUSE_S
                                                  - time.monotonic())))
            return True
        try:
            item = self.events.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return False
        while True:
            if isinstance(item, Exception):
                self.stale = True  # nothing after it can be trusted to be complete
                self.broke_at = time.monotonic()
                self.stop()
                return True
            self._apply(item)
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return True

    def stop(self) -> None:
        for cancel in self.cancels:
            cancel()
        self.cancels = []

    def wrote(self, heads: Mapping[str, tuple[str, JobState] | None]) -> None:
        """Our own job writes, committed: held at once (their events follow). No older
        event of these keys can still be queued: each write was guarded by the revision
        its job had when the plan read it, so none changed in between."""
        for name, head in heads.items():
            if head is None:
                self.heads.pop(name, None)
            else:
                self.heads[name] = head
            self.touched.add(name)

    # -- judging -----------------------------------------------------------------------------
    def lags(self, units: Iterable[DesiredUnit], announced_since: int = 0) -> dict[str, Lag]:
        """The pure convergence check of `units` on the view."""
        units = list(units)
        reports = [r for u in units for r in self.states.get(u.name, {}).values()]
        announced = {u.announcement.key for u in units if u.announcement is not None
                     and self.announced.get(u.announcement.key, 0) > announced_since}
        return lagging(units, reports, announced, self.heads)

    def take_touched(self) -> set[str]:
        touched, self.touched = self.touched, set()
        return touched

    # -- events ------------------------------------------------------------------------------
    def _apply(self, events: list[Event]) -> None:
        for event in events:
            self.revision = max(self.revision, event.revision)
            key = event.key
            if key.startswith(self.state_prefix):
                self._state(event)
            elif key in self.by_announcement:
                self.touched.add(self.by_announcement[key])
                if event.value is None:
                    self.announced.pop(key, None)
                else:
                    self.announced[key] = event.revision
            else:
                for prefix in self.job_prefixes:
                    if key.startswith(prefix):
                        name = key[len(prefix):]
                        head = _head(event.value) if event.value is not None else None
                        if head is None:
                            self.heads.pop(name, None)
                        else:
                            self.heads[name] = head
                        self.touched.add(name)
                        break

    def _state(self, event: Event) -> None:
        name, _, machine = event.key[len(self.state_prefix):].partition("/")
        if not name or not machine or "/" in machine:
            return
        self.touched.add(name)
        if event.value is None:
            held = self.states.get(name)
            if held is not None:
                held.pop(machine, None)
                if not held:
                    del self.states[name]
            return
        for record in self.registry.state_records([KV(event.key, event.value,
                                                       event.revision)]):
            self.states.setdefault(name, {})[machine] = record


def _head(raw: bytes) -> tuple[str, JobState] | None:
    try:
        data = decode(raw)
        return data["hash"], JobState(data["desired"])
    except (ValueError, KeyError, TypeError):
        return None
