"""The engine: while it leads, keep every wanted job assigned to a machine.

It holds a cache of jobs, machines and assignments built from one snapshot and
then fed only by watch events (resumed from the snapshot's revision; rebuilt
only on start, leadership change or compaction). Each pass hands the cache to
the pure scheduler and commits the returned plan in batched transactions
fenced by the leadership token. An idle cluster costs only lease renewals.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from fleetd.engine.lease import Leadership
from fleetd.engine.scheduler import ClusterView, schedule
from fleetd.job import Job
from fleetd.machine import Machine
from fleetd.registry.etcd import KV, Event, RegistryUnavailable, WatchCompacted
from fleetd.registry.keys import Kind
from fleetd.registry.registry import Registry, decode

WAKE = object()  # queued by `wake`; carries no events

log = logging.getLogger("fleetd.engine")


class StalePlan(Exception):
    """A plan batch was refused: our view or our leadership is out of date."""


DEBOUNCE_S = 0.02  # gather a burst of events into one pass


class EngineCache:
    """What the engine knows: updated from events, read by the scheduler."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.machines: dict[str, Machine] = {}
        self.assignments: dict[str, str] = {}  # unit -> machine
        self.assigned_value: dict[str, tuple[str, str]] = {}  # unit -> (hash, desired) stored
        self.ghosts: dict[str, tuple[Machine, float]] = {}  # vanished during a settle period
        self.pending: dict[str, str] = {}

    def view(self, now: float) -> ClusterView:
        machines = self.machines
        live_ghosts = {m: g for m, (g, until) in self.ghosts.items() if until > now}
        if live_ghosts:
            machines = {**live_ghosts, **self.machines}
        return ClusterView(machines=machines, jobs=self.jobs, assignments=self.assignments)


