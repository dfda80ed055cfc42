"""Time the pure scheduler on a synthetic cluster and print placements per second.

    python bench/scheduler_pure.py [--machines 1000] [--units 10000] [--repeat 3]

Variants, each a fresh `schedule()` of the whole view (best of --repeat runs):

- plain:     every unit unconstrained.
- conflicts: units are instances of templates `svcK@N.service`, each with
             Conflicts=svcK@*.service, one instance per machine, plus 10% extra instances
             of the first template that cannot fit (pending, with a reason).
- metadata:  machines in 4 regions with 2 disk types; every unit needs one region
             (and a third of them an ssd).
- failover:  the plain cluster fully assigned, then 10% of the machines gone.

One line per variant: `variant=... machines=M units=U placed=P pending=Q unscheduled=R
schedule_s=T placements_per_s=X`, where X counts the units decided (placed or pending)
per second of `schedule()`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import MappingProxyType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleetd.engine.scheduler import ClusterView, schedule
from fleetd.job import Job, JobState
from fleetd.machine import Machine
from fleetd.unit.xfleet import FleetOptions, FrozenMetadata

REGIONS = ("us-east", "us-west", "eu", "ap")


def machine_ids(count: int) -> list[str]:
    return [f"{i:08x}{'0' * 24}" for i in range(count)]


def job(name: str, **options) -> Job:
    return Job(name, "0" * 40, JobState.LAUNCHED, FleetOptions(**options))


def plain(machines: int, units: int) -> ClusterView:
    ms = {mid: Machine(mid) for mid in machine_ids(machines)}
    jobs = {f"app-{i:06d}.service": job(f"app-{i:06d}.service") for i in range(units)}
    return ClusterView(ms, jobs, {})


def conflicts(machines: int, units: int) -> ClusterView:
    ms = {mid: Machine(mid) for mid in machine_ids(machines)}
    jobs: dict[str, Job] = {}
    fitting = units - units // 10
    for i in range(fitting):
        template, instance = divmod(i, machines)
        name = f"svc{template}@{instance}.service"
        jobs[name] = job(name, conflicts=(f"svc{template}@*.service",))
    for extra in range(units - fitting):
        name = f"svc0@x{extra}.service"
        jobs[name] = job(name, conflicts=("svc0@*.service",))
    return ClusterView(ms, jobs, {})


def metadata(machines: int, units: int) -> ClusterView:
    ms = {}
    for i, mid in enumerate(machine_ids(machines)):
        meta = {"region": REGIONS[i % 4], "disk": "ssd" if i % 2 else "hdd",
                "hostname": f"node-{i}"}
        ms[mid] = Machine(mid, metadata=MappingProxyType(meta))
    jobs = {}
    for i in range(units):
        want = {"region": {REGIONS[i % 4]}} | ({"disk": {"ssd"}} if i % 3 == 0 else {})
        name = f"geo-{i:06d}.service"
        jobs[name] = job(name, machine_metadata=FrozenMetadata(want))
    return ClusterView(ms, jobs, {})


def failover(machines: int, units: int) -> ClusterView:
    view = plain(machines, units)
    assigned = {d.unit: d.machine for d in schedule(view).place}
    gone = set(machine_ids(machines)[: machines // 10])
    alive = {mid: m for mid, m in view.machines.items() if mid not in gone}
    return ClusterView(alive, view.jobs, assigned)


VARIANTS = {"plain": plain, "conflicts": conflicts, "metadata": metadata, "failover": failover}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--units", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variant", choices=sorted(VARIANTS), action="append",
                        help="run only these variants (default: all)")
    args = parser.parse_args(argv)
    for name in args.variant or list(VARIANTS):
        view = VARIANTS[name](args.machines, args.units)
        best = float("inf")
        for _ in range(args.repeat):
            start = time.process_time()
            plan = schedule(view)
            best = min(best, time.process_time() - start)
        decided = len(plan.place) + len(plan.pending)
        print(f"variant={name} machines={args.machines} units={args.units} "
              f"placed={len(plan.place)} pending={len(plan.pending)} "
              f"unscheduled={len(plan.unschedule)} schedule_s={best:.3f} "
              f"placements_per_s={decided / best if best else float('inf'):.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
