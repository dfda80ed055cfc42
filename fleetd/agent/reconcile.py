"""What an agent must do: desired units (from the registry) vs. current (from its runner).

Pure: data in, an ordered task list out, each task with its reason. The order
is fixed (stop what must go first, then load, then start), as fleet's agent
did, so a unit that moves away is stopped before anything new starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from fleetd.job import JobState
from fleetd.status import UnitStatus


class Action(str, Enum):
    UNLOAD = "unload"
    STOP = "stop"
    LOAD = "load"
    START = "start"


ORDER = {Action.UNLOAD: 0, Action.STOP: 1, Action.LOAD: 2, Action.START: 3}


@dataclass(frozen=True)
class Desired:
    hash: str
    state: JobState


@dataclass(frozen=True)
class Current:
    hash: str  # the content the runner has loaded
    status: UnitStatus
    started: bool  # the agent asked the runner to start this content (and not to stop it since)


@dataclass(frozen=True)
class Task:
    action: Action
    unit: str
    reason: str
    hash: str = ""  # for LOAD: the content to load


def plan_tasks(desired: Mapping[str, Desired], current: Mapping[str, Current]) -> list[Task]:
    tasks: list[Task] = []
    for unit in current:
        want = desired.get(unit)
        if want is None or want.state is JobState.INACTIVE:
            why = "no longer scheduled here" if want is None else "desired state inactive"
            tasks.append(Task(Action.UNLOAD, unit, why))
    for unit, want in desired.items():
        if want.state is JobState.INACTIVE:
            continue
        now = current.get(unit)
        if now is not None and now.hash != want.hash:
            # New content: take the old one down; it is loaded (and started) again below.
            tasks.append(Task(Action.UNLOAD, unit, f"content changed to {want.hash[:7]}"))
            now = None
        if now is None:
            tasks.append(Task(Action.LOAD, unit, "scheduled here", want.hash))
        if want.state is JobState.LAUNCHED and (now is None or not now.started):
            tasks.append(Task(Action.START, unit, "desired state launched"))
        elif want.state is JobState.LOADED and now is not None and (
                now.started or now.status.is_active):
            tasks.append(Task(Action.STOP, unit, "desired state loaded"))
    tasks.sort(key=lambda t: (ORDER[t.action], t.unit))
    return tasks
