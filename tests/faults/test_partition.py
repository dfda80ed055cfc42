"""Fault suite: a network partition of one node.

Three etcd members (Debian's etcd 3.4.23) and two fleetds run on the host's loopback; the
third fleetd runs in its own network namespace, joined to the host by a veth pair, and
reaches etcd through the veth's host-side address (every member listens there too).
`ip link set <host veth> down` cuts it off; `up` heals the link. Units: Conflicts web@1..2,
MachineOf/BindsTo side@1..2, batch@1..3 and a Global mon.service, all sleepers whose pid
files the sampler reads every 50 ms.

While the link is down the cut-off machine keeps its units (fail static: it cannot know
whether it or the cluster is cut off), so those units are active twice until it hears
from etcd again: that window is measured and tolerated. After the heal its stale copies
must stop before it registers again, and no unit may run twice from then on.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

from fleetd.job import JobState
from fleetd.unit.unitfile import parse_unit_file
from tests.support.etcd import wait_for
from tests.support.faults import (
    DEBIAN_ETCD,
    EtcdCluster,
    Netns,
    NetnsFleetHarness,
    Sampler,
    figure,
    live_units,
    netns_problem,
    sleeper_text,
)

pytestmark = pytest.mark.skipif(not os.access(DEBIAN_ETCD, os.X_OK),
                                reason=f"the fault suite runs Debian's etcd-server 3.4.23 at "
                                       f"{DEBIAN_ETCD}; it is absent")

TTL = 5
WEBS = ["web@1.service", "web@2.service"]
SIDES = ["side@1.service", "side@2.service"]
BATCH = ["batch@1.service", "batch@2.service", "batch@3.service"]
GLOBAL = "mon.service"
MOVABLE = WEBS + SIDES + BATCH


def units(run_dir) -> dict[str, str]:  # a Path
    sleeper = sleeper_text(run_dir)
    web = sleeper + "\n[X-Fleet]\nConflicts=web@*.service\n"
    side = sleeper.replace("[Service]", "BindsTo=web@%i.service\nAfter=web@%i.service\n\n"
                           "[Service]") + "\n[X-Fleet]\nMachineOf=web@%i.service\n"
    found = {u: web for u in WEBS}
    found.update({u: side for u in SIDES})
    found.update({u: sleeper for u in BATCH})
    found[GLOBAL] = sleeper + "\n[X-Fleet]\nGlobal=true\n"
    return found


@pytest.fixture(scope="module")
def partitioned(tmp_path_factory, load_mode):
    """A fresh set-up per load mode: the scenario leaves the namespaced machine without
    movable units (nothing rebalances onto it)."""
    problem = netns_problem()
    if problem:
        pytest.skip(f"network partition scenario: {problem}")
    base = tmp_path_factory.mktemp(f"partition-{load_mode}")
    space = Netns.create(uuid.uuid4().hex[:6])
    etcd = harness = None
    try:
        etcd = EtcdCluster(extra_hosts=(space.host_ip,)).start()
        harness = NetnsFleetHarness(etcd.urls()[0], f"/fault-{uuid.uuid4().hex[:8]}/", base,
                                    ttl=TTL)
        # The namespaced machine comes first and takes every unit it can (nothing rebalances
        # later), so the partition cuts off web@1, its sidekick and the batch units.
        harness.start_in("n3", etcd.urls(space.host_ip), space.ns_ip, netns=space.name)
        for name, text in units(harness.run_dir).items():
            harness.registry.create_job(name, parse_unit_file(text), JobState.LAUNCHED)
        wait_for(lambda: all(len(live_units(harness.run_dir).get(u, {})) == 1
                             for u in ["web@1.service", "side@1.service", *BATCH]), 20,
                 message="units on the namespaced machine")
        harness.start_in("n1", etcd.urls(), "127.0.0.1")
        harness.start_in("n2", etcd.urls(), "127.0.0.1")
        yield harness, space, base
    finally:
        if harness is not None:
            harness.close()
        if etcd is not None:
            etcd.stop()
        space.delete()


def test_partitioned_node_units_move_and_stale_copies_stop_on_heal(partitioned, load_mode):
    harness, space, base = partitioned
    cut_off = harness.fleetds["n3"].machine_id
    run_dir = harness.run_dir
    machines = {f.machine_id for f in harness.fleetds.values()}

    def healthy(view: dict) -> bool:
        return (all(len(view.get(u, {})) == 1 for u in MOVABLE)
                and set(view.get(GLOBAL, {})) == machines)

    before = wait_for(lambda: (lambda v: v if healthy(v) else None)(live_units(run_dir)), 30,
                      message="every unit running once, mon on all three")
    stale = [u for u in MOVABLE if cut_off in before[u]]
    assert stale, "the namespaced machine runs no movable unit"
    window = {"from": float("inf"), "to": float("inf")}
    sampler = Sampler(lambda: live_units(run_dir), global_units=[GLOBAL])
    # Doubles are expected only from the cut until the stale copies are gone after the heal.
    sampler.allow_doubles = lambda at: window["from"] <= at < window["to"]
    with sampler:
        cut_at = time.monotonic()
        window["from"] = cut_at
        space.cut()
        try:
            moved = sampler.wait_sample(
                lambda v: all(any(m != cut_off for m in v.get(u, {})) for u in stale),
                cut_at, TTL + 20, "the cut-off machine's units started elsewhere")
            # Fail static: the cut-off machine still runs its copies right then.
            kept = [u for u in stale if cut_off in moved.view.get(u, {})]
        finally:
            heal_at = time.monotonic()
            space.heal()
        clean = sampler.wait_sample(lambda v: all(len(v.get(u, {})) == 1 for u in MOVABLE)
                                    and all(cut_off not in v[u] for u in stale),
                                    heal_at, 3 * TTL + 20, "stale copies stopped after heal")
        window["to"] = clean.at
        wait_for(lambda: cut_off in harness.registry.machines()[1], 20,
                 message="the cut-off machine registered again")
        # Watch a while after the heal: nothing may run twice again (the rejoined machine
        # must not start a copy of what moved, and mon comes back on it).
        watch_until = time.monotonic() + TTL
        wait_for(lambda: time.monotonic() >= watch_until, TTL + 10, interval=0.1,
                 message="post-heal watch")
        final = sampler.latest()
    log = harness.fleetds["n3"].log()
    stopped_first = ("no longer scheduled here" in log and "registered" in log
                     and log.index("no longer scheduled here") < log.rindex("registered"))
    # The copies that took over kept running through the heal: only the stale ones stopped.
    new_homes = {u: {m: p for m, p in moved.view[u].items() if m != cut_off} for u in stale}
    replaced = [u for u in stale if not new_homes[u].items() <= final.get(u, {}).items()]
    figure("partition_one_node", base.parent / "fault-figures.jsonl", load=load_mode,
           agent_ttl_s=TTL,
           units_on_cut_node=len(stale), moved_after_cut_s=round(moved.at - cut_at, 3),
           cut_for_s=round(heal_at - cut_at, 3), stale_copies_kept_while_cut=len(kept),
           stale_stopped_after_heal_s=round(clean.at - heal_at, 3),
           tolerated_double_samples_while_cut=len(sampler.tolerated),
           double_running_after_heal=len(sampler.doubles),
           stale_stopped_before_reregister=stopped_first, takeover_copies_restarted=len(replaced))
    assert sampler.errors == [], sampler.errors[:3]
    assert sampler.doubles == [], f"units ran twice outside the partition: {sampler.doubles[:3]}"
    assert stopped_first, "the cut-off machine registered before stopping its stale copies"
    # Within one agent TTL of the heal (the machine sees etcd again as soon as its TCP
    # connections retransmit, well within that).
    assert clean.at - heal_at <= TTL, f"stale copies stopped {clean.at - heal_at:.2f}s after"
    assert replaced == [], f"the copies that took over were restarted: {replaced}"
    assert healthy(final), f"not every unit runs once after the heal: {final}"
