"""The engine: while it leads, keep every wanted job assigned to a live machine.

It holds a cache of jobs, machine records and assignments built from one snapshot taken
after it became leader. Jobs and machines are then fed by watch events (resumed from the
snapshot's revision); assignments are not watched: only the leader writes `assign/`, every
write guarded by its leadership token, so while that token holds the only changes to
`assign/` are the ones this engine makes, and the cache takes each as it is written (a
10,000-unit pass would otherwise decode and apply 10,000 echoes of its own writes while
working). Anything that could make the cache differ from etcd drops it, and the next pass
starts from a fresh snapshot: a refused batch (`StalePlan`: the token, or a fence, no
longer holds), a lost leadership, an error reaching etcd mid-write, a compacted or broken
watch. Each pass hands the cache to the pure scheduler and commits the returned plan in
batched transactions fenced by the leadership token. An idle cluster costs only lease
renewals.

Which machines are alive is not read from etcd's lease expiry but judged from heartbeats
(`liveness.py`): every engine, leading or not, watches `heartbeat/` all the time. The
leader fences a machine it judged dead — revokes its lease, so the machine cannot write
under it again and learns it was fenced at its next renewal — and only then moves its
units, in transactions that hold only while that machine's heartbeat key is gone and that
write its fence key. A standby that judges the leader's machine dead revokes the leader's
lease and takes over, instead of waiting for etcd to expire it.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from fleetd.engine.feasible import TraitsCache
from fleetd.engine.lease import Leadership
from fleetd.engine.liveness import Liveness
from fleetd.engine.scheduler import ClusterView, Decision, Planning
from fleetd.job import Job, JobState
from fleetd.machine import Machine
from fleetd.registry.commit import BatchCommit
from fleetd.registry.etcd import KV, Event, RegistryUnavailable, WatchCompacted
from fleetd.registry.keys import Kind
from fleetd.registry.registry import Registry, decode, heartbeat_period

WAKE = object()  # queued by `wake`; carries no events

log = logging.getLogger("fleetd.engine")


class StalePlan(Exception):
    """A plan batch was refused: our view or our leadership is out of date."""


RETRY_FIRST_S = 0.05  # first wait after etcd failed us; it grows to a second
BEATS = "beats"
LEADER = "leader"


class _Tagged:
    """A watch sink that marks what it delivers with where it came from."""

    def __init__(self, sink: queue.Queue, tag: object) -> None:
        self.sink = sink
        self.tag = tag

    def put(self, item: object) -> None:
        self.sink.put((self.tag, item))


class EngineCache:
    """What the engine knows: updated from events, read by the scheduler."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        # Machine records, kept after their key is gone for machines that send heartbeats:
        # whether those are present is the liveness judgement's to say, not the lease's.
        self.machines: dict[str, Machine] = {}
        self.assignments: dict[str, str] = {}  # unit -> machine
        self.assigned_value: dict[str, tuple[str, JobState]] = {}  # unit -> (hash, desired)
        # Each job digested for the scheduler once, not once per pass.
        self.traits = TraitsCache()
        # Units whose job changed since the last pass looked (None: every unit, as after a
        # load): only these can need their assignment refreshed.
        self.to_refresh: set[str] | None = None
        self.pending: dict[str, str] = {}
        self.waiting: frozenset[str] = frozenset()  # machines a pass waits on (logged once)
        # Bumped by every watch event that can change the scheduler's plan. Not by a job
        # whose desired state moved between loaded and launched (the plan only asks whether
        # it is inactive: its agent's assignment is refreshed, no pass is needed).
        self.version = 0
        # The view (version, present machines) of the last pass that had nothing to write:
        # the scheduler is pure, so the same view plans the same nothing again.
        self.settled: tuple | None = None


