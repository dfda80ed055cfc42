"""The pure scheduler: ClusterView in, Plan out. Every table row is named; no etcd anywhere."""

from __future__ import annotations

import random
from collections import Counter
from fnmatch import fnmatchcase
from types import MappingProxyType
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetd.engine import scheduler
from fleetd.engine.feasible import TraitsCache, glob_template_key, template_key
from fleetd.engine.scheduler import ClusterView, Plan, Planning, schedule, schedule_with_stats
from fleetd.job import Job, JobState
from fleetd.machine import Machine
from fleetd.unit.xfleet import FleetOptions, FrozenMetadata, conflicts_with, matches_metadata

# -- builders ---------------------------------------------------------------------------------


def machine(mid: str, **metadata: str) -> Machine:
    return Machine(mid, metadata=MappingProxyType(metadata))


def job(name: str, state: str = "launched", *, machine_id: str | None = None,
        machine_of: tuple[str, ...] = (), metadata: dict | None = None,
        conflicts: tuple[str, ...] = (), replaces: tuple[str, ...] = ()) -> Job:
    """`metadata={"region": "eu"}` or `{"region": ("eu", "us")}` (alternatives)."""
    wanted = {k: (v,) if isinstance(v, str) else v for k, v in (metadata or {}).items()}
    return Job(name, "0" * 40, JobState(state), FleetOptions(
        machine_id=machine_id, machine_of=tuple(machine_of),
        machine_metadata=FrozenMetadata(wanted), conflicts=tuple(conflicts),
        replaces=tuple(replaces)))


def view(machines=(), jobs=(), assignments=None) -> ClusterView:
    return ClusterView({m.id: m for m in machines}, {j.name: j for j in jobs},
                       dict(assignments or {}))


def placed(plan: Plan) -> dict[str, str]:
    return {d.unit: d.machine for d in plan.place}


def unscheduled(plan: Plan) -> dict[str, tuple[str, str]]:
    return {d.unit: (d.machine, d.reason) for d in plan.unschedule}


def apply(v: ClusterView, plan: Plan) -> dict[str, str]:
    final = dict(v.assignments)
    for d in plan.unschedule:
        assert final.pop(d.unit) == d.machine
    for d in plan.place:
        assert d.unit not in final, f"{d.unit} placed twice"
        final[d.unit] = d.machine
    return final


M3 = [machine("m1"), machine("m2"), machine("m3")]
WEB = ("web@*.service",)

# -- placement: (id, machines, jobs, assignments, expected placements, expected pending) ------