class Engine:
    def __init__(self, registry: Registry, machine_id: str, ttl: int,
                 reconcile_interval: float = 2.0) -> None:
        self.registry = registry
        self.keys = registry.keys
        self.ttl = ttl
        self.reconcile_interval = reconcile_interval
        self.leadership = Leadership(registry.etcd, self.keys.leader(), machine_id, ttl)
        self.cache: EngineCache | None = None
        self.events: queue.Queue = queue.Queue()
        self._cancel_watches: list[Callable[[], None]] = []
        self.settle_until = 0.0
        self.outage_since: float | None = None  # first failure of the current outage
        self.passes = 0
        self.placements = 0

    # -- loop --------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        last_pass = 0.0
        while not stop.is_set():
            try:
                leading = self.leadership.ensure()
            except RegistryUnavailable as err:
                # etcd stopped answering after the lease's last renewal, not when the
                # renewer gave up: date the outage from there.
                self._outage(err, since=self.leadership.renewed_at or None)
                leading = False
            if not leading:
                if self.outage_since is not None and self.leadership.answered:
                    self._recovered()
                self._drop_cache()
                stop.wait(min(1.0, self.ttl / 3))
                continue
            try:
                if self.cache is None:
                    self._load()
                    dirty = True
                else:
                    dirty = self._drain(timeout=min(self.leadership.due(),
                                                    max(0.0, last_pass + self.reconcile_interval
                                                        - time.monotonic())))
                if dirty or time.monotonic() - last_pass >= self.reconcile_interval:
                    self.reconcile()
                    last_pass = time.monotonic()
            except StalePlan as err:
                log.info("%s; reloading", err)
                self._drop_cache()
            except (RegistryUnavailable, WatchCompacted) as err:
                self._outage(err)
                self._drop_cache()
                stop.wait(0.2)
        self._drop_cache()
        self.leadership.resign()

    def wake(self) -> None:
        """Cut short a wait for watch events (on shutdown: the stop event is not a queue)."""
        self.events.put(WAKE)

    def _outage(self, err: Exception, since: float | None = None) -> None:
        if self.outage_since is None:
            self.outage_since = since if since is not None else time.monotonic()
            log.warning("engine lost its view of etcd (%s)", err)

    def _recovered(self) -> None:
        """etcd answers again. If it was away long enough that agents may have missed a
        renewal (ttl/3, their renewal period), machine leases may lapse for reasons that
        are not the machines' fault: treat vanished machines as alive for one more TTL.
        A shorter gap (our member died and the client failed over at once, while the other
        members kept serving every agent) settles nothing, so failover is not delayed."""
        if self.outage_since is None:
            return
        away = time.monotonic() - self.outage_since
        self.outage_since = None
        if away >= self.ttl / 3:
            self.settle_until = time.monotonic() + self.ttl + self.ttl / 3
            log.warning("etcd answers again after %.1fs; settling for %.1fs before treating "
                        "vanished machines as dead", away, self.ttl + self.ttl / 3)
        else:
            log.info("etcd answers again after %.1fs (failed over); nothing to settle", away)

    def _drain(self, timeout: float) -> bool:
        """Apply queued watch events; True when any arrived."""
        try:
            first = self.events.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return False
        if first is WAKE:
            return False
        batches = [first]
        deadline = time.monotonic() + DEBOUNCE_S
        while True:
            try:
                batches.append(self.events.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        for batch in batches:
            if batch is WAKE:
                continue
            if isinstance(batch, Exception):
                raise batch
            for event in batch:
                self._apply(event)
        return True

    # -- cache -------------------------------------------------------------------------------------
    def _load(self) -> None:
        registry = self.registry
        revision, jobs = registry.jobs()
        _, machines = registry.machines(revision)
        _, assignments = registry.assignments(revision=revision)
        self._recovered()
        cache = EngineCache()
        cache.jobs = {n: r.job for n, r in jobs.items() if not r.job.is_global}
        cache.machines = machines
        for a in assignments:
            cache.assignments[a.name] = a.machine
            cache.assigned_value[a.name] = (a.hash, a.desired.value)
        if time.monotonic() < self.settle_until:
            # Machines whose units are assigned but whose keys are missing may be
            # rejoining after the etcd outage we just saw: give them until settle ends.
            for machine in set(cache.assignments.values()) - set(machines):
                cache.ghosts[machine] = (Machine(machine), self.settle_until)
        self.cache = cache
        for kind in (Kind.JOB, Kind.MACHINE, Kind.ASSIGN):
            self._cancel_watches.append(
                registry.etcd.watch(self.keys.of(kind), revision + 1, self.events))
        log.info("engine loaded %d jobs, %d machines, %d assignments at revision %d",
                 len(cache.jobs), len(machines), len(cache.assignments), revision)

    def _drop_cache(self) -> None:
        for cancel in self._cancel_watches:
            cancel()
        self._cancel_watches.clear()
        self.cache = None
        self.events = queue.Queue()

    def _apply(self, event: Event) -> None:
        cache = self.cache
        assert cache is not None
        parsed = self.keys.parse(event.key)
        if parsed is None:
            return
        if parsed.kind is Kind.JOB:
            if event.value is None:
                cache.jobs.pop(parsed.name, None)
            else:
                record = self.registry.job_from_kv(KV(event.key, event.value, event.revision))
                if record is not None:
                    cache.jobs[parsed.name] = record.job
        elif parsed.kind is Kind.MACHINE:
            if event.value is None:
                gone = cache.machines.pop(parsed.name, None)
                if gone is not None and time.monotonic() < self.settle_until:
                    cache.ghosts[parsed.name] = (gone, self.settle_until)
            else:
                try:
                    cache.machines[parsed.name] = Machine.from_json(decode(event.value))
                    cache.ghosts.pop(parsed.name, None)
                except (ValueError, KeyError):
                    pass
        elif parsed.kind is Kind.ASSIGN:
            if event.value is None:
                if cache.assignments.get(parsed.name) == parsed.machine:
                    del cache.assignments[parsed.name]
                    cache.assigned_value.pop(parsed.name, None)
            else:
                data = decode(event.value)
                cache.assignments[parsed.name] = parsed.machine
                cache.assigned_value[parsed.name] = (data["hash"], data["desired"])

    # -- one pass ----------------------------------------------------------------------------------
    def reconcile(self) -> None:
        cache = self.cache
        assert cache is not None
        now = time.monotonic()
        cache.ghosts = {m: g for m, g in cache.ghosts.items() if g[1] > now}
        plan = schedule(cache.view(now))
        self.passes += 1
        ops = self.registry.etcd.ops
        writes: dict[str, object] = {}  # by key: etcd refuses one key twice in a transaction
        moved = set()
        for decision in plan.unschedule:
            key = self.keys.assignment(decision.machine, decision.unit)
            writes[key] = ops.delete(key)
            log.info("unschedule %s from %s: %s", decision.unit, decision.machine[:8],
                     decision.reason)
            cache.assignments.pop(decision.unit, None)
            cache.assigned_value.pop(decision.unit, None)
            moved.add(decision.unit)
        for decision in plan.place:
            job = cache.jobs[decision.unit]
            key = self.keys.assignment(decision.machine, decision.unit)
            writes[key] = ops.put(key, self.registry.assignment_value(job))
            cache.assignments[decision.unit] = decision.machine
            cache.assigned_value[decision.unit] = (job.hash, job.desired.value)
            log.info("schedule %s to %s: %s", decision.unit, decision.machine[:8],
                     decision.reason)
        self.placements += len(plan.place)
        # Jobs whose content or desired state changed keep their machine; refresh
        # what their agent sees.
        for unit, machine in cache.assignments.items():
            job = cache.jobs.get(unit)
            if job is None or unit in moved:
                continue
            wanted = (job.hash, job.desired.value)
            if cache.assigned_value.get(unit) != wanted:
                key = self.keys.assignment(machine, unit)
                writes[key] = ops.put(key, self.registry.assignment_value(job))
                cache.assigned_value[unit] = wanted
        for unit, reason in plan.pending.items():
            if cache.pending.get(unit) != reason:
                log.warning("unit %s cannot be scheduled: %s", unit, reason)
        cache.pending = dict(plan.pending)
        if writes:
            failed = self.registry.commit_batches(self.leadership.guard(), writes.values())
            if failed:
                raise StalePlan(f"{failed} plan batch(es) refused (leadership lost?)")
