"""Why is a unit not scheduled? Ask the engine's own scheduler, on what the API shows. Pure.

fleetctl sees every unit (options, desired state, assigned machine) and every machine
(metadata) through the API: exactly the scheduler's input. Running the same pure
function the engine runs gives its own words for a unit it cannot place ("no machine
has metadata region=eu", "no machine satisfies Conflicts=web@*.service ...") instead
of a wait that never ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from fleetd.engine.scheduler import ClusterView, schedule
from fleetd.fleetctl.model import Machine, Unit
from fleetd.job import Job, JobState
from fleetd.machine import Machine as ClusterMachine
from fleetd.unit.xfleet import FleetOptionsError, parse_fleet_options


@dataclass(frozen=True)
class Verdict:
    """`reason` when the scheduler cannot place the unit now; else the machine it would pick."""

    reason: str | None = None
    machine: str | None = None


def explain(units: Iterable[Unit], machines: Iterable[Machine],
            names: Iterable[str]) -> Mapping[str, Verdict]:
    """The scheduler's verdict for each named, unassigned, non-global unit."""
    jobs: dict[str, Job] = {}
    assignments: dict[str, str] = {}
    for unit in units:
        try:
            options = parse_fleet_options(unit.unit_file, unit.name)
            desired = JobState(unit.desired_state or "inactive")
        except (FleetOptionsError, ValueError):
            continue  # the cluster holds it, we cannot read it: the engine decides alone
        if options.global_:
            continue
        jobs[unit.name] = Job(unit.name, unit.hash, desired, options)
        if unit.machine_id:
            assignments[unit.name] = unit.machine_id
    view = ClusterView({m.id: ClusterMachine(m.id, m.primary_ip,
                                             MappingProxyType(dict(m.metadata)))
                        for m in machines}, jobs, assignments)
    plan = schedule(view)
    placed = {d.unit: d.machine for d in plan.place}
    verdicts = {}
    for name in names:
        if name not in jobs or name in assignments:
            continue
        if name in plan.pending:
            verdicts[name] = Verdict(reason=plan.pending[name])
        elif name in placed:
            verdicts[name] = Verdict(machine=placed[name])
    return verdicts