class Engine:
    def __init__(self, registry: Registry, machine_id: str, ttl: int,
                 reconcile_interval: float = 2.0) -> None:
        self.registry = registry
        self.keys = registry.keys
        self.machine_id = machine_id
        self.ttl = ttl
        self.reconcile_interval = reconcile_interval
        self.leadership = Leadership(registry.etcd, self.keys.leader(), machine_id, ttl,
                                     on_lost=self.wake)
        self.liveness = Liveness(machine_id, ttl, heartbeat_period(ttl))
        self.cache: EngineCache | None = None
        self.events: queue.Queue = queue.Queue()
        self._generation = 0  # tags the cache's watch events; bumped when the cache is dropped
        self._cancel_watches: list[Callable[[], None]] = []
        self._cancel_beats: Callable[[], None] | None = None
        # A standby's watch on the leader key, from the version it read: while it runs and
        # nothing changed the key, asking etcd who leads would only hear the same answer.
        self._cancel_leader: Callable[[], None] | None = None
        self._beats_revision = 0  # last heartbeat revision applied (the watch resumes after it)
        self.fences: dict[str, int] = {}  # machine -> revoked lease, until its units moved
        self._ticks_seen, self._ticks_changed_at, self._clock_stalled = 0, time.monotonic(), False
        self.passes = 0
        self.turns = 0  # turns of the loop: an idle engine turns only for events (tests)
        self.beats_seen = 0  # heartbeat events applied
        self.cache_events = 0  # job and machine events applied to the cache (tests)
        self.idle_checks = 0  # checks that found the view as the last quiet pass
        self.refreshes = 0  # of those, the ones that refreshed assignments without planning
        self.placements = 0
        self.unreachable = False

    # -- loop --------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        try:
            self._loop(stop)
        finally:
            # However the loop ended (an unexpected error too), the cache goes with it: it
            # may believe writes etcd never took.
            self._drop_cache()
            self._stop_beats()
            self._stop_watching_leader()
            self.leadership.resign()

    def _loop(self, stop: threading.Event) -> None:
        last_pass = 0.0
        retry = RETRY_FIRST_S
        while not stop.is_set():
            self.turns += 1
            try:
                self._watch_beats()
                if self._cancel_leader is None or self.leadership.is_leader:
                    leading = self.leadership.ensure()
                    self.unreachable = False
                else:
                    leading = False  # the leader key is as we read it: the watch says so
                if not leading:
                    retry = RETRY_FIRST_S
                    self._drop_cache()
                    self._watch_leader()
                    self._stand_by(stop)
                    continue
                self._stop_watching_leader()
                if self.cache is None:
                    self._load()
                    # And what is queued: after a refused pass, what refused it (a fenced
                    # machine registered again) is in a heartbeat waiting here; planning
                    # without it would be refused again, and again.
                    self._drain(timeout=0)
                    dirty = True
                else:
                    # (A lost leadership wakes us: its renewer calls `wake`.)
                    wait = min(max(0.0, last_pass + self.reconcile_interval - time.monotonic()),
                               self._judgement_due())
                    dirty = self._drain(timeout=wait)
                self._check_clock()
                dirty |= self._fence_the_dead()
                if dirty or time.monotonic() - last_pass >= self.reconcile_interval:
                    self.reconcile()
                    last_pass = time.monotonic()
                retry = RETRY_FIRST_S
            except StalePlan as err:
                log.info("%s; reloading", err)
                self._drop_cache()
            except (RegistryUnavailable, WatchCompacted) as err:
                self._lost_view(err)
                # At once first (the client fails over on the failed call), then back off.
                stop.wait(retry)
                retry = min(retry * 4, min(1.0, self.ttl / 3))

    def wake(self) -> None:
        """Cut short a wait for watch events (on shutdown: the stop event is not a queue)."""
        self.events.put(WAKE)

    def _lost_view(self, err: Exception) -> None:
        if not self.unreachable:
            log.warning("engine lost its view of etcd (%s)", err)
        self.unreachable = True
        self._drop_cache()
        self._stop_watching_leader()
        if isinstance(err, WatchCompacted):
            self._stop_beats(forget=True)

    def _judgement_due(self) -> float:
        due = self.liveness.due(time.monotonic())
        return 60.0 if due is None else max(0.05, due)

    def _stand_by(self, stop: threading.Event) -> None:
        """Not leading: keep judging from heartbeats, and depose a leader judged dead (its
        lease outlives it by an election when etcd's own raft leader died with it). Sleeps
        until a watch event or the next judgement is due; without a watch on the leader key
        (none could be made, or it ended), looks again within a third of the TTL."""
        timeout = self._judgement_due()
        if self._cancel_leader is None:
            timeout = min(timeout, 1.0, self.ttl / 3)
        self._drain(timeout=timeout)
        holder = self.leadership.holder
        if holder is None or holder.machine == self.machine_id or stop.is_set():
            return
        if self.liveness.is_dead(holder.machine, time.monotonic()):
            log.warning("engine leader %s judged dead (silent %.1fs of observed time): "
                        "revoking its lease to take over", holder.machine[:8],
                        self.liveness.silence(holder.machine, time.monotonic()))
            self._stop_watching_leader()
            self.leadership.depose(holder)

    def _watch_leader(self) -> None:
        """Watch the leader key from just after the revision the last look read: any change
        (a resignation, an expiry, a new leader) ends the watch and makes the loop look
        again. Nobody seen (we lost a race to a leader not read yet): look again soon."""
        holder = self.leadership.holder
        if self._cancel_leader is not None or holder is None or not holder.revision:
            return
        try:
            self._cancel_leader = self.registry.etcd.watch(
                self.keys.leader(), holder.revision + 1, _Tagged(self.events, LEADER))
        except WatchCompacted:
            pass  # compacted since that read (the store moved on): look again soon

    def _stop_watching_leader(self) -> None:
        if self._cancel_leader is not None:
            self._cancel_leader()
            self._cancel_leader = None

    # -- heartbeats --------------------------------------------------------------------------------
    def _watch_beats(self) -> None:
        """Watch `heartbeat/` for as long as this engine runs, leading or not: resumed after
        the last revision applied, from a snapshot only at the start or after compaction."""
        if self._cancel_beats is not None:
            return
        etcd = self.registry.etcd
        if self._beats_revision == 0:
            revision, beats = self.registry.heartbeats()
            self.liveness.reset(beats, time.monotonic())
            self._beats_revision = revision
        self._cancel_beats = etcd.watch(self.keys.of(Kind.HEARTBEAT), self._beats_revision + 1,
                                        _Tagged(self.events, BEATS))

    def _stop_beats(self, forget: bool = False) -> None:
        if self._cancel_beats is not None:
            self._cancel_beats()
            self._cancel_beats = None
        if forget:
            self._beats_revision = 0

    def _beat(self, event: Event) -> bool:
        parsed = self.keys.parse(event.key)
        if parsed is None or parsed.kind is not Kind.HEARTBEAT:
            return False
        self._beats_revision = max(self._beats_revision, event.revision)
        self.beats_seen += 1
        beat = self.registry.beat_from(event.value, event.lease)
        changed = self.liveness.beat(parsed.name, beat, time.monotonic())
        if beat is not None and parsed.name in self.fences and \
                beat.lease != self.fences[parsed.name]:
            del self.fences[parsed.name]  # registered again before its units moved
        return changed

    def _check_clock(self) -> None:
        """Say when our own heartbeats stop arriving (nobody is judged dead then), and watch
        `heartbeat/` again after each TTL of that: if the stream went quiet while our agent
        kept writing, a new one resumes from the last revision we applied."""
        liveness, now = self.liveness, time.monotonic()
        if liveness.ticks != self._ticks_seen:
            self._ticks_seen, self._ticks_changed_at = liveness.ticks, now
            if self._clock_stalled:
                self._clock_stalled = False
                log.info("own heartbeats arrive again")
            return
        if now - self._ticks_changed_at <= self.ttl or liveness.ticks == 0:
            return  # (never seen any: no agent beside this engine, as in benchmarks)
        if not self._clock_stalled:
            self._clock_stalled = True
            log.warning("this machine's own heartbeats have not arrived for %.0fs: no "
                        "machine is judged dead until they do", self.ttl)
        self._ticks_changed_at = now
        self._stop_beats()  # watched again, from where it was, on the next turn

    def _fence_the_dead(self) -> bool:
        """Revoke the lease of every machine newly judged dead (it can no longer write under
        it, and learns so); its units move in the next pass. True when any was fenced."""
        now = time.monotonic()
        dead = self.liveness.dead(now)
        for machine in dead:
            lease = self.liveness.lease_of(machine)
            why = ("it is leaving" if self.liveness.machines[machine].leaving else
                   f"no heartbeat for {self.liveness.silence(machine, now):.1f}s of observed "
                   "time")
            if lease:
                self.registry.etcd.fence(lease)
            self.fences[machine] = lease
            self.liveness.fenced(machine)
            log.warning("machine %s judged dead (%s): fenced, moving its units",
                        machine[:8], why)
        return bool(dead)

    # -- events ------------------------------------------------------------------------------------
    def _drain(self, timeout: float) -> bool:
        """Apply queued watch events; True when any changed what the scheduler sees."""
        try:
            first = self.events.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return False
        dirty = False
        for item in self._gather(first):
            if item is WAKE:
                continue
            tag, batch = item
            if tag == LEADER:
                # Changed, or the watch broke: either way, ask etcd who leads now.
                self._stop_watching_leader()
                continue
            if tag == BEATS:
                if isinstance(batch, Exception):
                    self._stop_beats(forget=isinstance(batch, WatchCompacted))
                    raise batch
                for event in batch:
                    dirty |= self._beat(event)
                continue
            if tag != self._generation or self.cache is None:
                continue  # from a cache since dropped
            if isinstance(batch, Exception):
                raise batch
            for event in batch:
                self._apply(event)
            self.cache_events += len(batch)
            dirty = True
        return dirty

    def _gather(self, first: object) -> list:
        """`first` and everything queued meanwhile, for one pass. No timer holds the first
        event back: a burst gathers by itself while a pass runs (one pass, then one for all
        that arrived during it)."""
        batches = [first]
        while True:
            try:
                batches.append(self.events.get_nowait())
            except queue.Empty:
                return batches

    # -- cache -------------------------------------------------------------------------------------
    def _load(self) -> None:
        registry = self.registry
        revision, jobs = registry.jobs()
        _, machines = registry.machines(revision)
        _, assignments = registry.assignments(revision=revision)
        cache = EngineCache()
        cache.jobs = {n: r.job for n, r in jobs.items() if not r.job.is_global}
        cache.machines = machines
        for a in assignments:
            cache.assignments[a.name] = a.machine
            cache.assigned_value[a.name] = (a.hash, a.desired)
        cache.traits.traits_of(cache.jobs)  # every job digested as it is learned
        # Machines holding units that we have neither a record nor a heartbeat of: judged
        # from now on (they may be registering again after an outage, or long dead).
        self.liveness.track(set(cache.assignments.values()) - set(machines),
                            time.monotonic())
        self.cache = cache
        sink = _Tagged(self.events, self._generation)
        # Not `assign/`: from here on, while our token holds, we are its only writer (see
        # the module's docstring).
        for kind in (Kind.JOB, Kind.MACHINE):
            self._cancel_watches.append(registry.etcd.watch(self.keys.of(kind), revision + 1,
                                                            sink))
        log.info("engine loaded %d jobs, %d machines, %d assignments at revision %d",
                 len(cache.jobs), len(machines), len(cache.assignments), revision)

    def _drop_cache(self) -> None:
        for cancel in self._cancel_watches:
            cancel()
        self._cancel_watches.clear()
        if self.cache is not None:
            self._generation += 1
        self.cache = None

    def _apply(self, event: Event) -> None:
        cache = self.cache
        assert cache is not None
        parsed = self.keys.parse(event.key)
        if parsed is None:
            return
        if parsed.kind is Kind.JOB:
            if cache.to_refresh is not None:
                cache.to_refresh.add(parsed.name)
            self._apply_job(cache, parsed.name, event)
        elif parsed.kind is Kind.MACHINE:
            cache.version += 1
            if event.value is None:
                # A machine that never sent a heartbeat (an older fleetd) is judged by its
                # lease as before; one that does keeps its record until judged dead.
                if not self.liveness.heard_from(parsed.name):
                    cache.machines.pop(parsed.name, None)
            else:
                try:
                    cache.machines[parsed.name] = Machine.from_json(decode(event.value))
                except (ValueError, KeyError):
                    pass

    def _apply_job(self, cache: EngineCache, name: str, event: Event) -> None:
        before = cache.jobs.get(name)
        if event.value is None:
            cache.jobs.pop(name, None)
        else:
            record = self.registry.job_from_kv(KV(event.key, event.value, event.revision))
            if record is not None:
                cache.jobs[name] = record.job
        if not _same_plan(before, cache.jobs.get(name)):
            cache.version += 1

    def present_machines(self) -> tuple[dict[str, Machine], set[str]]:
        """(machines units may run on, machines a pass must wait for): a machine is present
        while its record is known and it is not judged dead; one that holds units but whose
        record we never saw (it registers again after an outage, or died before we started)
        is waited for until it registers or is judged dead — placing its units elsewhere
        while it may still run them is what this engine must never do."""
        cache = self.cache
        assert cache is not None
        now = time.monotonic()
        liveness = self.liveness
        present = {m: record for m, record in cache.machines.items()
                   if not liveness.is_dead(m, now)}
        # (A machine never heard from whose key we saw go is an older fleetd judged by its
        # lease: gone. One we track but have no record of is waited for.)
        waiting = {m for m in cache.assignments.values()
                   if m not in cache.machines and m in liveness.machines
                   and not liveness.is_dead(m, now)}
        return present, waiting

    # -- one pass ----------------------------------------------------------------------------------
    def _refresh_assigned(self, writes: dict[str, object], moved: set[str]) -> None:
        """Jobs whose content or desired state changed keep their machine; refresh what
        their agent sees. Looks only at units changed since the last pass (every unit after
        a load): a pass costs what changed, not the cluster."""
        cache = self.cache
        assert cache is not None
        ops = self.registry.etcd.ops
        if cache.to_refresh is None:
            candidates = list(cache.assignments.items())
        else:
            candidates = [(u, cache.assignments[u]) for u in cache.to_refresh
                          if u in cache.assignments]
        cache.to_refresh = set()
        for unit, machine in candidates:
            job = cache.jobs.get(unit)
            if job is None or unit in moved:
                continue
            wanted = (job.hash, job.desired)
            if cache.assigned_value.get(unit) != wanted:
                key = self.keys.assignment(machine, unit)
                writes[key] = ops.put(key, self.registry.assignment_value(job))
                cache.assigned_value[unit] = wanted

    def _refresh_only(self) -> None:
        """Refresh the assignments of units whose desired state changed, without planning."""
        writes: dict[str, object] = {}
        self._refresh_assigned(writes, set())
        if not writes:
            return
        if self.registry.commit_batches(self.leadership.guard(), writes.values()):
            raise StalePlan("assignment refresh refused (leadership lost)")
        self.refreshes += 1

    def reconcile(self) -> None:
        cache = self.cache
        assert cache is not None
        machines, waiting = self.present_machines()
        if waiting:
            if frozenset(waiting) != cache.waiting:
                log.warning("waiting for %d machine(s) holding units (%s) to register again "
                            "or be judged dead before scheduling", len(waiting),
                            ", ".join(sorted(m[:8] for m in waiting)))
            cache.waiting = frozenset(waiting)
            return
        cache.waiting = frozenset()
        view = (cache.version, frozenset(machines))
        if view == cache.settled and not self.fences:
            # Nothing the plan depends on changed since a pass that wrote nothing (at 1,000
            # units a pass costs tens of milliseconds): at most assignments to refresh.
            self.idle_checks += 1
            if cache.to_refresh:
                self._refresh_only()
            return
        with _collector_paused():
            self._pass(machines, view)

    def _pass(self, machines: dict[str, Machine], view: tuple) -> None:
        """Plan and write: the scheduler's decisions are written as it makes them."""
        cache = self.cache
        assert cache is not None
        planning = Planning(ClusterView(machines=machines, jobs=cache.jobs,
                                        assignments=cache.assignments, traits=cache.traits))
        self.passes += 1
        removals, moved = self._unschedule(planning.unschedule)
        # Units kept in place whose job changed (before placing: a unit placed now is
        # written with its current job anyway).
        refreshes: dict[str, object] = {}
        self._refresh_assigned(refreshes, moved)
        guard = self.leadership.guard()
        first: list = []
        for machine, lease in self.fences.items():
            compare, success = self.registry.fence_ops(machine, lease)
            guard += compare
            first += success
        # The plan is written while it is made: its removals (the fences with the first of
        # them) commit before the first placement is worked out, then each full batch of
        # placements is sent while the next ones are decided. A pass that writes nothing
        # sends nothing.
        with self.registry.batch_commit(guard, first) as commit:
            if removals:
                commit.ordered(removals)
            for op in refreshes.values():
                commit.add(op)
            self._place(planning, commit)
            plan = planning.plan()
            for unit, reason in plan.pending.items():
                if cache.pending.get(unit) != reason:
                    log.warning("unit %s cannot be scheduled: %s", unit, reason)
            cache.pending = dict(plan.pending)
            if commit.empty:
                self.fences.clear()  # nothing moved: nothing for a fence to guard
                cache.settled = view
                return
            failed = commit.finish()
        if failed:
            raise StalePlan(f"{failed} plan batch(es) refused (leadership lost, or a fenced "
                            "machine registered again?)")
        self.fences.clear()

    def _unschedule(self, decisions: Iterable[Decision]) -> tuple[list, set[str]]:
        """The removals of a plan, in its order, and the units they move; the cache forgets
        those assignments."""
        cache = self.cache
        assert cache is not None
        ops = self.registry.etcd.ops
        # By key (etcd refuses one key twice in a transaction). Every removal commits
        # before any write: a moving unit's old assignment goes before its new one lands.
        removals: dict[str, object] = {}
        moved = set()
        lines = _DecisionLog("unschedule", "from")
        for decision in decisions:
            key = self.keys.assignment(decision.machine, decision.unit)
            removals[key] = ops.delete(key)
            lines.log(decision)
            cache.assignments.pop(decision.unit, None)
            cache.assigned_value.pop(decision.unit, None)
            moved.add(decision.unit)
        lines.summary()
        return list(removals.values()), moved

    def _place(self, planning: Planning, commit: BatchCommit) -> None:
        """Write each placement as the scheduler makes it; the cache follows."""
        cache = self.cache
        assert cache is not None
        jobs, assignments, assigned_value = cache.jobs, cache.assignments, cache.assigned_value
        value_of, key_of = self.registry.assignment_value, self.keys.assignment
        lines = _DecisionLog("schedule", "to")
        for decision in planning:
            unit, machine = decision.unit, decision.machine
            job = jobs[unit]
            # (A unit is never placed back where this pass removed it: every reason to
            # unschedule it rules that machine out. Were it, the put lands after the
            # removal: still one assignment.)
            commit.put(key_of(machine, unit), value_of(job))
            assignments[unit] = machine
            assigned_value[unit] = (job.hash, job.desired)
            lines.log(decision)
        self.placements += lines.count
        lines.summary()


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Cyclic garbage collection held off for one pass. A pass makes tens of thousands of
    objects that live on (decisions, cache entries, requests), and the collections they set
    off walk the whole heap each time: a tenth of a 10,000-unit pass. Reference counting
    still frees everything else at once; a collection may follow the pass."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