PLACEMENT = [
    ("least-loaded-ties-by-id", [machine("m2"), machine("m3"), machine("m1")],
     [job("a.service")], {}, {"a.service": "m1"}, {}),
    ("least-loaded-counts-existing", [machine("m1"), machine("m2")],
     [job("x.service"), job("y.service"), job("z.service"), job("a.service")],
     {"x.service": "m1", "y.service": "m1", "z.service": "m2"}, {"a.service": "m2"}, {}),
    ("placement-counts-earlier-placements", [machine("m1"), machine("m2")],
     [job("a.service"), job("b.service"), job("c.service")], {},
     {"a.service": "m1", "b.service": "m2", "c.service": "m1"}, {}),
    ("placement-counts-existing-and-earlier", [machine("m1"), machine("m2")],
     [job("x.service"), job("a.service"), job("b.service"), job("c.service")],
     {"x.service": "m1"}, {"a.service": "m2", "b.service": "m1", "c.service": "m2"}, {}),
    ("loaded-and-launched-wanted-inactive-not", M3,
     [job("a.service", "loaded"), job("b.service"), job("c.service", "inactive")], {},
     {"a.service": "m1", "b.service": "m2"}, {}),
    ("no-machines", [], [job("a.service")], {}, {},
     {"a.service": "no machines in the cluster"}),
    # a template is a pattern for its instances, never placed itself, whatever its state
    ("template-never-placed", M3,
     [job("web@.service"), job("web@.socket", "loaded"), job("web@1.service")], {},
     {"web@1.service": "m1"}, {}),
    ("template-with-pin-never-placed", M3, [job("web@.service", machine_id="m2")], {}, {}, {}),
    # MachineMetadata
    ("metadata-match", [machine("m1", region="us"), machine("m2", region="eu")],
     [job("a.service", metadata={"region": "eu"})], {}, {"a.service": "m2"}, {}),
    ("metadata-and-across-keys",
     [machine("m1", region="eu", disk="hdd"), machine("m2", region="us", disk="ssd"),
      machine("m3", region="eu", disk="ssd")],
     [job("a.service", metadata={"region": "eu", "disk": "ssd"})], {}, {"a.service": "m3"}, {}),
    ("metadata-or-across-values",
     [machine("m1", region="ap"), machine("m2", region="us"), machine("m3", region="eu")],
     [job("a.service", metadata={"region": ("eu", "us")}),
      job("b.service", metadata={"region": ("eu", "us")})], {},
     {"a.service": "m2", "b.service": "m3"}, {}),
    ("metadata-key-missing", [machine("m1"), machine("m2", disk="ssd")],
     [job("a.service", metadata={"region": "eu"})], {}, {},
     {"a.service": "no machine has metadata region=eu"}),
    ("metadata-no-combination", [machine("m1", region="eu"), machine("m2", disk="ssd")],
     [job("a.service", metadata={"region": ("eu", "us"), "disk": "ssd"})], {}, {},
     {"a.service": "no machine has metadata disk=ssd, region=eu|us"}),
    # MachineID
    ("machine-id-present-even-if-loaded", [machine("m1"), machine("m2")],
     [job("x.service"), job("a.service", machine_id="m2")], {"x.service": "m2"},
     {"a.service": "m2"}, {}),
    ("machine-id-short-id", [machine("0123456789abcdef"), machine("m2")],
     [job("a.service", machine_id="01234567")], {}, {"a.service": "0123456789abcdef"}, {}),
    ("machine-id-absent", M3, [job("a.service", machine_id="m9")], {}, {},
     {"a.service": "machine m9 is not in the cluster"}),
    ("machine-id-conflicts", M3,
     [job("x.service"), job("a.service", machine_id="m1", conflicts=("x.service",))],
     {"x.service": "m1"}, {},
     {"a.service": "MachineID=m1 puts it on machine m1, which cannot run it: x.service runs "
                   "there (Conflicts=x.service)"}),
    ("machine-id-metadata", [machine("m1", region="us")],
     [job("a.service", machine_id="m1", metadata={"region": "eu"})], {}, {},
     {"a.service": "MachineID=m1 puts it on machine m1, which cannot run it: machine m1 does "
                   "not have metadata region=eu"}),
    # MachineOf
    ("machine-of-co-located", [machine("m1"), machine("m2")],
     [job("app.service", machine_of=("db.service",)), job("b.service"), job("db.service")],
     {}, {"b.service": "m1", "db.service": "m2", "app.service": "m2"}, {}),
    ("machine-of-chain-of-3", [machine("m1"), machine("m2")],
     [job("x.service"), job("a.service", machine_of=("b.service",)),
      job("b.service", machine_of=("c.service",)), job("c.service")], {"x.service": "m1"},
     {"c.service": "m2", "b.service": "m2", "a.service": "m2"}, {}),
    ("machine-of-target-already-assigned", M3,
     [job("db.service"), job("app.service", machine_of=("db.service",))],
     {"db.service": "m3"}, {"app.service": "m3"}, {}),
    ("machine-of-unknown-target", M3, [job("app.service", machine_of=("ghost.service",))],
     {}, {}, {"app.service": "MachineOf names unknown unit ghost.service"}),
    ("machine-of-inactive-target", M3,
     [job("db.service", "inactive"), job("app.service", machine_of=("db.service",))], {}, {},
     {"app.service": "waiting for db.service to be scheduled (its desired state is "
                     "inactive)"}),
    ("machine-of-pending-target", M3,
     [job("db.service", metadata={"region": "eu"}),
      job("app.service", machine_of=("db.service",))], {}, {},
     {"db.service": "no machine has metadata region=eu",
      "app.service": "waiting for db.service to be scheduled"}),
    ("machine-of-targets-split", M3,
     [job("x.service"), job("y.service"),
      job("a.service", machine_of=("x.service", "y.service"))],
     {"x.service": "m1", "y.service": "m2"}, {},
     {"a.service": "MachineOf targets are on different machines: x.service on m1, "
                   "y.service on m2"}),
    ("machine-of-cycle", M3,
     [job("a.service", machine_of=("b.service",)), job("b.service", machine_of=("a.service",)),
      job("c.service", machine_of=("a.service",)), job("d.service")], {},
     {"d.service": "m1"},
     {"a.service": "MachineOf cycle: a.service -> b.service -> a.service",
      "b.service": "MachineOf cycle: b.service -> a.service -> b.service",
      "c.service": "waiting for a.service to be scheduled (it is stuck on a MachineOf "
                   "cycle)"}),
    ("machine-of-target-conflicts", M3,
     [job("db.service"), job("x.service"),
      job("app.service", machine_of=("db.service",), conflicts=("x.service",))],
     {"db.service": "m1", "x.service": "m1"}, {},
     {"app.service": "MachineOf=db.service puts it on machine m1, which cannot run it: "
                     "x.service runs there (Conflicts=x.service)"}),
    # Conflicts and Replaces, both directions
    ("conflicts-forward-template-glob", M3,
     [job("web@1.service"), job("x.service"), job("y.service"),
      job("web@2.service", conflicts=WEB)],
     {"web@1.service": "m1", "x.service": "m2", "y.service": "m3"}, {"web@2.service": "m2"},
     {}),
    ("conflicts-reverse-template-glob", [machine("m1"), machine("m2")],
     [job("web@1.service", conflicts=WEB), job("x.service"), job("web@2.service")],
     {"web@1.service": "m1", "x.service": "m2"}, {"web@2.service": "m2"}, {}),
    ("conflicts-forward-literal", [machine("m1"), machine("m2")],
     [job("db.service"), job("x.service"), job("a.service", conflicts=("db.service",))],
     {"db.service": "m1", "x.service": "m2"}, {"a.service": "m2"}, {}),
    ("conflicts-reverse-literal", [machine("m1"), machine("m2")],
     [job("db.service", conflicts=("a.service",)), job("x.service"), job("a.service")],
     {"db.service": "m1", "x.service": "m2"}, {"a.service": "m2"}, {}),
    ("conflicts-forward-other-glob", [machine("m1"), machine("m2")],
     [job("x.socket"), job("y.service"), job("a.service", conflicts=("*.socket",))],
     {"x.socket": "m1", "y.service": "m2"}, {"a.service": "m2"}, {}),
    ("conflicts-reverse-other-glob", [machine("m1"), machine("m2")],
     [job("x.service", conflicts=("a?.service",)), job("y.service"), job("a1.service")],
     {"x.service": "m1", "y.service": "m2"}, {"a1.service": "m2"}, {}),
    ("conflicts-between-placements-of-one-pass", [machine("m1"), machine("m2")],
     [job("a.service"), job("web@1.service", conflicts=WEB),
      job("web@2.service", conflicts=WEB)], {},
     {"a.service": "m1", "web@1.service": "m2", "web@2.service": "m1"}, {}),
    ("conflicts-every-machine", M3,
     [job(f"web@{i}.service", conflicts=WEB) for i in range(1, 5)], {},
     {"web@1.service": "m1", "web@2.service": "m2", "web@3.service": "m3"},
     {"web@4.service": "no machine satisfies Conflicts=web@*.service (3 machines all run a "
                       "conflicting unit)"}),
    ("conflicts-only-machine", [machine("m1")],
     [job("web@1.service", conflicts=WEB), job("web@2.service", conflicts=WEB)], {},
     {"web@1.service": "m1"},
     {"web@2.service": "no machine satisfies Conflicts=web@*.service (the only machine runs "
                       "a conflicting unit)"}),
    ("conflicts-scoped-by-metadata",
     [machine("m1", region="eu"), machine("m2", region="eu"), machine("m3", region="us")],
     [job(f"web@{i}.service", conflicts=WEB, metadata={"region": "eu"}) for i in (1, 2, 3)],
     {}, {"web@1.service": "m1", "web@2.service": "m2"},
     {"web@3.service": "no machine satisfies Conflicts=web@*.service (2 machines with "
                       "metadata region=eu all run a conflicting unit)"}),
    ("conflicts-mixed-reasons", [machine("m1"), machine("m2")],
     [job("db.service"), job("cache.service", conflicts=("a.service",)),
      job("a.service", conflicts=("db.service",))],
     {"db.service": "m1", "cache.service": "m2"}, {},
     {"a.service": "no machine can run it: Conflicts=a.service of units running there rules "
                   "out 1 machine; Conflicts=db.service rules out 1 machine"}),
    ("replaces-keeps-apart", [machine("m1"), machine("m2")],
     [job("old.service"), job("x.service"), job("new.service", replaces=("old.service",))],
     {"old.service": "m1", "x.service": "m2"}, {"new.service": "m2"}, {}),
    ("replaces-is-two-way", [machine("m1"), machine("m2")],
     [job("new.service", replaces=("old.service",)), job("x.service"), job("old.service")],
     {"new.service": "m1", "x.service": "m2"}, {"old.service": "m2"}, {}),
]


