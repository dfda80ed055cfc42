"""`provision plan` and `provision apply`: the registry edge of the declared units.

`open_session` takes the cluster's apply lock (one apply at a time; `apply_lock.py`),
then reads what fleet's registry holds (one snapshot) and asks the pure planner what to
change. `apply` writes each step as one transaction guarded by the revisions the plan
read and by the lock's fencing token (`Registry.write_jobs`), and waits, against one
deadline, until the pure convergence check is satisfied. Rolling steps wait for their
units before the next step is written; a failed replacement stops the rollout. Ctrl-C or
SIGKILL between steps leaves every unit in its old or its new state.

Every transaction also records in the lock how far the apply got, so a write whose reply
was lost is recognised as ours, not mistaken for someone else's identical write. An etcd
that stops answering is waited out, unless the cluster is known to be down (its local
supervisor is gone) or it stays away `UNREACHABLE_GIVE_UP_S`: then one line says so and
how many steps were written.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from fleetd.engine.scheduler import ClusterView, schedule
from fleetd.registry.etcd import Etcd, RegistryUnavailable
from fleetd.registry.registry import MAX_TXN_OPS, JobWrite, Registry
from fleetd.unit.unitfile import parse_unit_file
from provision.apply.convergence import CHANGED, FAILED, Lag
from provision.apply.desired import (
    DesiredUnit,
    desired_units,
    etcd_endpoints,
    fleet_prefix,
    owner_of,
)
from provision.apply.lock import ApplyLock, LockLost
from provision.apply.observed import Observed
from provision.apply.planner import Action, ActualUnit, Change, Plan, Step, plan
from provision.errors import OperationFailed
from provision.pki import cluster_client_tls
from provision.spec.model import Cluster

POLL_S = 0.25
ETCD_TIMEOUT_S = 3.0          # per request; a slow answer is retried, never taken as an error
UNREACHABLE_GIVE_UP_S = 30.0  # an etcd away this long (and not known down) ends the apply
FIRST_CONTACT_S = 5.0         # ... or, before it ever answered, this long (a busy etcd
                              # gets a second chance; a wrong address fails soon)
UNSCHEDULABLE_GRACE_S = 6.0   # the scheduler must say "no machine" this long before we do
EXPLAIN_EVERY_S = 1.0         # how often a wait asks the scheduler why units are unplaced
JOURNAL_LINES = 8

Report = Callable[[str], None]
Count = Callable[[int, int], None]  # (converged, of) units being waited for
Probe = Callable[[], bool]          # is the cluster known to be down?
T = TypeVar("T")


def _no_count(done: int, total: int) -> None:
    pass


def _ignore(text: str) -> None:
    pass


def _never() -> bool:
    return False


class ClusterGone(OperationFailed):
    """The cluster went down (or its etcd stayed away) while this apply ran."""


@dataclass
class Session:
    """One cluster's declaration, registry connection and plan (and, to apply, its lock)."""

    cluster: Cluster
    desired: tuple[DesiredUnit, ...]
    registry: Registry
    revision: int
    actual: dict[str, ActualUnit]
    plan: Plan
    lock: ApplyLock | None = None

    def close(self) -> None:
        try:
            if self.lock is not None:
                self.lock.release()
        finally:
            self.registry.etcd.close()


def open_session(cluster: Cluster, *, prune: bool = False, timeout: float = ETCD_TIMEOUT_S,
                 lock: bool = False, wait: bool = True, deadline: float | None = None,
                 report: Report = _ignore, gone: Probe = _never) -> Session:
    """Read the registry and plan (with `lock`, first take the apply lock, waiting for its
    holder unless `wait` is False). OperationFailed when etcd cannot be reached; UserError
    when the lock is held and we may not wait."""
    desired = desired_units(cluster)
    endpoints = etcd_endpoints(cluster)
    try:
        tls = cluster_client_tls(cluster)
    except RegistryUnavailable as err:
        raise OperationFailed(f"cannot read fleet's registry of cluster {cluster.name} ({err}); "
                              "is the cluster up? (`provision status`)") from None
    etcd = Etcd(endpoints, timeout=timeout, tls=tls)
    registry = Registry(etcd, fleet_prefix(cluster))
    reach = Reachability(cluster.name, gone, lambda: "nothing written")
    limit = deadline if deadline is not None else time.monotonic() + 120
    held: ApplyLock | None = None
    try:
        if lock:
            held = ApplyLock(registry, cluster.name)
            held.acquire(wait=wait, deadline=limit, report=report,
                         on_unreachable=lambda err: reach.failed(err, limit),
                         on_answer=reach.answered)
        try:
            revision, actual = read_actual(registry)
        except RegistryUnavailable as err:
            reach.failed(err, limit)  # raises unless the outage is to be waited out
            revision, actual = _read_when_back(registry, reach, limit)
    except BaseException:
        if held is not None:
            held.release()
        etcd.close()
        raise
    return Session(cluster, desired, registry, revision, actual,
                   plan(desired, actual, cluster=cluster.name, prune=prune), held)


