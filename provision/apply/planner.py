"""Declared vs. actual units → the changes that converge them (pure).

    plan(desired, actual, cluster=..., prune=...) -> Plan

`actual` is what the registry holds, read at one revision. The plan is a list of steps;
each step is written as one etcd transaction guarded by the revisions the plan saw, so a
change made by someone else in between aborts the step instead of being overwritten:

1. one step with every immediate change: creates, state changes, replacements that need no
   care (a unit not running, a plain unit) and, with `prune`, destroys;
2. then, per template set whose unit file changed, rolling steps of at most
   `max_unavailable` running instances each (with their sidekicks); `apply` starts the next
   only when the previous is active and announced again.

Only units carrying this cluster's `[X-Provision]` mark are ever destroyed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from fleetd.job import JobState
from provision.apply.desired import DesiredUnit


class Action(str, Enum):
    CREATE = "create"
    REPLACE = "replace"
    STATE = "state"
    DESTROY = "destroy"


@dataclass(frozen=True)
class ActualUnit:
    name: str
    hash: str
    state: JobState
    revision: int                 # mod revision of its job key: the guard
    owner: str | None = None      # the cluster that created it, from its mark
    is_global: bool = False
    machine: str | None = None    # where it is assigned, if anywhere


@dataclass(frozen=True)
class Change:
    action: Action
    name: str
    unit: DesiredUnit | None      # None for destroy
    old_hash: str | None = None
    new_hash: str | None = None
    old_state: JobState | None = None
    new_state: JobState | None = None
    expect_revision: int = 0      # 0: the unit must not exist
    machine: str | None = None
    adopted: bool = False         # replaces a unit this cluster's apply did not create


@dataclass(frozen=True)
class Step:
    changes: tuple[Change, ...]
    rolling: str | None = None    # the unit set being rolled, for rolling steps
    wait_for: tuple[str, ...] = ()  # units to see active (and announced) before going on


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...] = ()
    kept_back: tuple[str, ...] = field(default=())  # stale units left alone (no --prune)

    @property
    def changes(self) -> tuple[Change, ...]:
        return tuple(c for step in self.steps for c in step.changes)

    def count(self, action: Action) -> int:
        return sum(1 for c in self.changes if c.action is action)

    @property
    def empty(self) -> bool:
        return not self.steps


def plan(desired: tuple[DesiredUnit, ...] | list[DesiredUnit],
         actual: dict[str, ActualUnit], *, cluster: str, prune: bool = False) -> Plan:
    immediate: list[Change] = []
    rolling: dict[str, list[list[Change]]] = {}   # set -> groups (parent + its sidekick)
    limits: dict[str, int] = {}
    by_name = {u.name: u for u in desired}
    for unit in desired:
        now = actual.get(unit.name)
        if now is None:
            immediate.append(Change(Action.CREATE, unit.name, unit, new_hash=unit.hash,
                                    new_state=unit.state))
            continue
        if now.hash != unit.hash:
            change = Change(Action.REPLACE, unit.name, unit, now.hash, unit.hash, now.state,
                            unit.state, now.revision, now.machine,
                            adopted=now.owner != cluster)
            parent = actual.get(unit.parent) if unit.parent else now
            running = (parent is not None and parent.state is JobState.LAUNCHED
                       and unit.state is JobState.LAUNCHED)
            if unit.rolling and running:
                groups = rolling.setdefault(unit.set_name, [])
                limits[unit.set_name] = unit.max_unavailable
                if unit.parent and groups and groups[-1][0].name == unit.parent:
                    groups[-1].append(change)
                else:
                    groups.append([change])
            else:
                immediate.append(change)
            continue
        if now.state is not unit.state:
            immediate.append(Change(Action.STATE, unit.name, unit, now.hash, now.hash,
                                    now.state, unit.state, now.revision, now.machine))
    stale = sorted(name for name, now in actual.items()
                   if name not in by_name and now.owner == cluster)
    if prune:
        immediate.extend(Change(Action.DESTROY, name, None, actual[name].hash, None,
                                actual[name].state, None, actual[name].revision,
                                actual[name].machine) for name in stale)
    steps: list[Step] = []
    if immediate:
        steps.append(Step(tuple(immediate)))
    for set_name, groups in rolling.items():
        limit = max(1, limits[set_name])
        for start in range(0, len(groups), limit):
            batch = groups[start:start + limit]
            changes = tuple(c for group in batch for c in group)
            steps.append(Step(changes, rolling=set_name,
                              wait_for=tuple(c.name for c in changes)))
    return Plan(tuple(steps), () if prune else tuple(stale))
