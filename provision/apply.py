"""`provision plan` and `provision apply`: the registry edge of the declared units.

Reads what fleet's registry holds (one snapshot), asks the pure planner what to change,
writes each step as one guarded transaction (`Registry.write_jobs`), and waits, against
one deadline, until the pure convergence check is satisfied. Rolling steps wait for
their units before the next step is written; a failed replacement stops the rollout.
Ctrl-C or SIGKILL between steps leaves every unit in its old or its new state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from fleetd.engine.scheduler import ClusterView, schedule
from fleetd.registry.etcd import Etcd, RegistryUnavailable
from fleetd.registry.registry import MAX_TXN_OPS, JobWrite, Registry
from fleetd.unit.unitfile import content_hash, parse_unit_file
from provision.convergence import FAILED, Lag, lagging
from provision.desired import DesiredUnit, desired_units, etcd_endpoints, fleet_prefix, owner_of
from provision.errors import OperationFailed
from provision.model import Cluster
from provision.planner import Action, ActualUnit, Change, Plan, Step, plan

POLL_S = 0.25
UNSCHEDULABLE_GRACE_S = 6.0   # the scheduler must say "no machine" this long before we do
EXPLAIN_EVERY_S = 1.0         # how often a wait asks the scheduler why units are unplaced
JOURNAL_LINES = 8
# Per create: a body put and a job put; etcd limits the ops of one transaction.
UNITS_PER_TXN = MAX_TXN_OPS // 2 - 1

Report = Callable[[str], None]
Count = Callable[[int, int], None]  # (converged, of) units being waited for


def _no_count(done: int, total: int) -> None:
    pass


@dataclass
class Session:
    """One cluster's declaration, registry connection and plan."""

    cluster: Cluster
    desired: tuple[DesiredUnit, ...]
    registry: Registry
    revision: int
    actual: dict[str, ActualUnit]
    plan: Plan

    def close(self) -> None:
        self.registry.etcd.close()


def open_session(cluster: Cluster, *, prune: bool = False, timeout: float = 5.0) -> Session:
    """Read the registry and plan; OperationFailed when etcd cannot be reached."""
    desired = desired_units(cluster)
    endpoints = etcd_endpoints(cluster)
    etcd = Etcd(endpoints, timeout=timeout)
    registry = Registry(etcd, fleet_prefix(cluster))
    try:
        revision, actual = read_actual(registry)
    except RegistryUnavailable as err:
        etcd.close()
        raise OperationFailed(f"cannot read fleet's registry at {', '.join(endpoints)} "
                              f"({err}); is the cluster up? (`provision status`)") from None
    return Session(cluster, desired, registry, revision, actual,
                   plan(desired, actual, cluster=cluster.name, prune=prune))


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


# -- apply -----------------------------------------------------------------------------------

def apply(session: Session, *, deadline: float, report: Report,
          count: Count = _no_count) -> None:
    """Write every step and wait for convergence; OperationFailed naming what did not."""
    for number, step in enumerate(session.plan.steps, 1):
        if step.rolling:
            # An announcement older than this step is the old instance's, not the new one's
            # (read before writing: a slow read after it could miss the new announcement).
            try:
                since = session.registry.etcd.revision()
            except RegistryUnavailable as err:
                raise OperationFailed(f"etcd became unreachable: {err}") from None
        _write(session, step)
        if step.rolling:
            report(f"step {number}/{len(session.plan.steps)}: replaced "
                   f"{', '.join(step.wait_for)}; waiting until active and announced")
            units = [u for u in session.desired if u.name in step.wait_for]
            try:
                wait(session, units, deadline, report, announced_since=since, count=count)
            except OperationFailed as err:
                rest = [n for later in session.plan.steps[number:] for n in later.wait_for]
                left = (f"; not replaced, still on the old version: {', '.join(rest)}"
                        if rest else "")
                raise OperationFailed(f"rolling replace of {step.rolling} stopped: {err}"
                                      f"{left}") from None
        else:
            report(f"step {number}/{len(session.plan.steps)}: wrote "
                   f"{len(step.changes)} changes in one transaction")
    wait(session, list(session.desired), deadline, report, count=count)