@pytest.mark.parametrize("machines, jobs, assignments, want_place, want_pending",
                         [row[1:] for row in PLACEMENT], ids=[row[0] for row in PLACEMENT])
def test_placement(machines, jobs, assignments, want_place, want_pending):
    plan = schedule(view(machines, jobs, assignments))
    assert plan.unschedule == ()
    assert placed(plan) == want_place
    assert dict(plan.pending) == want_pending


def test_placement_order_and_reasons():
    plan = schedule(view([machine("m1", region="eu"), machine("m2")],
                         [job("db.service"), job("app.service", machine_of=("db.service",)),
                          job("eu.service", metadata={"region": "eu"}),
                          job("pin.service", machine_id="m2")]))
    assert [(d.unit, d.machine, d.reason) for d in plan.place] == [
        ("db.service", "m1", "least loaded machine (0 units)"),
        ("app.service", "m1", "MachineOf=db.service"),
        ("eu.service", "m1", "least loaded machine with metadata region=eu (2 units)"),
        ("pin.service", "m2", "MachineID=m2"),
    ]


# -- reconciling existing assignments: (id, machines, jobs, assignments, unschedule,
#    placements, pending) -----------------------------------------------------------------

EU_US = [machine("m1", region="us"), machine("m2", region="eu")]

