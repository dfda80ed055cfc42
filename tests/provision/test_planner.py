"""The declared units (desired.py), the planner and the convergence check: pure, by tables."""

from __future__ import annotations

import textwrap

import pytest

from fleetd.job import JobState
from fleetd.registry.registry import UnitStateRecord
from fleetd.runner.base import UnitStatus
from fleetd.unit.unitfile import parse_unit_file
from fleetd.unit.xfleet import parse_fleet_options
from provision.apply.convergence import CHANGED, FAILED, WAITING, lagging
from provision.apply.desired import desired_units, owner_of
from provision.apply.planner import Action, ActualUnit, plan
from provision.errors import UserError
from provision.spec.build import load_cluster

WEB = """\
[Unit]
Description=web %i
[Service]
ExecStart=/bin/sleep 300
[X-Fleet]
Conflicts=web@*.service
"""

BASE = """\
name: demo
network: {cidr: 127.88.0.0/24, start: 1}
nodes: {count: 3, name_prefix: core}
etcd: {members: all, discovery: {mode: static, cluster_token: t}}
"""


def cluster(tmp_path, units: str, web: str = WEB):
    (tmp_path / "web@.service").write_text(web)
    path = tmp_path / "demo.yaml"
    path.write_text(BASE + textwrap.dedent(units))
    return load_cluster(path)[0]


WEB_SET = """\
units:
  - file: web@.service
    instances: 3
    sidekick: {port: 8080, check: http, ttl: 10}
"""


# -- desired units -----------------------------------------------------------------------------

def test_each_instance_gets_a_marked_unit_and_a_sidekick_bound_to_it(tmp_path):
    units = desired_units(cluster(tmp_path, WEB_SET))
    assert [u.name for u in units] == [
        "web@1.service", "web-announce@1.service", "web@2.service", "web-announce@2.service",
        "web@3.service", "web-announce@3.service"]
    web1, side1 = units[0], units[1]
    assert owner_of(parse_unit_file(web1.text)) == "demo"
    assert web1.announcement.key == "/services/web/1"
    assert web1.announcement.sidekick == "web-announce@1.service"
    assert web1.hash == units[2].hash  # instances share the template's content
    side = parse_unit_file(side1.text)
    values = {(o.section, o.name): o.value for o in side.options}
    assert values[("Unit", "BindsTo")] == "web@1.service"
    assert values[("Unit", "After")] == "web@1.service"
    assert values[("X-Fleet", "MachineOf")] == "web@1.service"
    assert values[("X-Provision", "ParentHash")] == web1.hash
    assert owner_of(side) == "demo"
    exec_start = values[("Service", "ExecStart")]
    assert "fleetd announce --unit web@1.service --key /services/web/1 --port 8080" in exec_start
    assert "--check http" in exec_start and "--ttl 10" in exec_start
    # TLS by default: the members over https, with the node's fleetd client certificate.
    assert ("https://127.88.0.1:2379,https://127.88.0.2:2379,https://127.88.0.3:2379"
            in exec_start)
    assert "--etcd-cafile" in exec_start and "--etcd-certfile" in exec_start
    assert side1.parent == "web@1.service"
    assert parse_fleet_options(side, side1.name).machine_of == ("web@1.service",)


def test_a_changed_unit_file_changes_the_parent_and_its_sidekick(tmp_path):
    before = {u.name: u.hash for u in desired_units(cluster(tmp_path, WEB_SET))}
    after = {u.name: u.hash for u in desired_units(
        cluster(tmp_path, WEB_SET, WEB.replace("web %i", "web %i v2")))}
    assert all(before[name] != after[name] for name in before)


@pytest.mark.parametrize("units,key", [
    ("units:\n  - {file: web@.service, instances: [a], sidekick: {port: 80, key: /x/y}}\n",
     "/x/y/a"),
    ("units:\n  - {name: hello.service, content: \"[Service]\\nExecStart=/bin/true\\n\", "
     "sidekick: {port: 80}}\n", "/services/hello/hello"),
])
def test_announce_keys(tmp_path, units, key):
    [parent, _side] = desired_units(cluster(tmp_path, units))
    assert parent.announcement.key == key