def _read_when_back(registry: Registry, reach: Reachability, deadline: float
                    ) -> tuple[int, dict[str, ActualUnit]]:
    while True:
        time.sleep(POLL_S)
        try:
            return read_actual(registry)
        except RegistryUnavailable as err:
            reach.failed(err, deadline)


def read_actual(registry: Registry) -> tuple[int, dict[str, ActualUnit]]:
    revision, records = registry.jobs()
    _, assignments = registry.assignments(revision=revision)
    where = {a.name: a.machine for a in assignments}
    actual = {}
    for name, record in records.items():
        unit = registry.unit(record.job.hash)
        actual[name] = ActualUnit(name, record.job.hash, record.job.desired, record.revision,
                                  owner_of(unit) if unit is not None else None,
                                  record.job.is_global, where.get(name))
    return revision, actual


# -- an etcd that does not answer ---------------------------------------------------------------

@dataclass
class Reachability:
    """What an unreachable etcd means for this apply: wait, or end it in one line."""

    cluster: str
    gone: Probe
    written: Callable[[], str]    # "1 of 3 steps written"
    since: float | None = None
    contacted: bool = False       # etcd has answered this apply at least once

    def answered(self) -> None:
        self.since = None
        self.contacted = True

    def failed(self, err: RegistryUnavailable, deadline: float) -> None:
        """Return to wait the outage out; raise ClusterGone when the cluster is down or
        etcd stayed away too long, OperationFailed at the deadline or when etcd never
        answered this apply at all."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
        if not self.contacted:
            if self.gone():
                raise OperationFailed(f"cluster {self.cluster} is not running; bring it up "
                                      "with `provision up` first")
            if now - self.since >= FIRST_CONTACT_S or now >= deadline:
                raise OperationFailed(f"cannot read fleet's registry of cluster "
                                      f"{self.cluster} ({err}); is the cluster up? "
                                      "(`provision status`)")
            return
        if self.gone():
            raise ClusterGone(f"cluster {self.cluster} went down during apply; "
                              f"{self.written()}")
        away = now - self.since
        if away >= UNREACHABLE_GIVE_UP_S:
            raise ClusterGone(f"cluster {self.cluster}'s etcd has not answered for "
                              f"{away:.0f}s during apply ({err}); {self.written()}; is the "
                              "cluster up? (`provision status`)")
        if now >= deadline:
            raise OperationFailed(f"cluster {self.cluster}'s etcd did not answer before the "
                                  f"deadline (--timeout) ({err}); {self.written()}")


@dataclass
class _Run:
    """One apply in progress: its session, how far it got, how it treats an outage."""

    session: Session
    lock: ApplyLock
    reach: Reachability = field(init=False)
    steps_written: int = 0
    txns: int = 0

    def __post_init__(self) -> None:
        self.reach = Reachability(self.session.cluster.name, _never, self.written,
                                  contacted=True)

    def written(self) -> str:
        steps = len(self.session.plan.steps)
        if not steps:
            return "it had nothing to write"
        return f"{self.steps_written} of {steps} step{'s' if steps != 1 else ''} written"

    def call(self, action: Callable[[], T], deadline: float) -> T:
        """`action()` once etcd answers (see Reachability); the lock must still be ours."""
        while True:
            self.lock.check(self.written())
            try:
                result = action()
            except RegistryUnavailable as err:
                self.reach.failed(err, deadline)
                time.sleep(POLL_S)
                continue
            self.reach.answered()
            return result


# -- apply -----------------------------------------------------------------------------------

def apply(session: Session, *, deadline: float, report: Report,
          count: Count = _no_count, gone: Probe = _never) -> None:
    """Write every step and wait for convergence; OperationFailed naming what did not."""
    assert session.lock is not None, "apply needs the cluster's apply lock (open_session)"
    run = _Run(session, session.lock)
    run.reach.gone = gone
    steps = session.plan.steps
    # One view of jobs, states and announcements for the whole apply: read once, then
    # kept by watch events (a step's wait reads nothing).
    view = Observed(session.registry, session.desired)
    try:
        run.call(view.sync, deadline)
        for number, step in enumerate(steps, 1):
            _step(run, view, number, step, deadline, report, count)
        _wait(run, view, list(session.desired), deadline, report, count=count)
    finally:
        view.stop()


def _step(run: _Run, view: Observed, number: int, step: Step, deadline: float,
          report: Report, count: Count) -> None:
    session = run.session
    steps = session.plan.steps
    units = [u for u in session.desired if u.name in step.wait_for]
    since = 0
    if step.rolling and any(u.announcement is not None for u in units):
        # An announcement older than this step is the old instance's, not the new one's
        # (read before writing: a slow read after it could miss the new announcement).
        since = run.call(session.registry.etcd.revision, deadline)
    _write(run, number, step, deadline)
    view.wrote({c.name: None if c.unit is None or c.action is Action.DESTROY
                else (c.unit.hash, c.unit.state) for c in step.changes})
    if not step.rolling:
        report(f"step {number}/{len(steps)}: wrote "
               f"{len(step.changes)} changes in one transaction")
        return
    report(f"step {number}/{len(steps)}: replaced "
           f"{', '.join(step.wait_for)}; waiting until active and announced")
    try:
        _wait(run, view, units, deadline, report, announced_since=since, count=count)
    except (ClusterGone, LockLost):
        raise
    except OperationFailed as err:
        rest = [n for later in steps[number:] for n in later.wait_for]
        left = (f"; not replaced, still on the old version: {', '.join(rest)}"
                if rest else "")
        raise OperationFailed(f"rolling replace of {step.rolling} stopped: {err}"
                              f"{left}") from None


def _write(run: _Run, number: int, step: Step, deadline: float) -> None:
    session = run.session
    chunks = _chunks(step.changes, session.actual, len(run.lock.guard()))
    before = 0
    for index, chunk in enumerate(chunks):
        txns = run.txns + 1
        done = number if index == len(chunks) - 1 else number - 1
        mark, _ = run.lock.progress(done, len(session.plan.steps), txns)
        while True:
            run.lock.check(run.written())
            try:
                ok = session.registry.write_jobs(chunk, guard=run.lock.guard(), also=[mark])
            except RegistryUnavailable as err:
                # It may have committed: wait for etcd, then read our own progress record.
                run.reach.failed(err, deadline)
                time.sleep(POLL_S)
                if run.call(lambda t=txns: _recorded(run, t), deadline):
                    break
                continue
            run.reach.answered()
            if ok or run.call(lambda t=txns: _recorded(run, t), deadline):
                # (not ok: the transaction committed, its reply was lost, and the client's
                # retry failed on our own write; the progress record says so.)
                break
            raise OperationFailed(_conflict(run, number, chunk, before))
        run.txns = txns
        before += len(chunk)
    run.steps_written = number


def _chunks(changes: list[Change], actual: Mapping[str, ActualUnit], guards: int = 0
            ) -> list[list[JobWrite]]:
    """The step's writes in as few transactions as etcd's limit allows (at most
    MAX_TXN_OPS compares, and as many ops, our progress record one of them; `guards`
    compares come with every transaction). A unit costs a compare of its job (two when
    created: neither namespace may hold it) and its job's put or delete; a delete and a
    compare more when Global= moves it; and its content's body once per transaction (a
    template's instances share one)."""
    chunks: list[list[JobWrite]] = [[]]
    bodies: set[str] = set()
    compares, ops = guards, 1

    def cost(change: Change, now: ActualUnit | None) -> tuple[int, int]:
        if change.unit is None or change.action is Action.DESTROY:
            return 1, 1
        if now is None:
            return 2, 1 + (change.unit.hash not in bodies)
        moved = now.is_global != change.unit.is_global
        return 1 + moved, 1 + moved + (change.unit.hash not in bodies)

    for change in changes:
        now = actual.get(change.name)
        more_compares, more_ops = cost(change, now)
        if chunks[-1] and (compares + more_compares > MAX_TXN_OPS
                           or ops + more_ops > MAX_TXN_OPS):
            chunks.append([])
            bodies, compares, ops = set(), guards, 1
            more_compares, more_ops = cost(change, now)
        compares, ops = compares + more_compares, ops + more_ops
        if change.unit is not None and change.action is not Action.DESTROY:
            bodies.add(change.unit.hash)
        chunks[-1].append(_job_write(change, now))
    return [chunk for chunk in chunks if chunk]