RECONCILE = [
    ("valid-assignments-kept", M3, [job("a.service"), job("b.service", machine_id="m2")],
     {"a.service": "m1", "b.service": "m2"}, {}, {}, {}),
    ("unit-destroyed", M3, [], {"ghost.service": "m1"},
     {"ghost.service": ("m1", "unit destroyed")}, {}, {}),
    ("template-assignment-removed", M3, [job("web@.service"), job("web@1.service")],
     {"web@.service": "m1", "web@1.service": "m2"},
     {"web@.service": ("m1", "a template is never scheduled; start its instances instead")},
     {}, {}),
    ("desired-inactive-not-replaced", M3, [job("a.service", "inactive")], {"a.service": "m2"},
     {"a.service": ("m2", "desired state inactive")}, {}, {}),
    ("inactive-on-gone-machine", M3, [job("a.service", "inactive")], {"a.service": "m9"},
     {"a.service": ("m9", "desired state inactive")}, {}, {}),
    ("machine-gone-replaced", M3, [job("a.service")],
     {"a.service": "0123456789abcdef"},
     {"a.service": ("0123456789abcdef", "machine 01234567 is gone")}, {"a.service": "m1"}, {}),
    ("machine-gone-chain-moves-together", M3,
     [job("x.service"), job("a.service", machine_of=("b.service",)),
      job("b.service", machine_of=("c.service",)), job("c.service")],
     {"x.service": "m1", "a.service": "m9", "b.service": "m9", "c.service": "m9"},
     {"a.service": ("m9", "machine m9 is gone"), "b.service": ("m9", "machine m9 is gone"),
      "c.service": ("m9", "machine m9 is gone")},
     {"c.service": "m2", "b.service": "m2", "a.service": "m2"}, {}),
    ("parent-unscheduled-dependents-follow", EU_US,
     [job("db.service", metadata={"region": "eu"}),
      job("app.service", machine_of=("db.service",)),
      job("log.service", machine_of=("app.service",))],
     {"db.service": "m1", "app.service": "m1", "log.service": "m1"},
     {"db.service": ("m1", "machine m1 no longer has metadata region=eu"),
      "app.service": ("m1", "MachineOf=db.service but db.service is not scheduled"),
      "log.service": ("m1", "MachineOf=app.service but app.service is not scheduled")},
     {"db.service": "m2", "app.service": "m2", "log.service": "m2"}, {}),
    ("machine-id-mismatch", M3, [job("a.service", machine_id="m2")], {"a.service": "m1"},
     {"a.service": ("m1", "MachineID=m2 does not name machine m1")}, {"a.service": "m2"}, {}),
    ("metadata-changed-moves", EU_US, [job("a.service", metadata={"region": "eu"})],
     {"a.service": "m1"}, {"a.service": ("m1", "machine m1 no longer has metadata region=eu")},
     {"a.service": "m2"}, {}),
    ("metadata-changed-nowhere-to-go", [machine("m1", region="us")],
     [job("a.service", metadata={"region": "eu"})], {"a.service": "m1"},
     {"a.service": ("m1", "machine m1 no longer has metadata region=eu")}, {},
     {"a.service": "no machine has metadata region=eu"}),
    ("machine-of-target-elsewhere", M3,
     [job("db.service"), job("app.service", machine_of=("db.service",))],
     {"db.service": "m1", "app.service": "m2"},
     {"app.service": ("m2", "MachineOf=db.service but db.service runs on machine m1")},
     {"app.service": "m1"}, {}),
    ("machine-of-target-unknown", M3, [job("app.service", machine_of=("ghost.service",))],
     {"app.service": "m1"}, {"app.service": ("m1", "MachineOf names unknown unit ghost.service")},
     {}, {"app.service": "MachineOf names unknown unit ghost.service"}),
    ("conflict-violation-keeps-smaller-name", [machine("m1"), machine("m2")],
     [job("web@1.service", conflicts=WEB), job("web@2.service", conflicts=WEB)],
     {"web@1.service": "m1", "web@2.service": "m1"},
     {"web@2.service": ("m1", "conflict on machine m1: web@1.service runs there "
                              "(Conflicts=web@*.service); web@1.service stays")},
     {"web@2.service": "m2"}, {}),
    ("conflict-violation-reverse", [machine("m1")],
     [job("a.service", conflicts=("b.service",)), job("b.service")],
     {"a.service": "m1", "b.service": "m1"},
     {"b.service": ("m1", "conflict on machine m1: a.service runs there with "
                          "Conflicts=b.service; a.service stays")}, {},
     {"b.service": "no machine satisfies Conflicts=b.service of units running there (the "
                   "only machine runs a conflicting unit)"}),
    ("conflict-violation-three-way", [machine("m1")],
     [job("a.service", conflicts=("b.service",)), job("b.service", conflicts=("c.service",)),
      job("c.service")], {"a.service": "m1", "b.service": "m1", "c.service": "m1"},
     {"b.service": ("m1", "conflict on machine m1: a.service runs there with "
                          "Conflicts=b.service; a.service stays")}, {},
     {"b.service": "no machine satisfies Conflicts=c.service (the only machine runs a "
                   "conflicting unit)"}),
    ("cycle-among-assigned", M3,
     [job("a.service", machine_of=("b.service",)), job("b.service", machine_of=("a.service",))],
     {"a.service": "m1", "b.service": "m1"},
     {"a.service": ("m1", "MachineOf cycle: a.service -> b.service -> a.service"),
      "b.service": ("m1", "MachineOf cycle: b.service -> a.service -> b.service")}, {},
     {"a.service": "MachineOf cycle: a.service -> b.service -> a.service",
      "b.service": "MachineOf cycle: b.service -> a.service -> b.service"}),
]


