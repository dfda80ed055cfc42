"""fleetd's registry: the cluster's state in etcd, as domain operations.

Engine, agents and the API depend on this class only. Values are JSON (unit
bodies are text); every multi-key change is one transaction, and writes that
could race compare a revision first. The key layout is in `keys.py`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fleetd.job import Job, JobState
from fleetd.machine import Machine
from fleetd.registry.commit import COMMIT_IN_FLIGHT, MAX_TXN_OPS, BatchCommit
from fleetd.registry.etcd import KV, Etcd, prefix_end
from fleetd.registry.keys import DEFAULT_PREFIX, Keys, Kind
from fleetd.status import UnitStateRecord, UnitStatus
from fleetd.unit.unitfile import UnitFile, content_hash, parse_unit_file, serialize
from fleetd.unit.xfleet import FleetOptions, options_depend_on_name, parse_fleet_options

ASSIGNMENT_VALUES_KEPT = 4096  # encoded (hash, desired) assignment values remembered
OPTIONS_CACHED = 100_000  # parsed [X-Fleet] options kept (by content hash, and unit name)
# Decoded unit-state values remembered, by their bytes: the instances of a template in one
# state report byte-identical values, so a 1,000-unit listing read from etcd decodes a few
# values instead of 1,000.
STATE_VALUES_KEPT = 16384
BEATS_PER_TTL = 10  # heartbeats an agent writes per agent TTL


def heartbeat_period(ttl: float) -> float:
    """Seconds between an agent's heartbeats: a live machine's last heartbeat is never more
    than a tenth of the TTL old, so judging it dead after a TTL of silence leaves a wide
    margin, and failover waits at most a period more than the TTL."""
    return max(0.1, ttl / BEATS_PER_TTL)


class Conflict(Exception):
    """The registry changed under us (a compare failed); the message says what to do."""


class NotFound(Exception):
    pass


@dataclass(frozen=True)
class JobRecord:
    """A job as stored: what the engine and API read back."""

    job: Job
    revision: int  # mod revision of its key: the guard for compare-and-swap


@dataclass(frozen=True)
class Assignment:
    machine: str
    name: str
    hash: str
    desired: JobState


@dataclass(frozen=True)
class Beat:
    """One heartbeat of a machine, as written by its agent."""

    lease: int          # the machine lease it was written under
    seq: int = 0        # counts the agent's heartbeats under that lease
    sent: float = 0.0   # the writer's monotonic clock when it sent it (meaningful to itself)
    leaving: bool = False  # the machine stopped its units and leaves the cluster


def encode(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


_JSON = json.JSONDecoder()


def decode(raw: bytes) -> dict:
    # Our values are UTF-8 (etcd's and fleet's too): json.loads would first guess among
    # the UTF encodings, half the cost of decoding a small value.
    value = _JSON.decode(str(raw, "utf-8"))  # None: TypeError, as json.loads raised
    if not isinstance(value, dict):
        raise ValueError("registry value is not a JSON object")
    return value


@dataclass(frozen=True)
class JobWrite:
    """One unit's change in a guarded multi-unit write (`Registry.write_jobs`)."""

    name: str
    unit: UnitFile | None         # the content to store; None with `desired` None: destroy
    desired: JobState | None
    expect_revision: int = 0      # the job key's mod revision seen; 0: it must not exist
    was_global: bool = False      # where the job is now (when expect_revision != 0)


@dataclass(frozen=True)
class UnitsPage:
    """One page of units as the API lists them, read at one revision."""

    revision: int
    jobs: list[JobRecord]
    where: dict[str, str]                       # name → machine it is assigned to
    states: dict[str, list[UnitStateRecord]]    # name → what machines report for it
    more: bool                                  # more jobs follow the last of this page


