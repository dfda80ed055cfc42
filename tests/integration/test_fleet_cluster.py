"""Several real fleetd processes on one real etcd: scheduling, failover, fail static.

Each test gets its own key prefix in the module's etcd, so the tests share one
etcd but not a cluster. TTL is 3 s (etcd's minimum lease with default timing).
"""

from __future__ import annotations

import signal
import threading
import time
import uuid

import pytest

from fleetd.job import JobState
from fleetd.unit.unitfile import parse_unit_file
from tests.support.etcd import wait_for
from tests.support.fleet import FleetHarness, sleeper_unit


@pytest.fixture
def cluster(etcd_server, tmp_path):
    test_cluster = FleetHarness(etcd_server.url, f"/it-{uuid.uuid4().hex[:8]}/", tmp_path)
    yield test_cluster
    test_cluster.close()


def submit(cluster: FleetHarness, name: str, text: str, state=JobState.LAUNCHED) -> None:
    cluster.registry.create_job(name, parse_unit_file(text), state)


def machines_by_name(cluster: FleetHarness) -> dict[str, str]:
    return {f.machine_id: name for name, f in cluster.fleetds.items()}


class DoubleRunWatch:
    """Polls real processes in the background and remembers any unit seen on two machines."""

    def __init__(self, cluster: FleetHarness) -> None:
        self.cluster = cluster
        self.doubles: list[tuple[str, list[str]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            for unit, machines in self.cluster.running().items():
                if len(machines) > 1:
                    self.doubles.append((unit, machines))

    def __enter__(self) -> DoubleRunWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(5)


def test_conflicts_spread_machine_of_colocates_global_follows_metadata(cluster):
    cluster.start("n1", "role=worker")
    cluster.start("n2", "role=worker")
    cluster.start("n3", "role=edge")
    run = cluster.run_dir
    for i in (1, 2, 3):
        submit(cluster, f"web@{i}.service",
               sleeper_unit(run, xfleet="Conflicts=web@*.service"))
    submit(cluster, "side@1.service",
           sleeper_unit(run, extra="BindsTo=web@1.service", xfleet="MachineOf=web@%i.service"))
    submit(cluster, "mon.service",
           sleeper_unit(run, xfleet="Global=true\nMachineMetadata=role=worker"))
    names = machines_by_name(cluster)
    running = cluster.wait_running(["web@1.service", "web@2.service", "web@3.service",
                                    "side@1.service"])
    webs = {running[f"web@{i}.service"][0] for i in (1, 2, 3)}
    assert len(webs) == 3, "Conflicts=web@* puts each instance on its own machine"
    assert running["side@1.service"] == running["web@1.service"], "MachineOf co-locates"
    mon = wait_for(lambda: (lambda m: m if len(m) == 2 else None)(
        cluster.running().get("mon.service", [])), 20, message="global unit on 2 workers")
    assert sorted(names[m] for m in mon) == ["n1", "n2"]
    states = wait_for(lambda: (lambda s: s if len(s) >= 6 else None)(
        [s for s in cluster.registry.states() if s.status.active == "active"]), 10,
        message="states published")
    assert {s.status.sub for s in states} == {"running"}


def test_kill_9_moves_units_within_ttl_and_never_runs_twice(cluster):
    for name in ("n1", "n2", "n3"):
        cluster.start(name)
    run = cluster.run_dir
    units = [f"svc@{i}.service" for i in range(1, 7)]
    for unit in units:
        submit(cluster, unit, sleeper_unit(run))
    before = cluster.wait_running(units)
    names = machines_by_name(cluster)
    victim_id = before[units[0]][0]
    victim = names[victim_id]
    moved = [u for u in units if before[u] == [victim_id]]
    with DoubleRunWatch(cluster) as watch:
        killed_at = time.monotonic()
        cluster.kill(victim, signal.SIGKILL)
        # The dead fleetd's units die with it (they would otherwise run twice).
        wait_for(lambda: all(victim_id not in cluster.running().get(u, []) for u in moved), 5,
                 message="units of the killed fleetd gone")
        after = cluster.wait_running(units, timeout=cluster.ttl + 15)
        failover_s = time.monotonic() - killed_at
    assert all(after[u] != [victim_id] for u in moved)
    assert watch.doubles == [], f"units ran twice: {watch.doubles[:3]}"
    # TTL + reconcile interval + start latency, with slack for a loaded CI machine.
    assert failover_s < cluster.ttl + 1 + 8, f"failover took {failover_s:.1f}s"


def test_etcd_paused_10s_restarts_nothing(cluster, etcd_server):
    for name in ("n1", "n2"):
        cluster.start(name)
    run = cluster.run_dir
    units = [f"steady@{i}.service" for i in range(1, 5)]
    for unit in units:
        submit(cluster, unit, sleeper_unit(run))
    cluster.wait_running(units)
    pids = cluster.pids()
    etcd_server.pause()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # watch the whole outage, not just its end
            assert cluster.pids() == pids, "a unit was stopped or restarted during the outage"
            time.sleep(0.2)
    finally:
        etcd_server.resume()
    # After etcd returns it expires every lease at once: agents join again, and the engine
    # (which judges by heartbeats it sees, not by lease expiry) moves nothing.
    watch_until = time.monotonic() + 3 * cluster.ttl + 2
    while time.monotonic() < watch_until:
        assert cluster.pids() == pids, "a unit was restarted after etcd came back"
        time.sleep(0.2)
    wait_for(lambda: len(cluster.registry.machines()[1]) == 2, 10, message="machines back")
    assert all(f.process.poll() is None for f in cluster.fleetds.values())


def test_sigterm_stops_units_and_removes_the_machine(cluster):
    cluster.start("n1")
    submit(cluster, "solo.service", sleeper_unit(cluster.run_dir))
    running = cluster.wait_running(["solo.service"])
    machine = running["solo.service"][0]
    cluster.kill("n1", signal.SIGTERM)
    assert cluster.fleetds["n1"].process.returncode == 0
    assert "solo.service" not in cluster.running()
    assert machine not in cluster.registry.machines()[1]


def test_frozen_fleetd_returns_and_stops_its_moved_units_first(cluster):
    """A machine cut off from etcd keeps its units (fail static); when it comes back after
    they were moved, it stops its stale copies before it registers again."""
    for name in ("n1", "n2"):
        cluster.start(name)
    run = cluster.run_dir
    units = [f"part@{i}.service" for i in range(1, 5)]
    for unit in units:
        submit(cluster, unit, sleeper_unit(run))
    before = cluster.wait_running(units)
    names = machines_by_name(cluster)
    frozen_id = before[units[0]][0]
    frozen = cluster.fleetds[names[frozen_id]]
    stale = [u for u in units if before[u] == [frozen_id]]
    frozen.process.send_signal(signal.SIGSTOP)
    try:
        # Its units keep running where they are while a healthy machine starts them too.
        wait_for(lambda: all(len(cluster.running().get(u, [])) == 2 for u in stale),
                 cluster.ttl + 15, message="moved units started elsewhere")
    finally:
        frozen.process.send_signal(signal.SIGCONT)
    after = wait_for(lambda: (lambda r: r if all(len(r.get(u, [])) == 1 for u in units)
                              else None)(cluster.running()), 15,
                     message="stale copies stopped")
    assert all(after[u] != [frozen_id] for u in stale)
    wait_for(lambda: frozen_id in cluster.registry.machines()[1], 10, message="rejoined")
    log = frozen.log()
    assert log.index("no longer scheduled here") < log.rindex("registered")


def test_a_frozen_engine_leader_judges_nobody_when_it_thaws(cluster):
    """SIGSTOP the engine leader's fleetd for two TTLs. A standby judges its machine dead,
    revokes its leases and moves its units. When the frozen one runs again, its clock has
    not moved (its own heartbeats stopped with it): it declares nobody dead and moves
    nothing, its stale copies stop, and no unit on the other machines ever restarts."""
    for name in ("n1", "n2", "n3"):
        cluster.start(name)
    run = cluster.run_dir
    units = [f"calm@{i}.service" for i in range(1, 7)]
    for unit in units:
        submit(cluster, unit, sleeper_unit(run))
    before = cluster.wait_running(units)
    names = machines_by_name(cluster)
    leader = wait_for(lambda: (lambda kv: kv.value.decode() if kv else None)(
        cluster.etcd.get(cluster.registry.keys.leader())), 10, message="an engine leader")
    frozen = cluster.fleetds[names[leader]]
    pids = cluster.pids()
    others = {u: m for u, (m,) in before.items() if u in units and m != leader}
    frozen.process.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: all(any(m != leader for m in cluster.running().get(u, []))
                             for u in units), cluster.ttl + 15,
                 message="the frozen leader's units started elsewhere")
        thaw_after = time.monotonic() + cluster.ttl
        wait_for(lambda: time.monotonic() >= thaw_after, cluster.ttl + 5, interval=0.1,
                 message="two TTLs frozen")
    finally:
        thawed_at_log = len(frozen.log())
        frozen.process.send_signal(signal.SIGCONT)
    wait_for(lambda: (lambda r: all(len(r.get(u, [])) == 1 for u in units))(cluster.running()),
             15, message="stale copies stopped")
    wait_for(lambda: leader in cluster.registry.machines()[1], 15, message="rejoined")
    watch_until = time.monotonic() + 2 * cluster.ttl  # room for a wrong judgement to show
    while time.monotonic() < watch_until:
        now = cluster.pids()
        for unit, machine in others.items():
            key = f"{unit}@{machine}"
            assert now.get(key) == pids[key], f"{unit} on a healthy machine was restarted"
        time.sleep(0.2)
    after_thaw = frozen.log()[thawed_at_log:]
    assert "judged dead (" not in after_thaw, after_thaw  # a judgement, with its reason
    assert after_thaw.index("no longer scheduled here") < after_thaw.rindex("registered")