@pytest.mark.parametrize("machines, jobs, assignments, want_unschedule, want_place, want_pending",
                         [row[1:] for row in RECONCILE], ids=[row[0] for row in RECONCILE])
def test_reconcile_existing(machines, jobs, assignments, want_unschedule, want_place,
                            want_pending):
    plan = schedule(view(machines, jobs, assignments))
    assert unscheduled(plan) == want_unschedule
    assert placed(plan) == want_place
    assert dict(plan.pending) == want_pending


def test_failover_is_one_pass():
    """m2 disappears: its units and their MachineOf dependents land elsewhere, parents first,
    on the least-loaded survivors (ties by id), and nothing else moves."""
    machines = [machine(f"m{i}") for i in (1, 3, 4)]
    jobs = [job(f"u{i}.service") for i in range(6)]
    jobs += [job("db.service"), job("app.service", machine_of=("db.service",)),
             job("side.service", machine_of=("app.service",))]
    assignments = {"u0.service": "m1", "u1.service": "m1", "u2.service": "m3",
                   "u3.service": "m2", "u4.service": "m2", "u5.service": "m4",
                   "db.service": "m2", "app.service": "m2", "side.service": "m2"}
    plan = schedule(view(machines, jobs, assignments))
    assert {u: m for u, (m, _) in unscheduled(plan).items()} == {
        u: "m2" for u in ("u3.service", "u4.service", "db.service", "app.service",
                          "side.service")}
    assert [(d.unit, d.machine) for d in plan.place] == [
        ("db.service", "m3"), ("app.service", "m3"), ("side.service", "m3"),
        ("u3.service", "m4"), ("u4.service", "m1")]
    assert plan.pending == {}


def test_same_view_same_plan_whatever_the_dict_order():
    rng = random.Random(7)
    machines = [machine(f"m{i:02d}", region=rng.choice(["us", "eu"])) for i in range(12)]
    jobs = []
    for i in range(80):
        kind = rng.randrange(5)
        if kind == 0:
            jobs.append(job(f"web@{i}.service", conflicts=WEB))
        elif kind == 1:
            jobs.append(job(f"eu{i}.service", metadata={"region": "eu"}))
        elif kind == 2 and i > 3:
            jobs.append(job(f"side{i}.service", machine_of=(jobs[rng.randrange(i - 1)].name,)))
        else:
            jobs.append(job(f"plain{i}.service", rng.choice(["loaded", "launched", "inactive"])))
    assignments = {j.name: rng.choice(["m00", "m03", "m99"]) for j in rng.sample(jobs, 25)}
    first = schedule(view(machines, jobs, assignments))
    assert first.place and first.unschedule
    for _ in range(5):
        rng.shuffle(machines)
        rng.shuffle(jobs)
        shuffled = dict(rng.sample(sorted(assignments.items()), len(assignments)))
        assert schedule(view(machines, jobs, shuffled)) == first


# -- properties over random small clusters -------------------------------------------------

NAMES = ["a.service", "b.service", "db.service", "x.socket", "web@1.service",
         "web@2.service", "web@3.service", "api@1.service"]
GLOBS = ["web@*.service", "api@*.service", "db.service", "a.service", "*.socket",
         "w?b@1.service", "[ab].service", "*"]
MIDS = ["m1", "m2", "m3", "m4"]


