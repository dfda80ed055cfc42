"""The scheduler: a pure function from what the engine knows to a plan.

    schedule(ClusterView) -> Plan(unschedule, place, pending)
    planning(ClusterView) -> Planning: the same plan, computed as it is read

`Planning` lets the engine write while it decides: every removal is known before the first
placement is worked out, and placements come one by one, in plan order (see `Planning`).

No I/O, clock, logging or randomness: the same view always yields the same plan; the caller
logs and writes it. Every change goes into a plan overlay (locations, loads, per-machine
occupancy), so later checks see earlier placements and removals without re-reading. One pass:

1. `keep_existing`: cheap per-unit checks first (destroyed, desired inactive, machine gone,
   MachineID, metadata), then MachineOf and Conflicts against the units kept so far, in
   MachineOf order (targets first, otherwise by name). A MachineOf chain moves together; of
   two conflicting units on a machine the smaller name stays (a MachineOf dependent is decided
   after its target). Units unscheduled for any reason but inactive/destroyed are placed again
   in step 2: failover is one pass.
2. `place_wanted`: every wanted job (loaded or launched) not assigned, by name but MachineOf
   targets first (`_topological`); units on a MachineOf cycle, or waiting for one, are pending.
   MachineOf or MachineID pin a job to one candidate, which runs every checker. Otherwise the
   load index yields the machines satisfying MachineMetadata in (load, id) order and the first
   that passes Conflicts wins: least loaded, ties by machine id.

Cost: fleet's pass was jobs x (jobs + machines). Here a placement is O(log M) plus the
candidates it rejects, and candidates rejected for a reason shared by a whole template do not
come back:

- `LoadIndex` keeps a heap of (load, machine id) per distinct MachineMetadata constraint,
  built on first use from the machines matching it (metadata classes, not a scan). Loads only
  grow while placing, so a stale entry is re-keyed when it surfaces.
- A scan that rejects several machines for a *shared* reason (true for every job with the
  same signature: metadata, globs, template key) marks the signature hot; its later jobs scan
  a private copy of the heap from which such machines are dropped for good. So 1,000 `web@N`
  with Conflicts=web@*.service on fewer machines cost O(M log M) in all, not O(units x M).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from heapq import heapify, heappop, heappush, heapreplace
from types import MappingProxyType
from typing import NamedTuple

from fleetd.engine.feasible import (
    Checker,
    ConflictsCheck,
    Feasibility,
    MachineClasses,
    MachineIDCheck,
    MachineOfCheck,
    MetadataCheck,
    Occupancy,
    Rejection,
    Traits,
    TraitsCache,
    short,
)
from fleetd.job import Job, JobState
from fleetd.machine import Machine

HOT_AFTER = 8  # shared rejections in one scan before a signature gets its own heap
INACTIVE = JobState.INACTIVE  # (a member read through its class costs a lookup per unit)


@dataclass(frozen=True)
class ClusterView:
    """What the engine knows right now."""

    machines: Mapping[str, Machine]   # present machines (lease alive)
    jobs: Mapping[str, Job]           # every non-global job
    assignments: Mapping[str, str]    # unit name -> machine id currently assigned
    # Jobs digested by earlier passes, kept by the caller (None: digest every job now). It
    # saves work only: the plan is the same either way.
    traits: TraitsCache | None = None


class Decision(NamedTuple):
    """(A tuple: a pass makes one per placement, and a frozen dataclass costs twice as much
    to make.)"""

    unit: str
    machine: str
    reason: str


@dataclass(frozen=True)
class Plan:
    unschedule: tuple[Decision, ...] = ()  # remove these assignments first
    place: tuple[Decision, ...] = ()       # then add these, in this order
    pending: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Stats:
    """Work done by one pass; the scaling tests assert on it instead of on time."""

    checks: int       # checker invocations
    candidates: int   # heap entries examined, stale ones included
    heaps: int        # candidate heaps built
    metadata_evaluations: int  # (constraint, metadata class) verdicts computed


def schedule(view: ClusterView) -> Plan:
    return schedule_with_stats(view)[0]


def schedule_with_stats(view: ClusterView) -> tuple[Plan, Stats]:
    progress = Planning(view)
    return progress.plan(), progress.stats()


class Planning:
    """One pass of the scheduler, read as it is computed: `unschedule` is complete on
    construction (step 1 decides every removal before any placement), then iterating yields
    the placements one at a time, each worked out only when asked for. `plan()` finishes the
    pass and returns the same Plan `schedule` would; `pending` is known only then. Still pure:
    the same view yields the same removals and the same placements in the same order, however
    the caller interleaves reading them with its own work."""

    def __init__(self, view: ClusterView) -> None:
        self._pass = _Pass(view)
        self._pass.keep_existing()
        self.unschedule: tuple[Decision, ...] = tuple(
            sorted(self._pass.unschedule, key=lambda d: d.unit))
        self._placements = self._pass.place_wanted()

    def __iter__(self) -> Iterator[Decision]:
        return self._placements

    def plan(self) -> Plan:
        for _ in self:
            pass
        return Plan(self.unschedule, tuple(self._pass.place),
                    MappingProxyType(dict(sorted(self._pass.pending.items()))))

    def stats(self) -> Stats:
        """The work done so far."""
        p = self._pass
        return Stats(p.feasibility.checks, p.index.candidates, p.index.heaps,
                     p.classes.evaluations)


class _Heap:
    __slots__ = ("entries", "ruled_out", "private")

    def __init__(self, entries: list[tuple[int, str]], private: bool) -> None:
        heapify(entries)
        self.entries = entries
        self.private = private
        self.ruled_out: dict[str, int] = {}  # constraint -> machines dropped for good


class LoadIndex:
    """Machines in (load, id) order, per MachineMetadata constraint and per hot signature."""

    def __init__(self, loads: dict[str, int], classes: MachineClasses) -> None:
        self.loads = loads
        self.classes = classes
        self._by_constraint: dict[int, _Heap | None] = {}
        self._by_signature: dict[object, _Heap] = {}
        self._hot: set[object] = set()
        self.candidates = 0
        self.heaps = 0

    def _heap_for(self, t: Traits) -> _Heap | None:
        if (own := self._by_signature.get(t.signature)) is not None:
            return own
        if t.metadata_id in self._by_constraint:
            base = self._by_constraint[t.metadata_id]
        else:
            machines = self.classes.machines_matching(t)
            base = self._by_constraint[t.metadata_id] = (
                self._new([(self.loads[m], m) for m in machines], False) if machines else None)
        if base is None:
            return None
        if t.signature in self._hot:
            return self._by_signature.setdefault(t.signature, self._new(list(base.entries), True))
        return base

    def _new(self, entries: list[tuple[int, str]], private: bool) -> _Heap:
        self.heaps += 1
        return _Heap(entries, private)

    def least_loaded(self, t: Traits, check: Checker,
                     feasibility: Feasibility) -> tuple[str | None, dict[str, int]]:
        """The least-loaded machine passing `check`, or None and what ruled each machine out.

        The caller must commit a placement on the returned machine (its load grows by one).
        Returns (None, {}) when no machine satisfies the job's metadata at all.
        """
        heap = self._heap_for(t)
        if heap is None:
            return None, {}
        entries, loads = heap.entries, self.loads
        held: list[tuple[int, str]] = []
        tally: dict[str, int] = {}
        shared = 0
        chosen = None
        while entries:
            self.candidates += 1
            load, mid = entries[0]
            now = loads[mid]
            if now != load:  # stale: the machine gained units since it was pushed
                heapreplace(entries, (now, mid))
                continue
            feasibility.checks += 1  # (Feasibility.first_rejection of one checker, inline)
            rejection = check(t, mid)
            if rejection is None:
                chosen = mid
                heapreplace(entries, (load + 1, mid))  # its load once placed
                break
            heappop(entries)
            shared += rejection.shared
            if heap.private and rejection.shared:
                heap.ruled_out[rejection.constraint] = heap.ruled_out.get(
                    rejection.constraint, 0) + 1
            else:
                held.append((load, mid))
                tally[rejection.constraint] = tally.get(rejection.constraint, 0) + 1
        for entry in held:
            heappush(entries, entry)
        if not heap.private and shared >= HOT_AFTER and t.signature is not None:
            self._hot.add(t.signature)
        if chosen is None:
            for constraint, count in heap.ruled_out.items():
                tally[constraint] = tally.get(constraint, 0) + count
        return chosen, tally


class _Pass:
    def __init__(self, view: ClusterView) -> None:
        self.view = view
        self.machines = view.machines
        # Global jobs never reach the scheduler; any that do are left alone. A template
        # (web@.service) is only a pattern for its instances: it is never placed anywhere.
        self.traits = (view.traits or TraitsCache()).traits_of(view.jobs)
        self.classes = MachineClasses(view.machines)
        self.location: dict[str, str] = {}
        self.loads: dict[str, int] = dict.fromkeys(view.machines, 0)
        self.occupancy = {mid: Occupancy() for mid in view.machines}
        self.feasibility = Feasibility()
        self.index = LoadIndex(self.loads, self.classes)
        self.machine_id = MachineIDCheck()
        self.machine_of = MachineOfCheck(self.location, self.traits)
        self.metadata = MetadataCheck(self.classes)
        self.conflicts = ConflictsCheck(self.occupancy, self.traits)
        self.all_checks: tuple[Checker, ...] = (self.machine_id, self.machine_of,
                                                self.metadata, self.conflicts)
        self.unschedule: list[Decision] = []
        self.place: list[Decision] = []
        self.pending: dict[str, str] = {}
        self._short_ids: dict[str, list[str]] | None = None

    def _commit(self, unit: str, machine_id: str) -> None:
        self.location[unit] = machine_id
        self.loads[machine_id] += 1
        self.occupancy[machine_id].add(self.traits[unit])

    def _wanted(self, unit: str) -> bool:
        return unit in self.traits and self.view.jobs[unit].desired != INACTIVE

    # -- step 1 ---------------------------------------------------------------------------

    def keep_existing(self) -> None:
        survivors: dict[str, str] = {}
        for unit in sorted(self.view.assignments):
            mid = self.view.assignments[unit]
            job = self.view.jobs.get(unit)
            if job is not None and job.is_global:
                continue
            if job is None:
                reason: str | None = "unit destroyed"
            elif unit not in self.traits:
                reason = "a template is never scheduled; start its instances instead"
            elif job.desired == INACTIVE:
                reason = "desired state inactive"
            elif mid not in self.machines:
                reason = f"machine {short(mid)} is gone"
            else:
                rejection = self.feasibility.first_rejection(
                    (self.machine_id, self.metadata), self.traits[unit], mid)
                reason = rejection and _no_longer(rejection, mid)
            if reason:
                self.unschedule.append(Decision(unit, mid, reason))
            else:
                survivors[unit] = mid
        order, stuck = _topological(survivors, self.traits)
        for unit, why in stuck.items():
            self.unschedule.append(Decision(unit, survivors[unit], why))
        for unit in order:
            mid = survivors[unit]
            rejection = self.feasibility.first_rejection(
                (self.machine_of, self.conflicts), self.traits[unit], mid)
            if rejection is None:
                self._commit(unit, mid)
            elif rejection.constraint.startswith("MachineOf="):
                self.unschedule.append(Decision(unit, mid, rejection.reason))
            else:
                self.unschedule.append(Decision(
                    unit, mid, f"conflict on machine {short(mid)}: {rejection.reason}; "
                               f"{rejection.other} stays"))

    # -- step 2 ---------------------------------------------------------------------------

    def place_wanted(self) -> Iterator[Decision]:
        """Places every wanted unit, yielding each placement as it is made."""
        wanted = {name: "" for name in self.traits
                  if name not in self.location and self._wanted(name)}
        order, stuck = _topological(wanted, self.traits)
        self.pending.update(stuck)
        place = self.place
        for unit in order:
            t = self.traits[unit]
            if t.machine_of:
                self._place_pinned_by_machine_of(t)
            elif t.machine_id is not None:
                self._place_pinned_by_machine_id(t)
            else:
                self._place_least_loaded(t)
            if place and place[-1].unit == unit:
                yield place[-1]

    def _place_pinned_by_machine_of(self, t: Traits) -> None:
        where: dict[str, str] = {}
        for target in t.machine_of:
            if target not in self.traits:
                self.pending[t.name] = f"MachineOf names unknown unit {target}"
                return
            if target not in self.location:
                idle = "" if self._wanted(target) else " (its desired state is inactive)"
                self.pending[t.name] = f"waiting for {target} to be scheduled{idle}"
                return
            where[target] = self.location[target]
        if len(set(where.values())) > 1:
            spread = ", ".join(f"{u} on {short(m)}" for u, m in where.items())
            self.pending[t.name] = f"MachineOf targets are on different machines: {spread}"
            return
        self._try_pinned(t, next(iter(where.values())),
                         "MachineOf=" + ",".join(t.machine_of))

    def _place_pinned_by_machine_id(self, t: Traits) -> None:
        want = t.machine_id or ""
        if want in self.machines:
            self._try_pinned(t, want, f"MachineID={want}")
            return
        if self._short_ids is None:
            self._short_ids = {}
            for mid in sorted(self.machines):
                self._short_ids.setdefault(short(mid), []).append(mid)
        found = self._short_ids.get(want, [])
        if len(found) == 1:
            self._try_pinned(t, found[0], f"MachineID={want}")
        elif found:
            self.pending[t.name] = (f"MachineID={want} matches several machines "
                                    f"({', '.join(found)}); give the full machine ID")
        else:
            self.pending[t.name] = f"machine {want} is not in the cluster"

    def _try_pinned(self, t: Traits, mid: str, pin: str) -> None:
        rejection = self.feasibility.first_rejection(self.all_checks, t, mid)
        if rejection is None:
            self.place.append(Decision(t.name, mid, pin))
            self._commit(t.name, mid)
        else:
            self.pending[t.name] = (f"{pin} puts it on machine {short(mid)}, which cannot run "
                                    f"it: {rejection.reason}")

    def _place_least_loaded(self, t: Traits) -> None:
        if not self.machines:
            self.pending[t.name] = "no machines in the cluster"
            return
        mid, tally = self.index.least_loaded(t, self.conflicts, self.feasibility)
        scope = f" with metadata {t.metadata_text}" if t.metadata_id else ""
        if mid is None:
            self.pending[t.name] = _exhausted(tally, scope) if tally else (
                f"no machine has metadata {t.metadata_text}")
            return
        load = self.loads[mid]
        self.place.append(Decision(t.name, mid, f"least loaded machine{scope} "
                                                f"({load} unit{'' if load == 1 else 's'})"))
        self._commit(t.name, mid)


def _no_longer(rejection: Rejection, mid: str) -> str:
    if rejection.constraint.startswith("MachineMetadata="):
        text = rejection.constraint.partition("=")[2]
        return f"machine {short(mid)} no longer has metadata {text}"
    return rejection.reason


def _exhausted(tally: Mapping[str, int], scope: str) -> str:
    if len(tally) == 1:
        ((constraint, count),) = tally.items()
        who = (f"the only machine{scope} runs" if count == 1
               else f"{count} machines{scope} all run")
        return f"no machine satisfies {constraint} ({who} a conflicting unit)"
    parts = "; ".join(f"{constraint} rules out {count} machine{'' if count == 1 else 's'}"
                      for constraint, count in sorted(tally.items()))
    return f"no machine{scope} can run it: {parts}"


def _topological(nodes: Mapping[str, object],
                 traits: Mapping[str, Traits]) -> tuple[list[str], dict[str, str]]:
    """Nodes by name with MachineOf targets first (Kahn's algorithm, smallest name first).

    Edges only join nodes of `nodes`. Returns the order and, for nodes that cannot be
    ordered, why: "MachineOf cycle: a -> b -> a", or waiting for a unit stuck that way.
    """
    waiting_on: dict[str, int] = {}
    dependents: dict[str, list[str]] = {}
    for name in nodes:
        if not traits[name].machine_of:
            continue
        targets = [t for t in traits[name].machine_of if t in nodes]
        if targets:
            waiting_on[name] = len(targets)
            for target in targets:
                dependents.setdefault(target, []).append(name)
    ready = sorted(name for name in nodes if name not in waiting_on)
    if not waiting_on:
        return ready, {}
    order: list[str] = []
    while ready:
        name = heappop(ready)
        order.append(name)
        for child in dependents.get(name, ()):
            waiting_on[child] -= 1
            if not waiting_on[child]:
                heappush(ready, child)
    stuck = sorted(name for name, count in waiting_on.items() if count)
    return order, {name: _stuck_reason(name, set(stuck), traits) for name in stuck}


def _stuck_reason(name: str, stuck: set[str], traits: Mapping[str, Traits]) -> str:
    # Shortest MachineOf path from `name` back to itself through stuck units (BFS).
    came_from: dict[str, str] = {}
    frontier = [name]
    while frontier:
        nxt: list[str] = []
        for node in frontier:
            for target in sorted(set(traits[node].machine_of) & stuck):
                if target == name:
                    path = [name]
                    while node != name:
                        path.append(node)
                        node = came_from[node]
                    return "MachineOf cycle: " + " -> ".join([name, *reversed(path[1:]), name])
                if target not in came_from:
                    came_from[target] = node
                    nxt.append(target)
        frontier = nxt
    blocker = min(set(traits[name].machine_of) & stuck)
    return f"waiting for {blocker} to be scheduled (it is stuck on a MachineOf cycle)"