def _recorded(run: _Run, txns: int) -> bool:
    """Whether our transaction number `txns` committed; LockLost if the lock is not ours."""
    record = run.lock.recorded()
    if record is None or record.token != run.lock.token:
        raise run.lock.lost(run.written())
    return record.info.get("txns") == txns


def _conflict(run: _Run, number: int, chunk: list[JobWrite], before: int) -> str:
    """Which unit someone else changed since the plan read it, in words."""
    session = run.session
    changed = []
    try:
        for w in chunk:
            record = session.registry.get_job(w.name)
            now = record.revision if record is not None else 0
            if now == w.expect_revision:
                continue
            seen = session.actual.get(w.name)
            was = (f"it held {seen.hash[:7]}, {seen.state.value}" if seen is not None
                   else "it did not exist")
            if record is None:
                changed.append(f"{w.name} was destroyed by someone else ({was})")
            else:
                changed.append(f"{w.name} was changed by someone else ({was}; it now holds "
                               f"{record.job.hash[:7]}, {record.job.desired.value})")
    except RegistryUnavailable:
        pass
    what = "; ".join(changed[:5]) if changed else (
        "a unit of it was changed by someone else")
    written = (f"the first {before} changes of step {number} were written, the rest not"
               if before else f"nothing of step {number} was written")
    return (f"conflict: the registry changed after this apply planned at revision "
            f"{session.revision}: {what}; {written}; {run.written()}. Run `provision plan` "
            "to see the new difference")


