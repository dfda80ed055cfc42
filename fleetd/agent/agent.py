"""The agent: announce this machine and run exactly the units assigned to it.

It watches only its own assignments (`assign/<id>/`) and the global units,
asks the pure `plan_tasks` what to do and has its runner do it, publishing
unit states under its machine lease in batched transactions.

Beside the loop, a renewer thread keeps the machine lease alive and writes a
heartbeat every tenth of the TTL; it never waits on unit work or on the
agent's other etcd writes, so a machine busy starting a thousand units is not
taken for dead. The engines judge liveness from those heartbeats.

Fail static: when etcd cannot be reached the agent keeps its units running as
they are. When its lease is gone (expired during an outage, or revoked by an
engine that judged this machine dead and fenced it), it re-reads its
assignments and stops what was moved elsewhere, and only then registers again,
in a transaction that fails if it was fenced after that read: a machine is
never registered while it runs a unit assigned elsewhere.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from fleetd.agent.reconcile import Action, Current, Desired, Task, plan_tasks
from fleetd.agent.renewer import Renewer
from fleetd.job import JobState
from fleetd.machine import Machine
from fleetd.registry.etcd import KV, Event, LeaseGone, RegistryUnavailable, WatchCompacted
from fleetd.registry.keys import Kind
from fleetd.registry.registry import Beat, Registry
from fleetd.runner.base import Runner, RunnerError, UnitStatus
from fleetd.unit.names import is_template_name
from fleetd.unit.xfleet import matches_metadata

WAKE = object()  # queued by `wake`; carries no events
RETRY_FIRST_S = 0.05  # first wait after etcd failed us; it grows to a second
IDLE_WAIT_S = 60.0  # the longest an idle agent loop sleeps without an event

log = logging.getLogger("fleetd.agent")


class LeaseLost(Exception):
    """The machine lease is gone: expired, or revoked by an engine (fenced)."""


class Agent:
    def __init__(self, registry: Registry, runner: Runner, machine: Machine, ttl: int) -> None:
        self.registry = registry
        self.keys = registry.keys
        self.runner = runner
        self.machine = machine
        self.ttl = max(1, int(ttl))
        self.lease: int | None = None
        self.renewer: Renewer | None = None
        self.connected = False
        self.inbox: queue.Queue = queue.Queue()
        self._cancel_watches: list[Callable[[], None]] = []
        self.assigned: dict[str, Desired] = {}
        self.global_units: dict[str, Desired] = {}
        self.loaded: dict[str, str] = {}  # unit -> hash the runner holds
        self.started: set[str] = set()
        # unit -> (hash, systemd states, launched): what etcd holds, and what to write next
        self.published: dict[str, tuple[str, UnitStatus, bool]] = {}
        self.unpublished: dict[str, tuple[str, UnitStatus, bool] | None] = {}  # None: clear
        self.turns = 0  # turns of the loop: an idle agent turns only for events (tests)
        self.fence_revision = 0  # mod revision of our fence key at the last assignment read
        runner.subscribe(lambda name, status: self.inbox.put(("state", name, status)))
        self._adopt()

    def _adopt(self) -> None:
        """Units a runner kept from an earlier fleetd (systemd: its units directory) count as
        loaded, and started when active: reconcile then keeps what is still wanted as it
        is, with no reload or restart, and unloads the rest."""
        adopt = getattr(self.runner, "adopt", None)
        if adopt is None:
            return
        found = adopt()
        if not found:
            return
        statuses = self.runner.units()
        for name, digest in found.items():
            self.loaded[name] = digest
            if statuses.get(name, UnitStatus()).is_active:
                self.started.add(name)
        log.info("adopted %d units left running by an earlier fleetd", len(found))

    # -- loop --------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        retry = RETRY_FIRST_S
        while not stop.is_set():
            self.turns += 1
            try:
                if self.renewer is not None and self.renewer.lost:
                    raise LeaseLost()
                if self.lease is None:
                    self._join()
                elif not self.connected:
                    self._resync()
                self._wait_and_handle(stop)
                self._flush()
                retry = RETRY_FIRST_S
            except LeaseLost:
                self._lease_lost()
            except RunnerError as err:
                # The runner could not be read (systemd re-executing, a bus hiccup): the
                # units are as they were; try again shortly instead of ending the agent.
                log.warning("runner unavailable (%s); retrying", err)
                stop.wait(1.0)
                continue
            except (RegistryUnavailable, WatchCompacted) as err:
                if self.connected:
                    log.warning("etcd unreachable (%s): keeping %d units as they are",
                                err, len(self.loaded))
                self.connected = False
                self._cancel()
                # Try again at once (the client fails over to another member on the failed
                # call: units placed here meanwhile should not wait), then back off.
                stop.wait(retry)
                retry = min(retry * 4, min(1.0, self.ttl / 3))
        self.shutdown()

    def shutdown(self) -> None:
        self._cancel()
        self.runner.shutdown()
        renewer, self.renewer = self.renewer, None
        if renewer is not None:
            renewer.stop()
        if getattr(self.runner, "keeps_units_on_shutdown", False):
            # Units still run here: leaving the cluster now would start them elsewhere too.
            # The lease lapses after the TTL unless a restarted fleetd takes over first.
            self.lease = None
            return
        if self.lease is not None:
            # Our units are stopped: say so, so engines need not wait a TTL to move them,
            # then drop the lease (machine, heartbeat and state keys go with it).
            try:
                self.registry.beat(self.machine.id, Beat(self.lease, -1, time.monotonic(),
                                                         leaving=True))
            except (RegistryUnavailable, LeaseGone):
                pass
            self.registry.etcd.revoke(self.lease)
            self.lease = None

    def wake(self) -> None:
        """Cut short the wait for watch events (on shutdown: the stop event is not a queue)."""
        self.inbox.put(WAKE)

    def _wait_and_handle(self, stop: threading.Event) -> None:
        try:
            # Nothing here polls: watch events, runner events, a lost lease (the renewer's
            # `on_lost`) and shutdown (`wake`) all arrive through the inbox. The timeout
            # only bounds how long a wake-up missed by a bug could go unnoticed.
            item = self.inbox.get(timeout=IDLE_WAIT_S)
        except queue.Empty:
            return
        items = [item]
        while True:
            try:
                items.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        changed = False
        for item in items:
            if item is WAKE:
                continue
            if isinstance(item, Exception):
                raise item
            if isinstance(item, tuple) and item[0] == "state":
                self._publish(item[1], item[2])
            else:
                changed |= self._apply(item)
        if self.renewer is not None and self.renewer.lost:
            raise LeaseLost()
        if changed and not stop.is_set():
            self.reconcile()

    def _lease_lost(self) -> None:
        """The lease took our machine, heartbeat and state keys with it. Read the assignments
        again (stopping what moved) and register anew: `_join`, on the next turn."""
        log.warning("machine lease gone: re-reading assignments before registering again")
        renewer, self.renewer = self.renewer, None
        if renewer is not None:
            renewer.stop()
        self.lease = None
        self.connected = False
        self._cancel()
        self.published.clear()
        self.unpublished.clear()

    # -- joining -----------------------------------------------------------------------------------
    def _join(self) -> None:
        """(Re)enter the cluster: read assignments and reconcile *before* announcing, in a
        registration that fails if an engine fenced us after that read."""
        etcd = self.registry.etcd
        while True:
            self._resync()
            lease = etcd.grant(self.ttl)
            first = Beat(lease, 0, time.monotonic())
            try:
                joined = self.registry.join(self.machine, lease, self.fence_revision, first)
            except BaseException:
                etcd.revoke(lease)
                raise
            if joined:
                break
            etcd.revoke(lease)
            log.warning("fenced while joining: reading assignments again")
        self.lease = lease
        self.renewer = Renewer(self.registry, self.machine.id, lease, self.ttl,
                               self.wake).start()
        self.published.clear()  # an old lease took every state key with it
        self._republish()
        log.info("machine %s registered (%s)", self.machine.id, self.machine.public_ip)

    def _resync(self) -> None:
        self._cancel()
        revision, assignments = self.registry.assignments(self.machine.id)
        _, global_kvs = self.registry.etcd.snapshot(self.keys.of(Kind.GLOBAL), revision)
        self.fence_revision = self.registry.fence_revision(self.machine.id, revision)
        self.assigned = {a.name: Desired(a.hash, a.desired) for a in assignments}
        self.global_units = {}
        for kv in global_kvs:
            self._apply_global(kv)
        # A fresh queue; the runner's listener (subscribed once, in __init__) reads
        # self.inbox when it fires, so it follows without subscribing again.
        self.inbox = queue.Queue()
        etcd = self.registry.etcd
        self._cancel_watches = [
            etcd.watch(self.keys.assignments_of(self.machine.id), revision + 1, self.inbox),
            etcd.watch(self.keys.of(Kind.GLOBAL), revision + 1, self.inbox),
        ]
        self.connected = True
        self.reconcile()
        if self.lease is not None:
            self._republish()
            self._flush()
            if self.connected:
                log.info("etcd answers again: assignments re-read, unit states republished")

    def _republish(self) -> None:
        """Make the published states the runner's. While etcd was away, state changes were
        not written, unloads left their state keys behind, and runner events queued just
        before the resync went with the old inbox: without this a unit that started then
        would show its last published state (`activating`) until it changed again."""
        for name in self.published:
            if name not in self.loaded:
                self.unpublished[name] = None
        statuses = self.runner.units()
        for name in list(self.loaded):
            self._publish(name, statuses.get(name, UnitStatus("loaded")))

    def _cancel(self) -> None:
        for cancel in self._cancel_watches:
            cancel()
        self._cancel_watches = []

    # -- desired state -----------------------------------------------------------------------------
    def _apply(self, events: list[Event]) -> bool:
        changed = False
        for event in events:
            parsed = self.keys.parse(event.key)
            if parsed is None:
                continue
            if parsed.kind is Kind.ASSIGN and parsed.machine == self.machine.id:
                if event.value is None:
                    changed |= self.assigned.pop(parsed.name, None) is not None
                else:
                    a = self.registry.assignment_from_kv(KV(event.key, event.value,
                                                            event.revision))
                    if a is not None:
                        self.assigned[a.name] = Desired(a.hash, a.desired)
                        changed = True
            elif parsed.kind is Kind.GLOBAL:
                if event.value is None:
                    changed |= self.global_units.pop(parsed.name, None) is not None
                else:
                    self._apply_global(KV(event.key, event.value, event.revision))
                    changed = True
        return changed

    def _apply_global(self, kv: KV) -> None:
        record = self.registry.job_from_kv(kv)
        if record is None:
            return
        job = record.job
        if is_template_name(job.name):  # a pattern for instances: never run as such
            return
        if matches_metadata(job.options, self.machine.metadata):
            self.global_units[job.name] = Desired(job.hash, job.desired)
        else:
            self.global_units.pop(job.name, None)

    # -- acting ------------------------------------------------------------------------------------
    def reconcile(self) -> None:
        desired = {**self.global_units, **self.assigned}
        statuses = self.runner.units()
        current = {name: Current(digest, statuses.get(name, UnitStatus()), name in self.started)
                   for name, digest in self.loaded.items()}
        tasks = plan_tasks(desired, current)
        for task in tasks:
            self._run(task)
        # Loads, and starts and stops (they change the agent's own `launched` report even
        # when systemd's states stay as they were, e.g. a unit that failed at once).
        touched = list(dict.fromkeys(t.unit for t in tasks if t.action is not Action.UNLOAD
                                     and t.unit in self.loaded))
        if touched:
            # One state read for the whole pass, after the starts: with systemd that is
            # also where the loads' one Reload happens, instead of one per unit.
            statuses = self.runner.units()
            for name in touched:
                self._publish(name, statuses.get(name, UnitStatus("loaded")))

    def _run(self, task: Task) -> None:
        log.info("%s %s: %s", task.action.value, task.unit, task.reason)
        try:
            if task.action is Action.UNLOAD:
                self.runner.unload(task.unit)
                self.loaded.pop(task.unit, None)
                self.started.discard(task.unit)
                if task.unit in self.published:
                    self.unpublished[task.unit] = None
                else:
                    self.unpublished.pop(task.unit, None)
            elif task.action is Action.LOAD:
                unit = self.registry.unit(task.hash)
                if unit is None:
                    log.error("content %s of %s is missing from etcd", task.hash[:7], task.unit)
                    return
                self.runner.load(task.unit, unit)
                self.loaded[task.unit] = task.hash
            elif task.action is Action.START:
                self.runner.start(task.unit)
                self.started.add(task.unit)
            elif task.action is Action.STOP:
                self.runner.stop(task.unit)
                self.started.discard(task.unit)
        except RunnerError as err:
            log.error("%s %s failed: %s", task.action.value, task.unit, err)

    def _publish(self, name: str, status: UnitStatus) -> None:
        """Queue a unit's state for the next `_flush`: systemd's columns and whether this
        agent launched it (asked the runner to start it and not to stop it since), which
        stays true when the unit's process then fails, as fleet reports it. The runner's
        events come one by one; etcd gets them in batches."""
        digest = self.loaded.get(name)
        if digest is None:
            return
        launched = name in self.started
        if self.published.get(name) == (digest, status, launched):
            self.unpublished.pop(name, None)
        else:
            self.unpublished[name] = (digest, status, launched)

    def _flush(self) -> None:
        """Write the queued unit states: transactions of up to 128 keys under the lease."""
        if not self.unpublished or self.lease is None or not self.connected:
            return
        changes, self.unpublished = self.unpublished, {}
        try:
            self.registry.write_states(self.machine.id, self.lease, changes)
        except LeaseGone as err:
            raise LeaseLost() from err
        except RegistryUnavailable:
            self.connected = False  # the resync republishes everything
            return
        for name, change in changes.items():
            if change is None:
                self.published.pop(name, None)
            else:
                self.published[name] = change

    @property
    def desired_states(self) -> dict[str, JobState]:
        return {n: d.state for n, d in {**self.global_units, **self.assigned}.items()}