class Registry:
    def __init__(self, etcd: Etcd, prefix: str = DEFAULT_PREFIX) -> None:
        self.etcd = etcd
        self.keys = Keys(prefix)
        self._units: dict[str, UnitFile] = {}  # by hash; content never changes for a hash
        self._assignment_values: dict[tuple[str, JobState], bytes] = {}
        # [X-Fleet] options by (hash, name): pure in both, and parsing them per job made a
        # listing's page cost more than its reads
        self._options: dict[tuple[str, str], FleetOptions] = {}

    # -- unit bodies ---------------------------------------------------------------------------
    def unit(self, content_hash_: str) -> UnitFile | None:
        cached = self._units.get(content_hash_)
        if cached is not None:
            return cached
        kv = self.etcd.get(self.keys.unit(content_hash_))
        if kv is None:
            return None
        unit = parse_unit_file(kv.value.decode())
        self._units[content_hash_] = unit
        return unit

    # -- jobs --------------------------------------------------------------------------------
    def job_from_kv(self, kv: KV) -> JobRecord | None:
        parsed = self.keys.parse(kv.key)
        if parsed is None or parsed.kind not in (Kind.JOB, Kind.GLOBAL):
            return None
        return self._job_record(parsed.name, kv)

    def _job_record(self, name: str, kv: KV) -> JobRecord | None:
        data = decode(kv.value)
        return self.job_record(name, data["hash"], JobState(data["desired"]), kv.mod_revision)

    def job_record(self, name: str, digest: str, desired: JobState,
                   revision: int) -> JobRecord | None:
        """A job from its stored fields (None: its unit body is gone)."""
        # Kept by content alone ("" for the name) where no name can change the options:
        # 1,000 instances of a template are one parse, not 1,000 (~20-50 µs each).
        options = self._options.get((digest, "")) or self._options.get((digest, name))
        if options is None:
            unit = self.unit(digest)
            if unit is None:
                return None
            options = parse_fleet_options(unit, name)
            if len(self._options) >= OPTIONS_CACHED:
                self._options.clear()
            self._options[(digest, name if options_depend_on_name(unit) else "")] = options
        return JobRecord(Job(name, digest, desired, options), revision)

    def get_job(self, name: str) -> JobRecord | None:
        """One round trip: its key under job/ and global/ read together."""
        _, found = self.etcd.ranges([(self.keys.job(name), None, 0),
                                     (self.keys.global_job(name), None, 0)])
        return next((self.job_from_kv(kvs[0]) for kvs, _ in found if kvs), None)

    def jobs(self) -> tuple[int, dict[str, JobRecord]]:
        revision, kvs = self.etcd.snapshot(self.keys.of(Kind.JOB))
        _, global_kvs = self.etcd.snapshot(self.keys.of(Kind.GLOBAL), revision)
        records = {}
        for kv in kvs + global_kvs:
            record = self.job_from_kv(kv)
            if record is not None:
                records[record.job.name] = record
        return revision, records

    def jobs_page(self, after: str | None, limit: int) -> tuple[int, list[JobRecord], bool]:
        """Up to `limit` jobs (fleet's and global ones) named after `after`, in name order,
        and whether more follow: one read of at most limit + 1 keys per job prefix,
        whatever the number of jobs."""
        revision, records, more, _ = self._jobs_page(after, limit)
        return revision, records, more

    def _jobs_page(self, after: str | None, limit: int, also: Sequence = ()
                   ) -> tuple[int, list[JobRecord], bool, list[tuple[list[KV], bool]]]:
        """jobs_page, with the reads `also` done in the same round trip."""
        specs: list = []
        for kind in (Kind.JOB, Kind.GLOBAL):
            prefix = self.keys.of(kind)
            start = prefix + after + "\0" if after is not None else prefix
            specs.append((start, prefix_end(prefix), limit + 1))
        revision, results = self.etcd.ranges(specs + list(also))
        named = []
        for kind, (kvs, _) in zip((Kind.JOB, Kind.GLOBAL), results[:2], strict=True):
            cut = len(self.keys.of(kind))
            named += [(kv.key[cut:], kv) for kv in kvs]
        named.sort(key=lambda pair: pair[0])
        records = [r for r in (self._job_record(name, kv) for name, kv in named[:limit])
                   if r is not None]
        return revision, records, len(named) > limit, results[2:]

    def units_page(self, after: str | None, limit: int) -> UnitsPage:
        """One page of the unit listing at one revision: the jobs after `after`, where each
        is assigned and what the machines report for it. Two round trips in the usual case
        (every machine holding assignments registered), whatever the number of units: the
        jobs with the registered machines, then their states and their assignments on
        those machines with a probe of each gap between them for any other machine."""
        machines = self.keys.of(Kind.MACHINE)
        revision, records, more, (registered, ) = self._jobs_page(
            after, limit, also=[(machines, prefix_end(machines), 0)])
        names = [record.job.name for record in records]
        if not names:
            return UnitsPage(revision, [], {}, {}, more)
        hints = [kv.key[len(machines):] for kv in registered[0]]
        starts = [self.keys.states_of(name) for name in names]
        state_span = (min(starts), max(prefix_end(s) for s in starts), 0)
        where, (state_kvs, ) = self._assigned(names, revision, hints, also=[state_span])
        wanted = set(names)
        states: dict[str, list[UnitStateRecord]] = {}
        for state in self.state_records(state_kvs[0]):
            if state.name in wanted:
                states.setdefault(state.name, []).append(state)
        return UnitsPage(revision, records, where, states, more)

    def unit_view(self, name: str) -> tuple[JobRecord | None, str, list[UnitStateRecord]]:
        """One unit as the API shows it: its job, the machine it is assigned to ("" if
        none) and its states. Two round trips while registered machines and those that
        report it hold its assignment (the usual case): its job, states and the registered
        machines, then its assignment key on each of those, with a probe of each gap
        between them for any other machine holding assignments."""
        machines = self.keys.of(Kind.MACHINE)
        revision, (job, global_job, state_kvs, registered) = self.etcd.ranges([
            (self.keys.job(name), None, 0), (self.keys.global_job(name), None, 0),
            (self.keys.states_of(name), prefix_end(self.keys.states_of(name)), 0),
            (machines, prefix_end(machines), 0)])
        kv = (job[0] or global_job[0] or [None])[0]
        record = self.job_from_kv(kv) if kv is not None else None
        if record is None:
            return None, "", []
        states = [s for s in self.state_records(state_kvs[0]) if s.name == name]
        hints = [s.machine for s in states] + [kv.key[len(machines):] for kv in registered[0]]
        where, _ = self._assigned([name], revision, hints)
        return record, where.get(name, ""), states

    def job_heads(self, names: Sequence[str] | None = None
                  ) -> dict[str, tuple[str, JobState]]:
        """name → (content hash, desired state) of every job, or of `names` only (ranged
        reads spanning them); no unit file is read or parsed."""
        heads: dict[str, tuple[str, JobState]] = {}
        wanted = set(names) if names is not None else None
        if wanted is not None and not wanted:
            return heads
        revision: int | None = None
        for kind in (Kind.JOB, Kind.GLOBAL):
            prefix = self.keys.of(kind)
            if wanted is None:
                revision, kvs = self.etcd.snapshot(prefix, revision)
            else:
                revision, kvs, _ = self.etcd.range(prefix + min(wanted),
                                                   prefix + max(wanted) + "\0", 0, revision)
            for kv in kvs:
                name = kv.key[len(prefix):]
                if wanted is None or name in wanted:
                    data = decode(kv.value)
                    heads[name] = (data["hash"], JobState(data["desired"]))
        return heads

    def jobs_of(self, names: Sequence[str]) -> dict[str, JobRecord]:
        """The jobs of `names` (missing ones left out): per job prefix one ranged read
        spanning just these names' keys."""
        wanted = set(names)
        if not wanted:
            return {}
        records: dict[str, JobRecord] = {}
        revision: int | None = None
        for kind in (Kind.JOB, Kind.GLOBAL):
            prefix = self.keys.of(kind)
            revision, kvs, _ = self.etcd.range(prefix + min(wanted), prefix + max(wanted) + "\0",
                                               0, revision)
            for kv in kvs:
                if kv.key[len(prefix):] in wanted:
                    record = self.job_from_kv(kv)
                    if record is not None:
                        records[record.job.name] = record
        return records

    def create_job(self, name: str, unit: UnitFile, desired: JobState,
                   replace: bool = False) -> JobRecord:
        """Submit a unit. Refuses to overwrite a different unit of the same name unless
        `replace`; submitting identical content again is a no-op that keeps its state."""
        options = parse_fleet_options(unit, name)  # validates before anything is written
        text = serialize(unit)
        digest = content_hash(unit)
        key = self.keys.global_job(name) if options.global_ else self.keys.job(name)
        other = self.keys.job(name) if options.global_ else self.keys.global_job(name)
        existing = self.get_job(name)
        ops = self.etcd.ops
        success = [ops.put(self.keys.unit(digest), text),
                   ops.put(key, encode({"name": name, "hash": digest,
                                        "desired": desired.value}))]
        if existing is None:
            compare = [ops.version(key) == 0, ops.version(other) == 0]
        else:
            if existing.job.hash == digest:
                return existing
            if not replace:
                raise Conflict(f"unit {name} already exists with different content "
                               f"({existing.job.hash[:7]}); destroy it first or use --replace")
            existing_key = (self.keys.global_job(name) if existing.job.is_global
                            else self.keys.job(name))
            compare = [ops.mod(existing_key) == existing.revision]
            if existing_key != key:  # Global= changed: the job moves between namespaces
                compare.append(ops.version(key) == 0)
                success.append(ops.delete(existing_key))
        if not self.etcd.txn(compare, success):
            raise Conflict(f"unit {name} changed while submitting; retry")
        self._units[digest] = unit
        record = self.get_job(name)
        assert record is not None
        return record

    def set_desired(self, name: str, desired: JobState,
                    seen: JobRecord | None = None) -> JobRecord:
        """`seen`: the job as the caller just read it (spares reading it again; a change
        since then fails the compare and it is read anew)."""
        for _ in range(10):
            record, seen = seen or self.get_job(name), None
            if record is None:
                raise NotFound(f"Unit {name} does not exist.")
            if record.job.desired is desired:
                return record
            if self.set_desired_together([(record, desired)]):
                return JobRecord(Job(name, record.job.hash, desired, record.job.options),
                                 record.revision)
        raise Conflict(f"unit {name} keeps changing; retry")

    def set_desired_together(self, changes: Sequence[tuple[JobRecord, JobState]]) -> bool:
        """Several jobs' desired states in ONE transaction, each guarded by the revision of
        the record given; False (nothing written) if any of them changed since. Each job
        at most once, within etcd's op limit (two ops each)."""
        ops = self.etcd.ops
        compare, success = [], []
        for record, desired in changes:
            job = record.job
            key = self.keys.global_job(job.name) if job.is_global else self.keys.job(job.name)
            compare.append(ops.mod(key) == record.revision)
            success.append(ops.put(key, encode({"name": job.name, "hash": job.hash,
                                                "desired": desired.value})))
        return self.etcd.txn(compare, success)

    def write_jobs(self, writes: Iterable[JobWrite], guard: Iterable = (),
                   also: Iterable = ()) -> bool:
        """Create, replace, restate and destroy several jobs in ONE transaction, each guarded
        by the revision its writer saw; False (nothing written) if any of them changed.
        `guard` adds compares (the writer's lock), `also` ops written with the jobs.
        The caller keeps a transaction within etcd's op limit (`MAX_TXN_OPS`)."""
        writes = list(writes)
        ops = self.etcd.ops
        compare: list = list(guard)
        success: list = []
        bodies: dict[str, str] = {}
        for w in writes:
            current = self.keys.global_job(w.name) if w.was_global else self.keys.job(w.name)
            if w.unit is None and w.desired is None:
                compare.append(ops.mod(current) == w.expect_revision)
                success.append(ops.delete(current))
                continue
            assert w.unit is not None and w.desired is not None
            options = parse_fleet_options(w.unit, w.name)  # validates before writing
            digest = content_hash(w.unit)
            bodies.setdefault(digest, serialize(w.unit))
            key = self.keys.global_job(w.name) if options.global_ else self.keys.job(w.name)
            other = self.keys.job(w.name) if options.global_ else self.keys.global_job(w.name)
            if w.expect_revision == 0:
                compare += [ops.version(key) == 0, ops.version(other) == 0]
            else:
                compare.append(ops.mod(current) == w.expect_revision)
                if current != key:  # Global= changed: the job moves between namespaces
                    compare.append(ops.version(key) == 0)
                    success.append(ops.delete(current))
            success.append(ops.put(key, encode({"name": w.name, "hash": digest,
                                                "desired": w.desired.value})))
        success = [ops.put(self.keys.unit(d), text) for d, text in bodies.items()] + success
        success += list(also)
        if not success:
            return True
        if not self.etcd.txn(compare, success):
            return False
        for w in writes:
            if w.unit is not None:
                self._units.setdefault(content_hash(w.unit), w.unit)
        return True

    def destroy_job(self, name: str) -> bool:
        record = self.get_job(name)
        if record is None:
            return False
        key = self.keys.global_job(name) if record.job.is_global else self.keys.job(name)
        return self.etcd.delete(key)

    # -- machines ----------------------------------------------------------------------------
    def register_machine(self, machine: Machine, lease: int) -> None:
        self.etcd.put(self.keys.machine(machine.id), encode(machine.to_json()), lease=lease)

    def join(self, machine: Machine, lease: int, fence_revision: int, beat: Beat) -> bool:
        """Register `machine` under `lease` with its first heartbeat, in one transaction
        that holds only if its fence key is as the caller saw it when it last read its
        assignments (`fence_revision`: its mod revision, 0 for none); the fence is cleared
        there. False: fenced meanwhile; read the assignments again first."""
        ops = self.etcd.ops
        fence = self.keys.fence(machine.id)
        compare = ([ops.version(fence) == 0] if fence_revision == 0
                   else [ops.mod(fence) == fence_revision])
        return self.etcd.txn(compare, [
            ops.put(self.keys.machine(machine.id), encode(machine.to_json()), lease=lease),
            ops.put(self.keys.heartbeat(machine.id), self.beat_value(beat), lease=lease),
            ops.delete(fence)])

    def fence_revision(self, machine: str, revision: int) -> int:
        """Mod revision of the machine's fence key at `revision` (0: not fenced)."""
        key = self.keys.fence(machine)
        _, kvs = self.etcd.snapshot(key, revision)
        return next((kv.mod_revision for kv in kvs if kv.key == key), 0)

    # -- heartbeats --------------------------------------------------------------------------
    @staticmethod
    def beat_value(beat: Beat) -> bytes:
        value: dict = {"seq": beat.seq, "sent": round(beat.sent, 6)}
        if beat.leaving:
            value["leaving"] = True
        return encode(value)

    def beat(self, machine: str, beat: Beat, attempt_timeout: float | None = None) -> None:
        """Write a heartbeat under its lease; LeaseGone when the lease is gone (expired, or
        revoked by an engine that judged this machine dead)."""
        self.etcd.put(self.keys.heartbeat(machine), self.beat_value(beat), lease=beat.lease,
                      attempt_timeout=attempt_timeout)

    @staticmethod
    def beat_from(value: bytes | None, lease: int) -> Beat | None:
        if value is None:
            return None
        try:
            data = decode(value)
            return Beat(lease, int(data.get("seq", 0)), float(data.get("sent", 0.0)),
                        bool(data.get("leaving", False)))
        except (ValueError, TypeError):
            return None

    def heartbeats(self, revision: int | None = None) -> tuple[int, dict[str, Beat]]:
        revision, kvs = self.etcd.snapshot(self.keys.of(Kind.HEARTBEAT), revision)
        found = {}
        for kv in kvs:
            parsed = self.keys.parse(kv.key)
            beat = self.beat_from(kv.value, kv.lease)
            if parsed is not None and parsed.kind is Kind.HEARTBEAT and beat is not None:
                found[parsed.name] = beat
        return revision, found

    def fence_ops(self, machine: str, lease: int) -> tuple[list, list]:
        """(compare, success) that move a fenced machine's units only while its heartbeat
        key is gone (its lease revoked, and it has not registered again since), and tell
        it, through its fence key, that it was fenced."""
        ops = self.etcd.ops
        return ([ops.version(self.keys.heartbeat(machine)) == 0],
                [ops.put(self.keys.fence(machine), encode({"lease": lease}))])

    def machines(self, revision: int | None = None) -> tuple[int, dict[str, Machine]]:
        revision, kvs = self.etcd.snapshot(self.keys.of(Kind.MACHINE), revision)
        found = {}
        for kv in kvs:
            try:
                machine = Machine.from_json(decode(kv.value))
            except (ValueError, KeyError):
                continue
            found[machine.id] = machine
        return revision, found

    # -- assignments -------------------------------------------------------------------------
    def assignment_from_kv(self, kv: KV) -> Assignment | None:
        parsed = self.keys.parse(kv.key)
        if parsed is None or parsed.kind is not Kind.ASSIGN:
            return None
        data = decode(kv.value)
        return Assignment(parsed.machine, parsed.name, data["hash"], JobState(data["desired"]))

    def assignments(self, machine: str | None = None, revision: int | None = None
                    ) -> tuple[int, list[Assignment]]:
        prefix = self.keys.assignments_of(machine) if machine else self.keys.of(Kind.ASSIGN)
        revision, kvs = self.etcd.snapshot(prefix, revision)
        return revision, [a for a in map(self.assignment_from_kv, kvs) if a is not None]

    def machines_of(self, names: Sequence[str], revision: int | None = None
                    ) -> tuple[int, dict[str, str]]:
        """Where each of `names` is assigned (name → machine; unassigned ones left out):
        per machine that holds assignments one read spanning just these names (see
        `_assigned`; without hints, one round trip per such machine finds them)."""
        if revision is None:
            revision = self.etcd.revision()
        where, _ = self._assigned(names, revision, ())
        return revision, where

    def _assigned(self, names: Sequence[str], revision: int, hints: Iterable[str],
                  also: Sequence = ()) -> tuple[dict[str, str], list[tuple[list[KV], bool]]]:
        """Where `names` are assigned at `revision`, and the reads `also` done in the first
        round trip. Assignments live under their machine (assign/<machine>/<name>), so
        each round reads, in one transaction, the span of these names under every machine
        named so far (`hints` first: machines likely to hold them) and probes each gap
        between those machines for the first key of any other machine; a probe that finds
        one names a machine for the next round. With every holder among the hints: one
        round trip."""
        wanted = set(names)
        where: dict[str, str] = {}
        prefix = self.keys.of(Kind.ASSIGN)
        if not wanted:
            return where, self.etcd.ranges(also, revision)[1]
        # In key order (a machine id's order may differ from its keys': "a-b/" < "a/")
        known = sorted({m for m in hints if m and "/" not in m}, key=self.keys.assignments_of)
        to_read = list(known)
        bounds: list[str | bytes] = [prefix]
        for machine in known:
            bounds += [self.keys.assignments_of(machine),
                       prefix_end(self.keys.assignments_of(machine))]
        bounds.append(prefix_end(prefix))
        gaps = [(bounds[i], bounds[i + 1]) for i in range(0, len(bounds), 2)]
        extra: list[tuple[list[KV], bool]] = []
        first_round = True
        while to_read or gaps:
            spans = []
            for machine in to_read:
                keys = [self.keys.assignment(machine, name) for name in wanted]
                spans.append((min(keys), max(keys) + "\0", 0))
            specs = spans + [(s, e, 1) for s, e in gaps] + (list(also) if first_round else [])
            _, results = self.etcd.ranges(specs, revision)
            span_results = results[:len(spans)]
            gap_results = results[len(span_results):len(span_results) + len(gaps)]
            if first_round:
                extra = results[len(span_results) + len(gaps):]
                first_round = False
            for machine, (kvs, _) in zip(to_read, span_results, strict=True):
                cut = len(self.keys.assignments_of(machine))
                for kv in kvs:  # the key says it all: assign/<machine>/<name>
                    if kv.key[cut:] in wanted:
                        where.setdefault(kv.key[cut:], machine)
            to_read, next_gaps = [], []
            for (_, end), (kvs, _) in zip(gaps, gap_results, strict=True):
                if not kvs:
                    continue
                parsed = self.keys.parse(kvs[0].key)
                if parsed is None or parsed.kind is not Kind.ASSIGN:
                    next_gaps.append((kvs[0].key + "\0", end))  # not ours: step over it
                    continue
                to_read.append(parsed.machine)
                next_gaps.append((prefix_end(self.keys.assignments_of(parsed.machine)), end))
            gaps = next_gaps
        return where, extra

    def is_assigned(self, name: str, machine: str) -> bool:
        return self.etcd.get(self.keys.assignment(machine, name)) is not None

    def assignment_value(self, job: Job) -> bytes:
        # A pass writes thousands of these, mostly of a few (hash, state) pairs: one JSON
        # encoding each was a fifth of a 10,000-unit pass.
        # (Keyed by the state itself: its `.value` is a property, dear at that count.)
        key = (job.hash, job.desired)
        value = self._assignment_values.get(key)
        if value is None:
            if len(self._assignment_values) >= ASSIGNMENT_VALUES_KEPT:
                self._assignment_values.clear()
            value = self._assignment_values[key] = encode({"hash": job.hash,
                                                           "desired": job.desired.value})
        return value

    # -- unit states ------------------------------------------------------------------------
    def write_states(self, machine: str, lease: int,
                     changes: dict[str, tuple[str, UnitStatus, bool] | None]) -> None:
        """Publish (name -> (hash, status, launched)) or clear (name -> None) many unit states in
        transactions of MAX_TXN_OPS. LeaseGone when the machine lease is gone."""
        ops = self.etcd.ops
        batch: list = []
        for name, change in changes.items():
            key = self.keys.state(name, machine)
            if change is None:
                batch.append(ops.delete(key))
            else:
                digest, status, launched = change
                batch.append(ops.put(key, encode({"hash": digest, "load": status.load,
                                                  "active": status.active,
                                                  "sub": status.sub,
                                                  "launched": launched}),
                                      lease=lease))
            if len(batch) == MAX_TXN_OPS:
                self.etcd.txn([], batch)
                batch = []
        if batch:
            self.etcd.txn([], batch)

    def states(self) -> list[UnitStateRecord]:
        _, kvs = self.etcd.snapshot(self.keys.of(Kind.STATE))
        return self.state_records(kvs)

    def states_of(self, name: str) -> list[UnitStateRecord]:
        """One unit's states, one per machine that reports it (one range read)."""
        _, kvs = self.etcd.snapshot(self.keys.states_of(name))
        return [s for s in self.state_records(kvs) if s.name == name]

    def states_of_names(self, names: Sequence[str], revision: int | None = None
                        ) -> list[UnitStateRecord]:
        """The states of `names`: one ranged read spanning just these names' keys."""
        wanted = set(names)
        if not wanted:
            return []
        starts = [self.keys.states_of(name) for name in wanted]
        _, kvs, _ = self.etcd.range(min(starts), max(prefix_end(s) for s in starts), 0,
                                    revision)
        return [s for s in self.state_records(kvs) if s.name in wanted]

    def states_page(self, after: tuple[str, str] | None, limit: int,
                    machine: str | None = None) -> tuple[list[UnitStateRecord], bool, int]:
        """Up to `limit` states after (name, machine) `after` in key order (name, then
        machine), only `machine`'s if given, whether more follow, and the revision read
        at. Ranged reads of limit + 1 keys; with a machine filter, as many as it takes to
        fill the page."""
        prefix = self.keys.of(Kind.STATE)
        start: str | bytes = (self.keys.state(*after) + "\0") if after is not None else prefix
        end = prefix_end(prefix)
        found: list[UnitStateRecord] = []
        revision: int | None = None
        while True:
            revision, kvs, more = self.etcd.range(start, end, limit + 1, revision)
            found += [s for s in self.state_records(kvs)
                      if machine is None or s.machine == machine]
            if len(found) > limit or not more or not kvs:
                return found[:limit], len(found) > limit, revision
            start = kvs[-1].key + "\0"

    def state_records(self, kvs: Iterable[KV]) -> list[UnitStateRecord]:
        """The unit states that `kvs` (keys under `state/`, e.g. from a watch) hold."""
        found = []
        prefix = self.keys.of(Kind.STATE)
        cut = len(prefix)
        for kv in kvs:  # state/<name>/<machine>, as Keys.parse reads it (cheaper: pages)
            if not kv.key.startswith(prefix):
                continue
            name, _, machine = kv.key[cut:].partition("/")
            if not name or not machine or "/" in machine:
                continue
            found.append(state_record(name, machine, kv.value))
        return found

    # -- batching ----------------------------------------------------------------------------
    def batch_commit(self, guard: list, first: Iterable = (), per_txn: int = MAX_TXN_OPS,
                     in_flight: int = COMMIT_IN_FLIGHT) -> BatchCommit:
        """A plan's writes sent while it is being made (see `fleetd.registry.commit`)."""
        return BatchCommit(self.etcd, guard, per_txn, in_flight, first)

    def commit_batches(self, guard: list, ops: Iterable, per_txn: int = MAX_TXN_OPS,
                       first: Iterable = (), then: Iterable = (),
                       in_flight: int = COMMIT_IN_FLIGHT) -> int:
        """Run `ops` in transactions of at most `per_txn` operations, each guarded by
        `guard` (e.g. "I still hold the engine lease"); `first` go into the first batch
        (a fence that must land with the first move). `ops` commit one batch after another,
        in order; `then` (puts of keys none of the others touch, in no particular order)
        after all of them, up to `in_flight` transactions at once: etcd commits concurrent
        transactions together, so a large plan is not held to one round trip per batch.
        Returns how many batches failed."""
        with self.batch_commit(guard, first, per_txn, in_flight) as commit:
            commit.ordered(ops)
            for op in then:
                commit.add(op)
            return commit.finish()


_state_values: dict[bytes, tuple[str, UnitStatus, bool]] = {}


def state_record(name: str, machine: str, value: bytes) -> UnitStateRecord:
    """A stored unit state (`state/<name>/<machine>`) from its value. ValueError, KeyError
    or TypeError: malformed."""
    fields = _state_values.get(value)
    if fields is None:
        data = decode(value)
        fields = (data.get("hash", ""),
                  UnitStatus(data.get("load", "not-found"), data.get("active", "inactive"),
                             data.get("sub", "dead")),
                  data.get("launched") is True)
        if len(_state_values) >= STATE_VALUES_KEPT:  # threads may race here: both harmless
            _state_values.clear()
        _state_values[value] = fields
    return UnitStateRecord(name, machine, *fields)