LOGGED_EACH = 100  # decisions of a kind a pass logs one by one (at info)


class _DecisionLog:
    """A pass's decisions of one kind as log lines: the first LOGGED_EACH one by one, the
    rest counted in one line (a pass placing 10,000 units spent a third of its time
    formatting lines nobody reads one by one; `fleetctl list-units` says where each runs).
    At debug level every decision is logged."""

    def __init__(self, verb: str, preposition: str) -> None:
        self.verb = verb
        self.preposition = preposition
        self.count = 0
        self.debug = log.isEnabledFor(logging.DEBUG)

    def log(self, decision: Decision) -> None:
        self.count += 1
        if self.count <= LOGGED_EACH:
            log.info("%s %s %s %s: %s", self.verb, decision.unit, self.preposition,
                     decision.machine[:8], decision.reason)
        elif self.debug:
            log.debug("%s %s %s %s: %s", self.verb, decision.unit, self.preposition,
                      decision.machine[:8], decision.reason)

    def summary(self) -> None:
        if self.count > LOGGED_EACH:
            log.info("%s %d more unit(s) in this pass (the first %d logged above)",
                     self.verb, self.count - LOGGED_EACH, LOGGED_EACH)


def _same_plan(before: Job | None, after: Job | None) -> bool:
    """Whether the scheduler sees the two versions of a job alike: same content (its
    options and constraints), and inactive or not alike."""
    if before is None or after is None:
        return before is after
    return (before.hash == after.hash
            and (before.desired is JobState.INACTIVE) == (after.desired is JobState.INACTIVE))