def _write(session: Session, step: Step) -> None:
    writes = [_job_write(c, session.actual.get(c.name)) for c in step.changes]
    for start in range(0, len(writes), UNITS_PER_TXN):
        chunk = writes[start:start + UNITS_PER_TXN]
        try:
            ok = session.registry.write_jobs(chunk)
        except RegistryUnavailable as err:
            raise OperationFailed(f"etcd became unreachable while writing: {err}") from None
        if not ok and _landed(session.registry, chunk):
            # The transaction committed but its reply was lost and the client's retry
            # found its own write: not a conflict.
            ok = True
        if not ok:
            names = ", ".join(w.name for w in chunk[:5]) + (", …" if len(chunk) > 5 else "")
            written = (f"the first {start} changes of this step were written, the rest not"
                       if start else "nothing of this step was written")
            raise OperationFailed(
                f"the registry changed since the plan was read (revision "
                f"{session.revision}): one of {names} was changed by someone else; "
                f"{written}. Run `provision plan` to see the new difference")


def _landed(registry: Registry, writes: list[JobWrite]) -> bool:
    """Whether the registry already holds exactly what `writes` would have written."""
    try:
        for w in writes:
            record = registry.get_job(w.name)
            if w.unit is None:
                if record is not None:
                    return False
            elif (record is None or record.job.hash != content_hash(w.unit)
                  or record.job.desired is not w.desired):
                return False
    except RegistryUnavailable:
        return False
    return True


def _job_write(change: Change, now: ActualUnit | None) -> JobWrite:
    was_global = bool(now and now.is_global)
    if change.action is Action.DESTROY:
        return JobWrite(change.name, None, None, change.expect_revision, was_global)
    assert change.unit is not None
    return JobWrite(change.name, parse_unit_file(change.unit.text), change.unit.state,
                    change.expect_revision, was_global)


# -- waiting ---------------------------------------------------------------------------------

def wait(session: Session, units: list[DesiredUnit], deadline: float, report: Report,
         announced_since: int = 0, count: Count = _no_count) -> None:
    """Until every unit converged (announcements written after `announced_since`);
    OperationFailed for a failed unit, an unschedulable one, or the deadline."""
    registry = session.registry
    unschedulable_since: dict[str, float] = {}
    pending: dict[str, str] = {}
    explained_at = -EXPLAIN_EVERY_S
    shown = None
    while True:
        try:
            lags = lagging(units, registry.states(),
                           _announced(registry, units, announced_since))
        except RegistryUnavailable as err:
            lags = {u.name: Lag("waiting", f"etcd unreachable ({err})") for u in units}
        count(len(units) - len(lags), len(units))
        if not lags:
            return
        progress = f"{len(units) - len(lags)}/{len(units)} units converged"
        if progress != shown:
            report(progress)
            shown = progress
        failed = {n: lag for n, lag in lags.items() if lag.kind == FAILED}
        if failed:
            raise OperationFailed(_failure_text(registry, failed))
        now = time.monotonic()
        if now >= explained_at + EXPLAIN_EVERY_S:
            # Asking the scheduler reads every machine, job and assignment: not each poll.
            pending = _unschedulable(registry, [n for n, lag in lags.items()
                                                if lag.machine is None])
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
            raise OperationFailed("cannot be scheduled: " + "; ".join(
                f"{n}: {why}" for n, why in sorted(stuck.items())))
        if now >= deadline:
            detail = "; ".join(f"{n}: {lag.reason}" for n, lag in sorted(lags.items())[:10])
            raise OperationFailed(f"{len(lags)} units did not converge in time: {detail}")
        time.sleep(POLL_S)


def _announced(registry: Registry, units: list[DesiredUnit], since: int) -> set[str]:
    prefixes = {u.announcement.key.rsplit("/", 1)[0] + "/" for u in units if u.announcement}
    found: set[str] = set()
    for prefix in prefixes:
        _, kvs = registry.etcd.snapshot(prefix)
        found.update(kv.key for kv in kvs if kv.mod_revision > since)
    return found


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


def _failure_text(registry: Registry, failed: dict[str, Lag]) -> str:
    parts = []
    for name, lag in sorted(failed.items()):
        text = f"{name} {lag.reason}"
        tail = journal_tail(registry, name, lag.machine)
        if tail:
            text += "; its last log lines:\n" + "\n".join(f"    {line}" for line in tail)
        parts.append(text)
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
    except Exception:  # noqa: BLE001 - the log is a courtesy; the failure is reported anyway
        return []
    return text.strip().splitlines()[-JOURNAL_LINES:]