@st.composite
def clusters(draw):
    regions = st.sampled_from(["us", "eu"])
    machines = [machine(mid, **draw(st.fixed_dictionaries(
        {}, optional={"region": regions, "disk": st.sampled_from(["ssd", "hdd"])})))
        for mid in draw(st.lists(st.sampled_from(MIDS), unique=True, max_size=4))]
    jobs = []
    for name in draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=8)):
        others = [n for n in NAMES + ["ghost.service"] if n != name]
        jobs.append(job(
            name, draw(st.sampled_from(["launched", "launched", "loaded", "inactive"])),
            machine_id=draw(st.sampled_from([None, None, None, None, "m1", "m9"])),
            machine_of=tuple(draw(st.lists(st.sampled_from(others), unique=True, max_size=2)
                                  | st.just([]))),
            metadata=draw(st.fixed_dictionaries({}, optional={"region": st.tuples(regions)})),
            conflicts=tuple(draw(st.lists(st.sampled_from(GLOBS), unique=True, max_size=2))),
            replaces=tuple(draw(st.lists(st.sampled_from(others), max_size=1)))))
    assignments = draw(st.dictionaries(st.sampled_from(NAMES + ["ghost.service"]),
                                       st.sampled_from(MIDS + ["m9"]), max_size=6))
    return view(machines, jobs, assignments)


def _conflict(a: Job, b: Job) -> bool:
    return (conflicts_with(a.options, b.name) or conflicts_with(b.options, a.name)
            or b.name in a.options.replaces or a.name in b.options.replaces)


@settings(max_examples=250, deadline=None)
@given(clusters())
def test_every_plan_is_feasible_complete_and_stable(v):
    plan = schedule(v)
    final = apply(v, plan)
    wanted = {n for n, j in v.jobs.items() if j.desired != JobState.INACTIVE}
    for unit, mid in final.items():  # every assignment after the plan is feasible
        j = v.jobs[unit]
        assert unit in wanted and mid in v.machines
        assert j.options.machine_id in (None, mid, v.machines[mid].short_id)
        assert matches_metadata(j.options, v.machines[mid].metadata)
        assert all(final.get(t) == mid for t in j.options.machine_of)
        for other, where in final.items():
            assert other == unit or where != mid or not _conflict(j, v.jobs[other])
    assert set(plan.pending).isdisjoint(final)
    assert wanted == set(final) | set(plan.pending)  # placed or told why not
    assert all(plan.pending.values())
    assert all(d.reason for d in plan.unschedule + plan.place)
    again = schedule(ClusterView(v.machines, v.jobs, final))
    assert (again.unschedule, again.place) == ((), ())  # one pass reaches a fixed point
    # The same units stay pending (the reason may name another constraint: the first one
    # that fails against the fuller cluster).
    assert set(again.pending) == set(plan.pending)


@settings(max_examples=150, deadline=None)
@given(clusters(), clusters())
def test_jobs_digested_by_earlier_passes_plan_what_fresh_ones_do(first, second):
    """The engine keeps one TraitsCache across passes: a job object seen before is not
    digested again, one replaced under the same name (new options) is. Either way each
    pass plans exactly what it plans from scratch."""
    kept = TraitsCache()
    for v in (first, second):
        fresh = schedule(v)
        assert schedule(ClusterView(v.machines, v.jobs, v.assignments, kept)) == fresh
        # The next pass over the same job objects, once the plan is applied.
        after = ClusterView(v.machines, v.jobs, apply(v, fresh))
        assert schedule(ClusterView(after.machines, after.jobs, after.assignments, kept)) == \
            schedule(after)


@settings(max_examples=200, deadline=None)
@given(clusters(), st.integers(min_value=0, max_value=8))
def test_a_plan_read_as_it_is_made_is_the_same_plan(v, read_first):
    """Planning: every removal is known before any placement is worked out; placements
    come one at a time in plan order; finishing after reading some of them gives the plan
    `schedule` gives."""
    whole = schedule(v)
    # (The engine writes removals before placements are known: a unit placed back on the
    # machine it is removed from is stopped and started by its agent. That happens only to
    # a unit kept on a machine its MachineOf= unit is not on: it cannot stay, and may
    # come back when that unit is placed there.)
    back = ({(d.unit, d.machine) for d in whole.unschedule}
            & {(d.unit, d.machine) for d in whole.place})
    assert all(any(v.assignments.get(peer) != where for peer in v.jobs[unit].options.machine_of)
               for unit, where in back)
    planning = Planning(v)
    assert planning.unschedule == whole.unschedule
    assert planning.stats().candidates == 0  # no placement decided yet
    read = []
    for decision in planning:
        read.append(decision)
        if len(read) >= read_first:
            break
    assert tuple(read) == whole.place[:len(read)]
    assert planning.plan() == whole
    assert planning.plan() == whole  # finishing twice changes nothing


