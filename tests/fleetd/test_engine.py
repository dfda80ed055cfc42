"""The engine in-process against a real etcd: leadership, placement, cost when idle."""

from __future__ import annotations

import gc
import logging
import threading
import time
import uuid

import pytest

from fleetd.daemon import machine_id
from fleetd.engine import engine as engine_module
from fleetd.engine.engine import Engine
from fleetd.job import JobState
from fleetd.machine import Machine
from fleetd.registry.etcd import Etcd
from fleetd.registry.registry import Registry
from fleetd.unit.unitfile import parse_unit_file
from tests.support.etcd import wait_for

UNIT = "[Service]\nExecStart=/bin/sleep 100\n"


@pytest.fixture
def registry(etcd_server):
    etcd = Etcd([etcd_server.url], timeout=3)
    yield Registry(etcd, f"/engine-{uuid.uuid4().hex[:8]}/")
    etcd.close()


@pytest.fixture
def engine_registry(etcd_server, registry):
    """The same keyspace through the engine's own client, so its requests count alone."""
    etcd = Etcd([etcd_server.url], timeout=3)
    yield Registry(etcd, registry.keys.prefix)
    etcd.close()


class Running:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.stop = threading.Event()
        self.thread = threading.Thread(target=engine.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def add_machines(registry: Registry, count: int) -> int:
    lease = registry.etcd.grant(60)
    for i in range(count):
        registry.register_machine(Machine(f"{i:032x}", "127.0.0.1"), lease)
    return lease


def running_with_distinct_jobs(registry: Registry, engine: Engine, count: int) -> Running:
    """Jobs u0… of distinct contents, launched, and the engine running until all are placed."""
    for i in range(count):
        registry.create_job(f"u{i}.service", parse_unit_file(UNIT + f"X={i}\n"),
                            JobState.LAUNCHED)
    run = Running(engine)
    try:
        wait_for(lambda: len(registry.assignments()[1]) == count, 15, message="placed")
    except BaseException:
        run.close()
        raise
    return run


def engine_over(registry: Registry, engine_registry: Registry, machines: int, units: int,
                state: JobState) -> tuple[Engine, Running]:
    """A running engine over `machines` machines and `units` jobs u0… in `state`."""
    add_machines(registry, machines)
    for i in range(units):
        registry.create_job(f"u{i}.service", parse_unit_file(UNIT), state)
    engine = Engine(engine_registry, "e" * 32, ttl=3, reconcile_interval=0.5)
    return engine, Running(engine)


def test_one_leader_and_takeover_after_resign(registry):
    first, second = Engine(registry, "a" * 32, ttl=3), Engine(registry, "b" * 32, ttl=3)
    runs = [Running(first), Running(second)]
    try:
        wait_for(lambda: first.leadership.is_leader or second.leadership.is_leader, 10,
                 message="a leader")
        leader, other = (first, second) if first.leadership.is_leader else (second, first)
        assert not other.leadership.is_leader
        runs[[first, second].index(leader)].close()  # resigns: revokes its lease
        wait_for(lambda: other.leadership.is_leader, 3 + 2, message="takeover within TTL")
    finally:
        for run in runs:
            run.close()


def test_places_units_and_costs_o1_requests_when_idle_and_per_change(registry,
                                                                     engine_registry):
    engine, run = engine_over(registry, engine_registry, 20, 200, JobState.LAUNCHED)
    try:
        wait_for(lambda: len(registry.assignments()[1]) == 200, 15, message="200 placed")
        loads = {}
        for a in registry.assignments()[1]:
            loads[a.machine] = loads.get(a.machine, 0) + 1
        assert sorted(loads.values()) == [10] * 20, "least-loaded spreads evenly"

        etcd = engine_registry.etcd
        wait_for(lambda: engine.idle_checks >= 1, 10, message="a settled view")
        checks, passes, before = engine.idle_checks, engine.passes, etcd.requests
        wait_for(lambda: engine.idle_checks >= checks + 4, 10, message="idle checks")
        idle = etcd.requests - before
        assert idle <= 4, f"{idle} etcd requests over 4 idle checks: must not re-read"
        # Nothing changed: the periodic check runs no scheduler pass (the same view would
        # plan the same nothing; at 1,000 units a pass is most of an idle engine's CPU).
        assert engine.passes == passes

        before, checks = etcd.requests, engine.idle_checks
        registry.create_job("late.service", parse_unit_file(UNIT + "X=1\n"), JobState.LAUNCHED)
        wait_for(lambda: any(a.name == "late.service" for a in registry.assignments()[1]), 10,
                 message="placed")
        assert engine.passes > passes  # a change runs a pass at once
        # One read of the new unit body, one batch for the placement, lease renewals:
        # O(change), not O(cluster) (200 jobs, 20 machines).
        renewals = engine.passes - passes + engine.idle_checks - checks
        assert etcd.requests - before <= 2 + renewals + 2
    finally:
        run.close()


def test_loaded_and_launched_refresh_assignments_without_a_scheduling_pass(registry,
                                                                          engine_registry):
    """The plan only asks whether a job is inactive: a start or stop of many units refreshes
    what their agents see without planning the cluster again (nor once more for the echo of
    those writes); going inactive, or new content, plans."""
    engine, run = engine_over(registry, engine_registry, 3, 30, JobState.LOADED)
    try:
        wait_for(lambda: len(registry.assignments()[1]) == 30 and engine.idle_checks >= 1, 15,
                 message="30 placed, settled")
        passes = engine.passes
        for i in range(30):
            registry.set_desired(f"u{i}.service", JobState.LAUNCHED)
        wait_for(lambda: {a.desired for a in registry.assignments()[1]} == {JobState.LAUNCHED},
                 10, message="assignments refreshed")
        checks = engine.idle_checks
        wait_for(lambda: engine.idle_checks >= checks + 2, 10, message="idle again")
        assert engine.passes == passes and engine.refreshes >= 1

        registry.set_desired("u0.service", JobState.INACTIVE)
        wait_for(lambda: "u0.service" not in {a.name for a in registry.assignments()[1]}, 10,
                 message="unscheduled")
        assert engine.passes > passes
    finally:
        run.close()


def test_pending_reason_for_unsatisfiable_metadata(registry):
    add_machines(registry, 2)
    registry.create_job("picky.service",
                        parse_unit_file(UNIT + "[X-Fleet]\nMachineMetadata=region=mars\n"),
                        JobState.LAUNCHED)
    engine = Engine(registry, "p" * 32, ttl=3, reconcile_interval=0.5)
    run = Running(engine)
    try:
        wait_for(lambda: engine.cache is not None and "picky.service" in engine.cache.pending,
                 10, message="pending")
        assert "region=mars" in engine.cache.pending["picky.service"]
        assert registry.assignments()[1] == []
    finally:
        run.close()


def test_machine_id_is_made_once_and_kept(tmp_path):
    first = machine_id(tmp_path)
    assert len(first) == 32 and int(first, 16) >= 0
    assert machine_id(tmp_path) == first
    (tmp_path / "machine-id").write_text("garbage\n")
    replaced = machine_id(tmp_path)
    assert replaced != first and machine_id(tmp_path) == replaced


@pytest.mark.parametrize(("system", "uses_it"), [
    ("0123456789abcdef0123456789abcdef\n", True),
    ("", False),                        # empty (an image before its first boot)
    ("uninitialized\n", False),
    (None, False),                      # no such file
])
def test_under_its_machines_systemd_the_id_is_systemds(tmp_path, system, uses_it):
    """A unit's %m (what a sidekick looks its machine up by) must name the fleet machine."""
    path = tmp_path / "etc-machine-id"
    if system is not None:
        path.write_text(system)
    got = machine_id(tmp_path / "state", path)
    assert (got == "0123456789abcdef0123456789abcdef") is uses_it
    assert len(got) == 32 and machine_id(tmp_path / "state", path) == got


def test_leadership_survives_a_pass_longer_than_its_ttl(registry):
    """The lease is renewed beside the engine's loop: a long cache load or pass (seen at
    50,000 units) must not lose the leadership it runs under."""
    from fleetd.engine.lease import Leadership

    key = registry.keys.leader()
    leader = Leadership(registry.etcd, key, "long-pass", ttl=2)
    rival = Leadership(registry.etcd, key, "rival", ttl=2)
    try:
        assert leader.ensure()
        # The loop is busy for 2 TTLs without calling ensure(); meanwhile a rival keeps
        # trying to take over (it would succeed the moment the lease lapsed).
        taken = threading.Event()
        done = threading.Event()

        def rival_tries() -> None:
            while not done.is_set():
                if rival.ensure():
                    taken.set()
                    return
                done.wait(0.1)
        thread = threading.Thread(target=rival_tries, daemon=True)
        thread.start()
        done.wait(4.5)  # the "long pass": an interval, not a condition
        done.set()
        thread.join(5)
        assert not taken.is_set()
        assert leader.ensure()
        assert registry.etcd.get(key).value.decode() == "long-pass"
    finally:
        leader.resign()
        rival.resign()
    assert registry.etcd.get(key) is None


class Beating:
    """Writes a machine's heartbeats every period on a thread, as its agent's renewer does
    (registered with `join`, under a lease of its own)."""

    def __init__(self, registry: Registry, machine: str, ttl: int = 3) -> None:
        from fleetd.registry.registry import Beat, heartbeat_period

        self.registry = registry
        self.machine = machine
        self.lease = registry.etcd.grant(ttl)
        assert registry.join(Machine(machine, "127.0.0.1"), self.lease,
                             registry.fence_revision(machine, registry.etcd.revision()),
                             Beat(self.lease, 0, time.monotonic()))
        self.period = heartbeat_period(ttl)
        self.ttl = ttl
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from fleetd.registry.etcd import LeaseGone, RegistryUnavailable
        from fleetd.registry.registry import Beat

        seq = 0
        while not self.stop.wait(self.period):
            seq += 1
            try:
                if seq % 3 == 0:
                    self.registry.etcd.keepalive(self.lease)
                self.registry.beat(self.machine, Beat(self.lease, seq, time.monotonic()))
            except (LeaseGone, RegistryUnavailable):
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def test_a_silent_machine_is_fenced_before_its_units_move(registry, engine_registry):
    """The leader judges a machine dead after a TTL without its heartbeats (not when its
    lease lapses), revokes its lease, and moves its units in a transaction that writes its
    fence key."""
    beats = {m: Beating(registry, m) for m in ("e" * 32, "a" * 32, "b" * 32)}
    engine = Engine(engine_registry, "e" * 32, ttl=3, reconcile_interval=0.5)
    run = None
    try:
        run = running_with_distinct_jobs(registry, engine, 4)
        on_b = [a.name for a in registry.assignments()[1] if a.machine == "b" * 32]
        assert on_b, "least-loaded placement leaves b with units"
        lease_b = beats["b" * 32].lease
        beats["b" * 32].close()  # b falls silent; its lease would live on for its TTL
        silent_at = time.monotonic()
        wait_for(lambda: not registry.assignments(machine="b" * 32)[1], 15,
                 message="b's units moved")
        moved_after = time.monotonic() - silent_at
        assert registry.etcd.keepalive(lease_b) <= 0, "b's lease was revoked (fenced)"
        assert registry.fence_revision("b" * 32, registry.etcd.revision()) != 0
        assert all(a.machine != "b" * 32 for a in registry.assignments()[1])
        assert 3 * 0.9 <= moved_after, f"moved after {moved_after:.2f}s: before a TTL"
    finally:
        if run is not None:
            run.close()
        for beating in beats.values():
            beating.close()


def test_without_its_own_heartbeats_the_engine_judges_nobody(registry, engine_registry):
    """An engine whose own machine's heartbeats stop arriving (its agent stuck, its process
    starved, etcd away) has no clock: a silent machine keeps its units, however long."""
    beats = {m: Beating(registry, m) for m in ("e" * 32, "b" * 32)}
    engine = Engine(engine_registry, "e" * 32, ttl=3, reconcile_interval=0.5)
    run = None
    try:
        registry.create_job("only.service", parse_unit_file(UNIT + "[X-Fleet]\n"
                                                           f"MachineID={'b' * 32}\n"),
                            JobState.LAUNCHED)
        run = Running(engine)
        wait_for(lambda: registry.assignments(machine="b" * 32)[1], 15, message="placed on b")
        beats["e" * 32].close()
        beats["b" * 32].close()
        until = time.monotonic() + 3 * 3
        while time.monotonic() < until:  # three TTLs of silence from everyone
            assert registry.assignments(machine="b" * 32)[1], "b judged dead without a clock"
            assert registry.fence_revision("b" * 32, registry.etcd.revision()) == 0
            time.sleep(0.2)
    finally:
        if run is not None:
            run.close()
        for beating in beats.values():
            beating.close()


def test_a_heartbeat_watch_gone_silent_is_replaced(registry, engine_registry):
    """If the heartbeat stream goes quiet while this machine keeps writing heartbeats (a
    watch lost inside the client), the engine watches again after a TTL without its own
    heartbeats, from where it was, and judges again."""
    beats = {m: Beating(registry, m) for m in ("e" * 32, "a" * 32, "b" * 32)}
    engine = Engine(engine_registry, "e" * 32, ttl=3, reconcile_interval=0.5)
    run = None
    try:
        registry.create_job("pinned.service", parse_unit_file(UNIT + "[X-Fleet]\n"
                                                             "Conflicts=nothing\n"),
                            JobState.LAUNCHED)
        run = Running(engine)
        wait_for(lambda: registry.assignments()[1], 15, message="placed")
        wait_for(lambda: engine.liveness.ticks > 0, 10, message="own heartbeats seen")
        silenced = engine._cancel_beats
        silenced()  # the stream goes quiet; the engine still thinks it watches
        victim = registry.assignments()[1][0].machine
        if victim != "e" * 32:
            beats[victim].close()
            wait_for(lambda: all(a.machine != victim for a in registry.assignments()[1]),
                     4 * 3, message=f"{victim[:8]}'s unit moved after the re-watch")
        assert engine._cancel_beats is not silenced, "the heartbeat watch was replaced"
    finally:
        if run is not None:
            run.close()
        for beating in beats.values():
            beating.close()


def test_idle_engines_turn_only_for_heartbeats_and_a_standby_asks_etcd_nothing(
        registry, etcd_server):
    """At rest, the leader's loop turns once per heartbeat event or periodic check (not on a
    timer racing its lease renewals), its only requests are those renewals, and a standby
    watches the leader key instead of asking etcd who leads at every heartbeat."""
    ids = ("e" * 32, "f" * 32)
    beats = {m: Beating(registry, m) for m in (*ids, "a" * 32)}
    clients = [Etcd([etcd_server.url], timeout=3) for _ in ids]
    engines = [Engine(Registry(c, registry.keys.prefix), m, ttl=3, reconcile_interval=0.5)
               for c, m in zip(clients, ids, strict=True)]
    runs = []
    try:
        for i in range(20):
            registry.create_job(f"u{i}.service", parse_unit_file(UNIT + f"X={i}\n"),
                                JobState.LAUNCHED)
        runs = [Running(e) for e in engines]
        wait_for(lambda: len(registry.assignments()[1]) == 20, 15, message="placed")
        leader = wait_for(lambda: next((e for e in engines if e.leadership.is_leader), None),
                          10, message="a leader")
        standby = engines[1 - engines.index(leader)]
        wait_for(lambda: leader.idle_checks >= 2 and standby._cancel_leader is not None, 10,
                 message="a settled leader, a standby watching it")
        def counts(engine: Engine) -> tuple[int, int, int, int]:
            return (engine.registry.etcd.requests, engine.turns, engine.beats_seen,
                    engine.idle_checks)

        before = {id(e): counts(e) for e in engines}
        started = time.monotonic()
        ticks = standby.liveness.ticks
        wait_for(lambda: standby.liveness.ticks >= ticks + 10, 15,
                 message="ten heartbeats of the standby's own machine")
        elapsed = time.monotonic() - started
        requests, turns, seen, _ = (now - then for now, then in
                                    zip(counts(standby), before[id(standby)], strict=True))
        assert requests == 0, f"the standby sent {requests} requests while nothing changed"
        assert turns <= seen + 2, f"standby: {turns} turns for {seen} heartbeat events"
        requests, turns, seen, checks = (now - then for now, then in
                                         zip(counts(leader), before[id(leader)], strict=True))
        renewals = elapsed / (3 / 3) + 1
        assert requests <= renewals, f"the leader sent {requests} requests in {elapsed:.1f}s"
        assert turns <= seen + checks + 2, (
            f"leader: {turns} turns for {seen} heartbeat events and {checks} periodic checks")
    finally:
        for run in runs:
            run.close()
        for beating in beats.values():
            beating.close()
        for client in clients:
            client.close()


def test_a_changed_desired_state_reaches_the_assignment_of_a_unit_kept_in_place(
        registry, engine_registry):
    """A unit whose desired state changes keeps its machine and its assignment says the new
    state; passes look only at units changed since the last one, so this is what they must
    not miss."""
    add_machines(registry, 3)
    for i in range(30):
        registry.create_job(f"k{i}.service", parse_unit_file(UNIT + f"X={i}\n"),
                            JobState.LAUNCHED)
    engine = Engine(engine_registry, "e" * 32, ttl=3, reconcile_interval=0.5)
    run = Running(engine)
    try:
        wait_for(lambda: len(registry.assignments()[1]) == 30, 15, message="placed")
        where = {a.name: a.machine for a in registry.assignments()[1]}
        registry.set_desired("k7.service", JobState.LOADED)
        wait_for(lambda: {a.name: a.desired for a in registry.assignments()[1]}["k7.service"]
                 == JobState.LOADED, 10, message="k7's assignment says loaded")
        registry.set_desired("k7.service", JobState.LAUNCHED)
        wait_for(lambda: {a.name: a.desired for a in registry.assignments()[1]}["k7.service"]
                 == JobState.LAUNCHED, 10, message="k7's assignment says launched again")
        assert {a.name: a.machine for a in registry.assignments()[1]} == where
        assert {a.name: a.desired for a in registry.assignments()[1]} == dict.fromkeys(
            where, JobState.LAUNCHED)
    finally:
        run.close()


def test_a_standby_watches_the_leader_key_even_when_it_was_written_before_a_compaction(
        registry, etcd_server):
    """The leader key lives for hours under one revision, and etcd compacts its history:
    the standby watches from the revision it read the key at, not from the key's own."""
    leader_client, standby_client = (Etcd([etcd_server.url], timeout=3) for _ in range(2))
    leader = Engine(Registry(leader_client, registry.keys.prefix), "e" * 32, ttl=3)
    standby = Engine(Registry(standby_client, registry.keys.prefix), "f" * 32, ttl=3)
    runs = []
    try:
        runs.append(Running(leader))
        wait_for(lambda: leader.leadership.is_leader, 10, message="a leader")
        for i in range(5):  # history after the leader key, then compacted away
            registry.etcd.put(f"{registry.keys.prefix}filler/{i}", "x")
        registry.etcd.client.compact(registry.etcd.revision())
        runs.append(Running(standby))
        wait_for(lambda: standby._cancel_leader is not None, 10, message="a watched leader")
        before = standby_client.requests
        until = time.monotonic() + 3  # a TTL: the old way asked several times a second
        while time.monotonic() < until:
            assert standby_client.requests == before, "the standby asks who leads"
            assert standby._cancel_leader is not None, "the standby's watch ended"
            time.sleep(0.1)
        runs[0].close()  # resigns: the standby hears it through its watch and takes over
        wait_for(lambda: standby.leadership.is_leader, 3 + 2, message="takeover")
        assert not standby.unreachable
    finally:
        for run in runs:
            run.close()
        leader_client.close()
        standby_client.close()


def _loaded_engine(registry: Registry, engine_registry: Registry, machines: int,
                   units: int) -> Engine:
    """A leading engine with its cache loaded over `machines` and `units` jobs, its loop not
    running (the test runs passes itself)."""
    add_machines(registry, machines)
    for i in range(units):
        registry.create_job(f"u{i:03d}.service", parse_unit_file(UNIT), JobState.LAUNCHED)
    engine = Engine(engine_registry, "e" * 32, ttl=10, reconcile_interval=3600)
    assert engine.leadership.ensure()
    engine._load()
    return engine


def test_a_pass_writes_its_placements_while_it_is_still_deciding(registry, engine_registry,
                                                                monkeypatch):
    """A full batch of placements leaves for etcd before the scheduler has decided the
    rest; every placement is committed when the pass ends."""
    engine = _loaded_engine(registry, engine_registry, 4, 300)
    etcd = engine_registry.etcd
    sent_when_decided: list[int] = []

    class Watched(engine_module.Planning):
        def __iter__(self):
            for decision in super().__iter__():
                sent_when_decided.append(etcd.requests)
                yield decision

    monkeypatch.setattr(engine_module, "Planning", Watched)
    try:
        before = etcd.requests
        engine.reconcile()
        assert len(sent_when_decided) == 300
        # The first batch (128) was on its way before the 200th placement was decided.
        assert sent_when_decided[199] > sent_when_decided[0]
        assert sent_when_decided[0] - before <= 1  # (a lease renewal, at most)
        assert len(registry.assignments()[1]) == 300
    finally:
        engine.leadership.resign()


def test_a_large_pass_logs_a_few_decisions_and_counts_the_rest(registry, engine_registry,
                                                              monkeypatch, caplog):
    monkeypatch.setattr(engine_module, "LOGGED_EACH", 5)
    engine = _loaded_engine(registry, engine_registry, 3, 12)
    try:
        with caplog.at_level(logging.INFO, logger="fleetd.engine"):
            engine.reconcile()
        lines = [r.getMessage() for r in caplog.records if r.name == "fleetd.engine"]
        assert len([m for m in lines if m.startswith("schedule u")]) == 5
        assert "schedule 7 more unit(s) in this pass (the first 5 logged above)" in lines
        assert len(registry.assignments()[1]) == 12

        caplog.clear()
        registry.create_job("late.service", parse_unit_file(UNIT), JobState.LAUNCHED)
        for i in range(12):
            registry.set_desired(f"u{i:03d}.service", JobState.INACTIVE)

        def seen_all() -> bool:
            engine._drain(0.1)
            jobs = engine.cache.jobs
            return "late.service" in jobs and all(
                jobs[f"u{i:03d}.service"].desired is JobState.INACTIVE for i in range(12))
        wait_for(seen_all, 10, message="the changes seen")
        with caplog.at_level(logging.DEBUG, logger="fleetd.engine"):
            engine.reconcile()
        lines = [r.getMessage() for r in caplog.records if r.name == "fleetd.engine"]
        assert len([m for m in lines if m.startswith("unschedule u")]) == 12  # debug: all
        assert "unschedule 7 more unit(s) in this pass (the first 5 logged above)" in lines
        assert any(m.startswith("schedule late.service to ") for m in lines)
    finally:
        engine.leadership.resign()


def test_no_garbage_collection_runs_during_a_pass(registry, engine_registry):
    """A pass makes many objects that live on; collections they would set off walk the
    whole heap. They wait until the pass is over."""
    engine = _loaded_engine(registry, engine_registry, 3, 200)
    collections: list[str] = []
    in_pass = threading.Event()

    def seen(phase: str, info: dict) -> None:
        if phase == "start" and in_pass.is_set():
            collections.append(phase)

    real_place = engine._place

    def place(planning, commit):
        in_pass.set()
        try:
            real_place(planning, commit)
        finally:
            in_pass.clear()

    engine._place = place
    threshold = gc.get_threshold()
    gc.set_threshold(10)  # a collection every 10 allocations, were it enabled
    gc.callbacks.append(seen)
    try:
        engine.reconcile()
        assert gc.isenabled()
    finally:
        gc.callbacks.remove(seen)
        gc.set_threshold(*threshold)
        engine.leadership.resign()
    assert len(registry.assignments()[1]) == 200
    assert collections == []


def _cache_agrees(engine: Engine, registry: Registry) -> bool:
    """The engine's cache of assignments is what etcd holds (read from the test's thread
    while the engine's changes it: a torn read only makes wait_for look again)."""
    cache = engine.cache
    return cache is not None and dict(cache.assignments) == {
        a.name: a.machine for a in registry.assignments()[1]}


def test_the_leader_keeps_its_assignments_as_it_writes_them_and_gets_no_echo(
        registry, engine_registry):
    """Only the leader writes `assign/`, each write guarded by its token: its cache takes
    each assignment as it writes it, and no watch brings the 300 writes back to it (at
    10,000 units, decoding and applying that echo cost a third of the pass)."""
    engine, run = engine_over(registry, engine_registry, 3, 300, JobState.LAUNCHED)
    try:
        wait_for(lambda: len(registry.assignments()[1]) == 300 and engine.idle_checks >= 1,
                 20, message="300 placed, the engine settled")
        assert engine.cache_events == 0, "events of its own writes reached the cache"
        assert _cache_agrees(engine, registry)
        checks = engine.idle_checks
        registry.create_job("late.service", parse_unit_file(UNIT), JobState.LAUNCHED)
        wait_for(lambda: engine.idle_checks > checks + 1 and any(
            a.name == "late.service" for a in registry.assignments()[1]), 15,
                 message="late.service placed, the engine settled again")
        assert engine.cache_events == 1  # the new job; not its assignment
        assert _cache_agrees(engine, registry)
    finally:
        run.close()


def test_a_refused_move_is_not_believed_and_does_not_repeat(registry, engine_registry,
                                                            caplog):
    """A machine judged dead and fenced registers again before its units move: the move
    is refused (its heartbeat key is back). The engine must not go on believing the writes
    it had planned, nor plan the same refused move over and over: it reloads, takes in the
    heartbeat that arrived meanwhile, leaves the units where they are, and its cache says
    what etcd says."""
    e, b = "e" * 32, "b" * 32
    beats = {m: Beating(registry, m) for m in (e, b)}
    engine = Engine(engine_registry, e, ttl=3, reconcile_interval=0.5)
    back: list[Beating] = []
    fence = engine_registry.etcd.fence

    def fence_then_b_registers_again(lease: int, deadline_s: float | None = None) -> None:
        fence(lease, deadline_s)
        if lease == beats[b].lease and not back:  # (as b's agent would, told by its renewal)
            back.append(Beating(registry, b))

    engine_registry.etcd.fence = fence_then_b_registers_again
    run = None
    try:
        run = running_with_distinct_jobs(registry, engine, 6)
        on_b = sorted(a.name for a in registry.assignments()[1] if a.machine == b)
        assert on_b, "least-loaded placement leaves b with units"
        with caplog.at_level(logging.INFO, logger="fleetd.engine"):
            beats[b].close()
            wait_for(lambda: back, 15, message="b judged dead, fenced, registered again")
            checks = engine.idle_checks
            wait_for(lambda: engine.idle_checks > checks + 1 and _cache_agrees(engine,
                                                                               registry),
                     15, message="the engine settled with the cache etcd has")
        refused = [r.getMessage() for r in caplog.records
                   if r.name == "fleetd.engine" and "refused" in r.getMessage()]
        assert refused, "the move was refused"
        assert sorted(a.name for a in registry.assignments()[1] if a.machine == b) == on_b
        assert len(registry.assignments()[1]) == 6
    finally:
        if run is not None:
            run.close()
        for beating in (*beats.values(), *back):
            beating.close()


def test_a_leader_deposed_and_leading_again_sees_what_another_leader_wrote(
        registry, engine_registry):
    """While deposed, the engine's writes fail its token's guard, and another leader moves
    and removes assignments. Leading again, the engine plans from what etcd holds, not from
    the cache of its last term."""
    from fleetd.engine.lease import Leadership

    engine, run = engine_over(registry, engine_registry, 2, 4, JobState.LAUNCHED)
    etcd, key, ops = registry.etcd, registry.keys.leader(), registry.etcd.ops
    rival = Leadership(etcd, key, "rival", ttl=10)
    try:
        wait_for(lambda: len(registry.assignments()[1]) == 4 and engine.idle_checks >= 1, 15,
                 message="placed, the engine settled")
        old_token = engine.leadership.token

        def rival_took_over() -> bool:  # the engine's lease revoked, as a standby deposes
            lease = engine.leadership.lease
            if lease is not None:
                etcd.revoke(lease)
            return rival.ensure()
        wait_for(rival_took_over, 15, message="the rival leads")
        first, second = sorted(registry.assignments()[1], key=lambda a: a.name)[:2]
        elsewhere = next(m for m in registry.machines()[1] if m != first.machine)
        # A write under the deposed engine's token cannot land.
        assert registry.commit_batches([ops.create(key) == old_token], [
            ops.delete(registry.keys.assignment(first.machine, first.name))]) == 1
        value = etcd.get(registry.keys.assignment(first.machine, first.name)).value
        assert registry.commit_batches(rival.guard(), [
            ops.delete(registry.keys.assignment(first.machine, first.name)),
            ops.put(registry.keys.assignment(elsewhere, first.name), value),
            ops.delete(registry.keys.assignment(second.machine, second.name))]) == 0
        wait_for(lambda: engine.cache is None, 10, message="the engine dropped its cache")
        rival.resign()
        wait_for(lambda: engine.leadership.is_leader and len(registry.assignments()[1]) == 4
                 and _cache_agrees(engine, registry), 15,
                 message="the engine leads again, every unit assigned")
        where = {a.name: a.machine for a in registry.assignments()[1]}
        assert where[first.name] == elsewhere  # kept where the other leader moved it
    finally:
        rival.resign()
        run.close()


def test_an_engine_whose_loop_fails_gives_up_its_cache_and_its_leadership(
        registry, engine_registry):
    """An unexpected error ends the loop: the leadership goes with it (a standby takes
    over; the lease's renewer would otherwise keep a leader that plans nothing), and so
    does a cache that may believe writes etcd never took."""
    add_machines(registry, 2)
    registry.create_job("u0.service", parse_unit_file(UNIT), JobState.LAUNCHED)
    engine = Engine(engine_registry, "e" * 32, ttl=3, reconcile_interval=0.5)
    failures: list[BaseException] = []

    def fail() -> None:
        raise RuntimeError("a bug in a pass")

    def run_loop() -> None:
        try:
            engine.run(threading.Event())
        except RuntimeError as err:
            failures.append(err)

    engine.reconcile = fail
    thread = threading.Thread(target=run_loop, daemon=True)
    thread.start()
    thread.join(15)
    assert not thread.is_alive() and failures
    assert engine.cache is None
    assert not engine.leadership.is_leader
    assert registry.etcd.get(registry.keys.leader()) is None