def test_yaml_constraints_are_merged_into_x_fleet(tmp_path):
    [unit] = desired_units(cluster(tmp_path, """\
        units:
          - name: mon.service
            content: "[Service]\\nExecStart=/bin/true\\n"
            global: true
            metadata: {disk: [ssd, nvme]}
        """))
    options = parse_fleet_options(parse_unit_file(unit.text), "mon.service")
    assert options.global_ and unit.is_global
    assert dict(options.machine_metadata) == {"disk": frozenset({"ssd", "nvme"})}


def test_a_declared_unit_named_like_a_generated_sidekick_is_refused(tmp_path):
    with pytest.raises(UserError, match="web-announce@1.service"):
        desired_units(cluster(tmp_path, WEB_SET + """\
  - file: web@.service
    name: web-announce@.service
    instances: [1]
"""))


# -- planner -----------------------------------------------------------------------------------

def actual_of(units, **overrides) -> dict[str, ActualUnit]:
    found = {}
    for i, unit in enumerate(units, 1):
        found[unit.name] = ActualUnit(unit.name, unit.hash, unit.state, 100 + i, "demo",
                                      unit.is_global, f"m{i}")
    for name, change in overrides.items():
        found[name.replace("_", "@", 1) + ".service"] = change
    return found


def test_nothing_registered_everything_is_created_in_one_step(tmp_path):
    units = desired_units(cluster(tmp_path, WEB_SET))
    result = plan(units, {}, cluster="demo")
    assert len(result.steps) == 1
    assert [c.action for c in result.changes] == [Action.CREATE] * 6
    assert all(c.expect_revision == 0 for c in result.changes)


def test_matching_cluster_plans_nothing(tmp_path):
    units = desired_units(cluster(tmp_path, WEB_SET))
    result = plan(units, actual_of(units), cluster="demo")
    assert result.empty and result.changes == ()


@pytest.mark.parametrize("max_unavailable,steps", [
    (1, [["web@1.service", "web-announce@1.service"], ["web@2.service", "web-announce@2.service"],
         ["web@3.service", "web-announce@3.service"]]),
    (2, [["web@1.service", "web-announce@1.service", "web@2.service",
          "web-announce@2.service"], ["web@3.service", "web-announce@3.service"]]),
    (5, [["web@1.service", "web-announce@1.service", "web@2.service",
          "web-announce@2.service", "web@3.service", "web-announce@3.service"]]),
])
def test_a_changed_template_rolls_max_unavailable_instances_at_a_time(tmp_path, max_unavailable,
                                                                      steps):
    old = desired_units(cluster(tmp_path, WEB_SET))
    new = desired_units(cluster(tmp_path, WEB_SET + f"    max_unavailable: {max_unavailable}\n",
                                WEB.replace("web %i", "v2 %i")))
    result = plan(new, actual_of(old), cluster="demo")
    assert [list(s.wait_for) for s in result.steps] == steps
    assert all(s.rolling == "web@.service" for s in result.steps)
    first = result.steps[0].changes[0]
    assert (first.action, first.old_hash, first.new_hash, first.expect_revision) == (
        Action.REPLACE, old[0].hash, new[0].hash, 101)


def test_replacing_units_that_do_not_run_is_immediate(tmp_path):
    old = desired_units(cluster(tmp_path, WEB_SET.replace("instances: 3", "instances: 3\n"
                                                                       "    state: loaded")))
    new = desired_units(cluster(tmp_path, WEB_SET, WEB.replace("web %i", "v2 %i")))
    result = plan(new, actual_of(old), cluster="demo")
    assert len(result.steps) == 1 and result.steps[0].rolling is None
    assert {c.action for c in result.changes} == {Action.REPLACE}