def _job_write(change: Change, now: ActualUnit | None) -> JobWrite:
    was_global = bool(now and now.is_global)
    if change.action is Action.DESTROY:
        return JobWrite(change.name, None, None, change.expect_revision, was_global)
    assert change.unit is not None
    return JobWrite(change.name, parse_unit_file(change.unit.text), change.unit.state,
                    change.expect_revision, was_global)


# -- waiting ---------------------------------------------------------------------------------

def _wait(run: _Run, view: Observed, units: list[DesiredUnit], deadline: float,
          report: Report, announced_since: int = 0, count: Count = _no_count) -> None:
    """Until every unit converged (announcements written after `announced_since`);
    OperationFailed for a failed unit, an unschedulable one, a unit someone else changed
    after we wrote it, or the deadline. Woken by the view's watch events only."""
    by_name = {u.name: u for u in units}
    lags: dict[str, Lag] | None = None

    def observe() -> dict[str, Lag]:
        nonlocal lags
        if view.stale:
            run.call(view.sync, deadline)
            lags = None
        touched = view.take_touched()
        if lags is None:
            lags = view.lags(units, announced_since)
        else:  # judge again only the units whose keys changed
            again = [by_name[n] for n in touched if n in by_name]
            for unit in again:
                lags.pop(unit.name, None)
            lags.update(view.lags(again, announced_since))
        return lags

    _wait_loop(run, units, deadline, report, count, observe, view)


