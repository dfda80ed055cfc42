"""Is the cluster where the declaration says? (pure)

    lagging(desired, states, announced, jobs) -> {unit: Lag}

`states` are the agents' reports (unit, machine, hash, systemd states), `announced` the
etcd keys present under the sidekicks' prefixes, `jobs` what the registry holds now for
each unit (content hash, desired state). A unit is converged when:

- launched: reported active with the declared content (global: on every machine that
  reports it, and on at least one); a unit with a sidekick also needs its key announced;
- loaded: reported loaded with the declared content, not active;
- inactive: nothing to see (fleet unloads it everywhere).

A unit reported `failed` with the declared content is not waited for: `apply` stops and
shows its log. Nor is a unit whose job someone else changed or destroyed after `apply`
wrote it: waiting for the declared content could never end, and the other writer's
content is not "the old content" — `apply` stops and names the conflict.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fleetd.job import JobState
from fleetd.status import UnitStateRecord
from provision.apply.desired import DesiredUnit

WAITING = "waiting"       # not there yet
FAILED = "failed"         # there, and failed: stop waiting
CHANGED = "changed"       # someone else changed its job since it was written: stop waiting


@dataclass(frozen=True)
class Lag:
    kind: str             # WAITING | FAILED
    reason: str
    machine: str | None = None


def lagging(desired: Iterable[DesiredUnit], states: Iterable[UnitStateRecord],
            announced: set[str],
            jobs: Mapping[str, tuple[str, JobState]] | None = None) -> dict[str, Lag]:
    by_unit: dict[str, list[UnitStateRecord]] = {}
    for record in states:
        by_unit.setdefault(record.name, []).append(record)
    found: dict[str, Lag] = {}
    for unit in desired:
        lag = (_changed(unit, jobs) if jobs is not None else None) or _lag(
            unit, by_unit.get(unit.name, []), announced)
        if lag is not None:
            found[unit.name] = lag
    return found


def _changed(unit: DesiredUnit, jobs: Mapping[str, tuple[str, JobState]]) -> Lag | None:
    held = jobs.get(unit.name)
    if held is None:
        return Lag(CHANGED, "was destroyed by someone else after this apply wrote it")
    digest, desired = held
    if digest == unit.hash and desired is unit.state:
        return None
    return Lag(CHANGED, f"was changed by someone else after this apply wrote it: the registry "
                        f"now holds {digest[:7]}, {desired.value} (this apply wrote "
                        f"{unit.hash[:7]}, {unit.state.value})")


def _lag(unit: DesiredUnit, reports: list[UnitStateRecord], announced: set[str]) -> Lag | None:
    if unit.state is JobState.INACTIVE:
        return None
    current = [r for r in reports if r.hash == unit.hash]
    for record in current:
        if record.status.active == "failed":
            return Lag(FAILED, f"failed on {record.machine[:8]}", record.machine)
    if not current:
        if reports:
            return Lag(WAITING, f"still runs the old content ({reports[0].hash[:7]})",
                       reports[0].machine)
        return Lag(WAITING, "not scheduled or not reported yet")
    if unit.state is JobState.LOADED:
        if any(r.status.load == "loaded" and r.status.active != "active" for r in current):
            return None
        return Lag(WAITING, f"{current[0].status.active} (want loaded)", current[0].machine)
    inactive = [r for r in current if r.status.active != "active"]
    if inactive or (unit.is_global and len(current) < len(reports)):
        record = inactive[0] if inactive else current[0]
        return Lag(WAITING, f"{record.status.active}/{record.status.sub}", record.machine)
    if unit.announcement is not None and unit.announcement.key not in announced:
        return Lag(WAITING, f"active, not announced at {unit.announcement.key} yet",
                   current[0].machine)
    return None