def test_a_unit_whose_machine_of_unit_is_not_placed_leaves_and_follows_it():
    """Fleet's rule too: a unit may stay only where its MachineOf= unit is. Here that unit
    is placed in the same pass, on the same machine, so the unit comes back to it."""
    plan = schedule(view([machine("m1")],
                         [job("a.service"), job("web@3.service", machine_of=("a.service",))],
                         {"web@3.service": "m1"}))
    assert [(d.unit, d.machine) for d in plan.unschedule] == [("web@3.service", "m1")]
    assert [(d.unit, d.machine) for d in plan.place] == [("a.service", "m1"),
                                                         ("web@3.service", "m1")]


def test_placements_are_decided_only_as_they_are_read():
    machines = [machine(f"m{i}") for i in range(3)]
    planning = Planning(view(machines, [job(f"u{i}.service") for i in range(30)]))
    first = next(iter(planning))
    assert first.unit == "u0.service"
    assert planning.stats().candidates == 1
    assert len(planning.plan().place) == 30


@st.composite
def template_clusters(draw):
    """Enough machines and template instances for scans to reject many candidates."""
    regions = st.sampled_from(["us", "eu"])
    mids = [f"m{i:02d}" for i in range(draw(st.integers(1, 12)))]
    machines = [machine(mid, region=draw(regions)) for mid in mids]
    globs = st.sampled_from(["web@*.service", "web@*.service", "api@*.service", "*.socket",
                             "api@1.service", "web@1?.service"])
    jobs = []
    for i in range(draw(st.integers(10, 40))):
        name = draw(st.sampled_from(["web@{}.service", "web@{}.service", "api@{}.service",
                                     "x{}.socket"]))
        name = name.format(i)
        jobs.append(job(
            name, draw(st.sampled_from(["launched", "launched", "inactive"])),
            metadata=draw(st.sampled_from([{}, {}, {"region": "eu"}])),
            machine_of=draw(st.sampled_from([(), (), (), ("x1.socket",)])),
            conflicts=tuple(draw(st.lists(globs, unique=True, max_size=2)))))
    names = [j.name for j in jobs]
    assignments = draw(st.dictionaries(st.sampled_from(names), st.sampled_from(mids + ["gone"]),
                                       max_size=len(names))) if names else {}
    return view(machines, jobs, assignments)


def _feasible(v: ClusterView, state: dict[str, str], unit: str, mid: str) -> bool:
    j = v.jobs[unit]
    return (j.options.machine_id in (None, mid, v.machines[mid].short_id)
            and matches_metadata(j.options, v.machines[mid].metadata)
            and all(state.get(t) == mid for t in j.options.machine_of)
            and not any(where == mid and _conflict(j, v.jobs[other])
                        for other, where in state.items()))


@pytest.mark.parametrize("hot_after", [1, scheduler.HOT_AFTER], ids=["hot-at-once", "default"])
@settings(max_examples=100, deadline=None)
@given(v=template_clusters())
def test_least_loaded_matches_brute_force(hot_after, v):
    """Replaying the plan: each least-loaded placement is the (load, id)-smallest machine a
    brute-force check finds feasible at that moment; units left pending with "no machine"
    have no feasible machine even at the end (machines only gain units while placing)."""
    with mock.patch.object(scheduler, "HOT_AFTER", hot_after):
        plan = schedule(v)
    _replay(v, plan)


def _replay(v: ClusterView, plan: Plan) -> None:
    state = dict(v.assignments)
    for d in plan.unschedule:
        del state[d.unit]
    for d in plan.place:
        loads = Counter(state.values())
        fits = [m for m in v.machines if _feasible(v, state, d.unit, m)]
        assert d.machine in fits
        if d.reason.startswith("least loaded"):
            assert d.machine == min(fits, key=lambda m: (loads[m], m))
        state[d.unit] = d.machine
    for unit, reason in plan.pending.items():
        if reason.startswith("no machine"):
            assert not [m for m in v.machines if _feasible(v, state, unit, m)], reason


def _busy_cluster(seed: int) -> ClusterView:
    rng = random.Random(seed)
    machines = [machine(f"m{i:02d}", region=rng.choice(["us", "eu", "eu"])) for i in range(30)]
    jobs = []
    for i in range(400):
        template = rng.choice(["web", "web", "api", "db"])
        jobs.append(job(f"{template}@{i}.service",
                        metadata=rng.choice([{}, {}, {"region": "eu"}]),
                        conflicts=rng.choice([(f"{template}@*.service",), (), ("db@*.service",),
                                              ("*@1*.service",)])))
    assignments = {j.name: rng.choice(machines).id for j in rng.sample(jobs, 60)}
    return view(machines, jobs, assignments)