def _wait_loop(run: _Run, units: list[DesiredUnit], deadline: float, report: Report,
               count: Count, observe: Callable[[], dict[str, Lag]], view: Observed) -> None:
    registry = run.session.registry
    unschedulable_since: dict[str, float] = {}
    pending: dict[str, str] = {}
    # The scheduler is asked why units are unplaced only once they stayed so a while: most
    # are placed within a pass, and asking reads every machine, job and assignment.
    explained_at = time.monotonic()
    shown = None
    while True:
        lags = observe()
        count(len(units) - len(lags), len(units))
        if not lags:
            return
        changed = {n: lag for n, lag in lags.items() if lag.kind == CHANGED}
        if changed and not run.call(run.lock.still_ours, deadline):
            raise run.lock.lost(run.written())  # the other writer is the lock's new holder
        if changed:
            raise OperationFailed(
                "conflict: " + "; ".join(f"{n} {lag.reason}" for n, lag in
                                         sorted(changed.items())[:5])
                + f"; {run.written()}. Run `provision plan` to see the new difference")
        progress = f"{len(units) - len(lags)}/{len(units)} units converged"
        if progress != shown:
            report(progress)
            shown = progress
        failed = {n: lag for n, lag in lags.items() if lag.kind == FAILED}
        if failed:
            raise OperationFailed(_failure_text(registry, failed))
        now = time.monotonic()
        unplaced = [n for n, lag in lags.items() if lag.machine is None]
        if unplaced and now >= explained_at + EXPLAIN_EVERY_S:
            pending = _unschedulable(registry, unplaced)
            explained_at = now
        pending = {n: why for n, why in pending.items()
                   if n in lags and lags[n].machine is None}
        for name in list(unschedulable_since):
            if name not in pending:
                del unschedulable_since[name]
        for name in pending:
            unschedulable_since.setdefault(name, now)
        stuck = {n: pending[n] for n, since in unschedulable_since.items()
                 if now - since >= UNSCHEDULABLE_GRACE_S}
        if stuck:
            raise OperationFailed(unschedulable_text(stuck))
        if now >= deadline:
            detail = "; ".join(f"{n}: {lag.reason}" for n, lag in
                               sorted(lags.items(), key=lambda item: natural(item[0]))[:10])
            raise OperationFailed(f"{len(lags)} units did not converge in time: {detail}")
        # Until etcd reports a change (or the next explanation is due): no polling.
        wake = min(deadline, explained_at + EXPLAIN_EVERY_S if unplaced else deadline)
        view.wait(max(0.0, wake - time.monotonic()))


def natural(name: str) -> tuple:
    """job@2.service before job@10.service."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def unschedulable_text(stuck: Mapping[str, str], shown: int = 3) -> str:
    """One line per reason, naming a few units of each: "1000 units cannot be scheduled: no
    machines in the cluster (job@1.service, job@2.service, job@3.service and 997 more)"."""
    by_reason: dict[str, list[str]] = {}
    for name, why in stuck.items():
        by_reason.setdefault(why, []).append(name)
    parts = []
    for why, names in sorted(by_reason.items(), key=lambda item: (-len(item[1]), item[0])):
        names.sort(key=natural)
        listed = ", ".join(names[:shown])
        if len(names) > shown:
            listed += f" and {len(names) - shown} more"
        parts.append(f"{why} ({listed})")
    count = len(stuck)
    head = f"{count} unit{'s' if count != 1 else ''} cannot be scheduled: "
    return head + "; ".join(parts)


def _unschedulable(registry: Registry, names: list[str]) -> dict[str, str]:
    """The scheduler's own reason for each named unit it cannot place right now."""
    if not names:
        return {}
    try:
        revision, machines = registry.machines()
        _, jobs = registry.jobs()
        _, assignments = registry.assignments(revision=None)
    except RegistryUnavailable:
        return {}
    view = ClusterView(machines, {n: r.job for n, r in jobs.items() if not r.job.is_global},
                       {a.name: a.machine for a in assignments})
    pending = schedule(view).pending
    return {n: pending[n] for n in names if n in pending}


def _failure_text(registry: Registry, failed: dict[str, Lag], shown: int = 5) -> str:
    parts = []
    ordered = sorted(failed.items(), key=lambda item: natural(item[0]))
    for name, lag in ordered[:shown]:
        text = f"{name} {lag.reason}"
        tail = journal_tail(registry, name, lag.machine)
        if tail:
            text += "; its last log lines:\n" + "\n".join(f"    {line}" for line in tail)
        parts.append(text)
    if len(ordered) > shown:
        parts.append(f"and {len(ordered) - shown} more failed units: "
                     + ", ".join(name for name, _ in ordered[shown:shown + 10])
                     + (" …" if len(ordered) > shown + 10 else ""))
    return "\n".join(parts)


def journal_tail(registry: Registry, unit: str, machine_id: str | None) -> list[str]:
    """The unit's last log lines from the fleetd that ran it (empty when unreachable)."""
    from fleetd.fleetctl.client import Client, parse_endpoint

    if machine_id is None:
        return []
    try:
        _, machines = registry.machines()
        machine = machines.get(machine_id)
        if machine is None or not machine.api_url:
            return []
        text = "".join(Client(parse_endpoint(machine.api_url), timeout=3.0)
                       .journal(unit, JOURNAL_LINES, False))
    except Exception:  # the log is a courtesy; the failure is reported anyway
        return []
    return text.strip().splitlines()[-JOURNAL_LINES:]