def test_state_changes_prune_and_ownership(tmp_path):
    units = desired_units(cluster(tmp_path, WEB_SET))
    actual = actual_of(units)
    actual["web@1.service"] = ActualUnit("web@1.service", units[0].hash, JobState.LOADED, 7,
                                         "demo")
    actual["old.service"] = ActualUnit("old.service", "abc", JobState.LAUNCHED, 8, "demo")
    actual["theirs.service"] = ActualUnit("theirs.service", "def", JobState.LAUNCHED, 9, None)
    actual["other.service"] = ActualUnit("other.service", "fed", JobState.LAUNCHED, 10, "else")

    kept = plan(units, actual, cluster="demo")
    assert [(c.action, c.name, c.old_state, c.new_state) for c in kept.changes] == [
        (Action.STATE, "web@1.service", JobState.LOADED, JobState.LAUNCHED)]
    assert kept.kept_back == ("old.service",)

    pruned = plan(units, actual, cluster="demo", prune=True)
    assert [(c.action, c.name, c.expect_revision) for c in pruned.changes][1:] == [
        (Action.DESTROY, "old.service", 8)]
    assert pruned.kept_back == ()


def test_a_unit_not_created_by_apply_is_adopted_on_replace(tmp_path):
    units = desired_units(cluster(tmp_path, WEB_SET))
    actual = actual_of(units)
    actual["web@1.service"] = ActualUnit("web@1.service", "0ther", JobState.INACTIVE, 5, None)
    [change] = plan(units, actual, cluster="demo").changes
    assert change.action is Action.REPLACE and change.adopted


# -- convergence -------------------------------------------------------------------------------

def record(name, digest, active="active", sub="running", load="loaded", machine="m1"):
    return UnitStateRecord(name, machine, digest, UnitStatus(load, active, sub))


def test_convergence_table(tmp_path):
    units = desired_units(cluster(tmp_path, WEB_SET))
    web1, side1, web2, side2, web3, side3 = units
    states = [record(web1.name, web1.hash), record(side1.name, side1.hash),
              record(web2.name, "0ld"), record(side2.name, side2.hash, "failed", "failed"),
              record(web3.name, web3.hash, "activating", "start")]
    lags = lagging(units, states, announced={"/services/web/2"})
    assert lags["web@1.service"].kind == WAITING  # active but not announced
    assert "not announced" in lags["web@1.service"].reason
    assert "web-announce@1.service" not in lags
    assert "old content" in lags["web@2.service"].reason
    assert lags["web-announce@2.service"].kind == FAILED
    assert lags["web@3.service"].reason == "activating/start"
    assert lags["web-announce@3.service"].reason == "not scheduled or not reported yet"
    assert lagging(units[:2], states[:2], announced={"/services/web/1"}) == {}


def test_a_job_someone_else_changed_after_apply_wrote_it_is_a_conflict_not_a_wait(tmp_path):
    units = desired_units(cluster(tmp_path, WEB_SET))
    web1, side1, web2, side2, web3, side3 = units
    states = [record(u.name, u.hash) for u in units]
    heads = {u.name: (u.hash, u.state) for u in units}
    heads["web@1.service"] = ("0ther1234", JobState.LAUNCHED)       # another writer's content
    heads["web@2.service"] = (web2.hash, JobState.INACTIVE)         # another writer stopped it
    del heads["web@3.service"]                                      # another writer destroyed it
    lags = lagging(units, states, {"/services/web/1", "/services/web/2", "/services/web/3"},
                   heads)
    assert {n: lag.kind for n, lag in lags.items()} == {
        "web@1.service": CHANGED, "web@2.service": CHANGED, "web@3.service": CHANGED}
    assert lags["web@1.service"].reason == (
        "was changed by someone else after this apply wrote it: the registry now holds "
        f"0ther12, launched (this apply wrote {web1.hash[:7]}, launched)")
    assert "now holds" in lags["web@2.service"].reason and "inactive" in \
        lags["web@2.service"].reason
    assert lags["web@3.service"].reason == "was destroyed by someone else after this apply " \
                                           "wrote it"
    # The registry holding what apply wrote: converged, as without `jobs`.
    assert lagging(units, states, {"/services/web/1", "/services/web/2", "/services/web/3"},
                   {u.name: (u.hash, u.state) for u in units}) == {}