@pytest.mark.parametrize("seed", range(12), ids=[f"seed-{n}" for n in range(12)])
def test_busy_cluster_matches_brute_force(seed):
    """Hundreds of self-conflicting instances on 30 machines: signatures turn hot and scan
    their own heaps, and every placement is still the brute-force least-loaded one."""
    v = _busy_cluster(seed)
    plan, stats = schedule_with_stats(v)
    assert stats.heaps > 2 and plan.pending
    _replay(v, plan)


@given(st.text("ab@.-*", max_size=8), st.text("ab@.-", min_size=1, max_size=8))
def test_template_glob_index_agrees_with_fnmatch(pattern, name):
    key = glob_template_key(pattern)
    if key is not None:
        assert fnmatchcase(name, pattern) == (template_key(name) == key)


# -- cost: operation counts, not time ---------------------------------------------------------


def _cluster(machines: int, jobs: list[Job], assignments=None) -> ClusterView:
    return view([machine(f"m{i:05d}") for i in range(machines)], jobs, assignments)


def test_unconstrained_cost_is_linear_in_jobs():
    jobs = [job(f"app-{i:05d}.service") for i in range(2000)]
    plan, stats = schedule_with_stats(_cluster(200, jobs))
    assert len(plan.place) == 2000
    assert stats.checks <= 2 * len(jobs)
    assert stats.candidates <= 2 * len(jobs)
    assert set(Counter(placed(plan).values()).values()) == {10}


def test_conflicting_template_overflow_is_not_quadratic():
    """1,000 web@N with Conflicts=web@*.service on 200 machines: 800 stay pending, and the
    scans after the cluster is full cost O(machines) once, not O(machines) per unit."""
    jobs = [job(f"web@{i}.service", conflicts=WEB) for i in range(1000)]
    plan, stats = schedule_with_stats(_cluster(200, jobs))
    assert len(plan.place) == 200 and len(plan.pending) == 800
    assert stats.checks <= len(jobs) + 3 * 200
    assert stats.candidates <= len(jobs) + 4 * 200


def test_conflicting_machines_at_the_front_of_the_heap_are_skipped():
    """Machines already running web sit at lower load than the free ones; each new web unit
    must not wade through them again."""
    web = [job(f"web@{i:03d}.service", conflicts=WEB) for i in range(100)]
    filler = [job(f"fill-{i:03d}.service") for i in range(500)]
    assignments = {j.name: f"m{i:05d}" for i, j in enumerate(web)}
    assignments |= {j.name: f"m{100 + i // 5:05d}" for i, j in enumerate(filler)}
    new = [job(f"web@n{i:03d}.service", conflicts=WEB) for i in range(100)]
    plan, stats = schedule_with_stats(_cluster(200, web + filler + new, assignments))
    assert set(placed(plan).values()) == {f"m{i:05d}" for i in range(100, 200)}
    # 4 checks per kept assignment, then one per placement plus one scan of the 100 busy
    # machines on the shared heap and one on the template's own heap.
    assert stats.checks <= 4 * len(assignments) + len(new) + 2 * 100 + 8
    assert stats.candidates <= len(new) + 2 * 100 + 8


def test_many_templates_pack_one_instance_per_machine():
    jobs = [job(f"svc{t}@{i}.service", conflicts=(f"svc{t}@*.service",))
            for t in range(10) for i in range(200)]
    plan, stats = schedule_with_stats(_cluster(200, jobs))
    assert len(plan.place) == 2000 and not plan.pending
    assert stats.checks <= 2 * len(jobs)


def test_metadata_constrained_cost_ignores_non_matching_machines():
    machines = [machine(f"m{i:05d}", region="eu" if i < 10 else "us", host=f"h{i}")
                for i in range(200)]
    jobs = [job(f"eu-{i:04d}.service", metadata={"region": "eu"}) for i in range(1000)]
    jobs += [job(f"any-{i:04d}.service") for i in range(1000)]
    plan, stats = schedule_with_stats(view(machines, jobs))
    assert len(plan.place) == 2000
    assert {placed(plan)[j.name] for j in jobs[:1000]} == {f"m{i:05d}" for i in range(10)}
    assert stats.checks <= 2 * len(jobs)
    assert stats.metadata_evaluations <= len(machines)  # once per (constraint, class)


def test_failover_cost_is_linear():
    jobs = [job(f"app-{i:05d}.service") for i in range(2000)]
    assignments = {j.name: f"m{i % 200:05d}" for i, j in enumerate(jobs)}
    v = _cluster(200, jobs, assignments)
    v = ClusterView({k: m for k, m in v.machines.items() if k >= "m00020"}, v.jobs,
                    v.assignments)
    plan, stats = schedule_with_stats(v)
    assert len(plan.unschedule) == len(plan.place) == 200
    assert stats.checks <= 4 * len(assignments) + 2 * len(plan.place)
    assert stats.candidates <= 2 * len(plan.place)
