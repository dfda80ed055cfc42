"""apply's view of the registry, kept from watch events (real etcd on loopback)."""

from __future__ import annotations

import time
import uuid

import pytest

from fleetd.job import JobState
from fleetd.registry.etcd import Etcd, RegistryUnavailable
from fleetd.registry.registry import Registry, encode
from fleetd.runner.base import UnitStatus
from provision.apply.convergence import CHANGED, WAITING
from provision.apply.desired import Announcement, DesiredUnit
from provision.apply.observed import Observed

UNITS = 300
MACHINE = "m1"
ACTIVE = UnitStatus("loaded", "active", "running")


def unit(number: int, announced: bool = False) -> DesiredUnit:
    name = f"job@{number}.service"
    return DesiredUnit(name, "[Service]\nExecStart=/bin/true\n", f"hash{number}",
                       JobState.LAUNCHED, "job@.service",
                       announcement=Announcement(f"/services/job/{number}", "side")
                       if announced else None)


@pytest.fixture
def registries(etcd_server):
    """Two clients of one fleet prefix: the view's and a writer's (the cluster's agents),
    so that the view's request counter counts only what the view asks."""
    prefix = f"/test-{uuid.uuid4().hex[:8]}/"
    watcher, writer = Etcd([etcd_server.url], timeout=3), Etcd([etcd_server.url], timeout=3)
    yield Registry(watcher, prefix), Registry(writer, prefix)
    watcher.close()
    writer.close()


def write_jobs(registry: Registry, units: list[DesiredUnit]) -> None:
    ops = registry.etcd.ops
    puts = [ops.put(registry.keys.job(u.name), encode({"name": u.name, "hash": u.hash,
                                                       "desired": u.state.value}))
            for u in units]
    for start in range(0, len(puts), 100):
        registry.etcd.txn([], puts[start:start + 100])


def wait_until(view: Observed, units: list[DesiredUnit], done, since: int = 0,
               timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        lags = view.lags(units, since)
        if done(lags):
            return lags
        assert time.monotonic() < deadline, f"view never got there: {list(lags.items())[:3]}"
        view.wait(deadline - time.monotonic())


def test_waiting_for_many_units_reads_nothing_after_the_first_snapshot(registries):
    mine, agents = registries
    units = [unit(n) for n in range(1, UNITS + 1)]
    write_jobs(agents, units)
    view = Observed(mine, units)
    try:
        view.sync()
        assert set(view.lags(units)) == {u.name for u in units}  # none reported yet
        after_sync = mine.etcd.requests
        lease = agents.etcd.grant(60)
        # The agents report in many small transactions: many wake-ups.
        for start in range(0, UNITS, 7):
            agents.write_states(MACHINE, lease, {u.name: (u.hash, ACTIVE, True)
                                                 for u in units[start:start + 7]})
        wait_until(view, units, lambda lags: not lags)
        assert mine.etcd.requests == after_sync  # every change came by the watches
        # A unit whose state goes away lags again; one rewritten by someone else is a
        # conflict; both are seen without a read.
        agents.write_states(MACHINE, lease, {units[0].name: None})
        other = DesiredUnit(units[1].name, "", "theirs", JobState.LAUNCHED, "job@.service")
        write_jobs(agents, [other])
        lags = wait_until(view, units, lambda lags: len(lags) == 2)
        assert lags[units[0].name].kind == WAITING
        assert lags[units[1].name].kind == CHANGED
        assert mine.etcd.requests == after_sync
    finally:
        view.stop()


def test_only_announcements_newer_than_the_step_count(registries):
    mine, agents = registries
    units = [unit(1, announced=True)]
    write_jobs(agents, units)
    lease = agents.etcd.grant(60)
    agents.write_states(MACHINE, lease, {units[0].name: (units[0].hash, ACTIVE, True)})
    agents.etcd.put("/services/job/1", "{}")  # the old instance's announcement
    view = Observed(mine, units)
    try:
        view.sync()
        assert not view.lags(units)
        since = agents.etcd.revision()  # the step begins
        assert "not announced" in view.lags(units, since)[units[0].name].reason
        agents.etcd.put("/services/job/1", '{"new": true}')
        wait_until(view, units, lambda lags: not lags, since)
    finally:
        view.stop()
        agents.etcd.delete("/services/job/1")


def test_a_broken_watch_is_answered_by_a_fresh_read_that_misses_nothing(registries):
    mine, agents = registries
    units = [unit(n) for n in range(1, 4)]
    write_jobs(agents, units)
    view = Observed(mine, units)
    try:
        view.sync()
        view.stop()  # the streams go away unseen ...
        view.events.put(RegistryUnavailable("watch stream closed"))  # ... and say so
        lease = agents.etcd.grant(60)
        agents.write_states(MACHINE, lease, {u.name: (u.hash, ACTIVE, True) for u in units})
        assert view.wait(1.0) and view.stale
        view.sync()  # what changed while the watch was broken is in the new read
        assert not view.lags(units)
    finally:
        view.stop()
