"""The agent: announce this machine and run exactly the units assigned to it.

It watches only its own assignments (`assign/<id>/`) and the global units,
asks the pure `plan_tasks` what to do and has its runner do it, publishing
each unit's state under its machine lease.

Fail static: when etcd cannot be reached the agent keeps its units running as
they are. When etcd answers again and its lease has expired meanwhile, it first
re-reads its assignments and stops what was moved elsewhere, and only then
registers again, so a unit is not left running on two machines.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from fleetd.agent.reconcile import Action, Current, Desired, Task, plan_tasks
from fleetd.job import JobState
from fleetd.machine import Machine
from fleetd.registry.etcd import KV, Event, RegistryUnavailable, WatchCompacted
from fleetd.registry.keys import Kind
from fleetd.registry.registry import Registry
from fleetd.runner.base import Runner, RunnerError, UnitStatus
from fleetd.unit.names import is_template_name
from fleetd.unit.xfleet import matches_metadata

WAKE = object()  # queued by `wake`; carries no events

log = logging.getLogger("fleetd.agent")


class Agent:
    def __init__(self, registry: Registry, runner: Runner, machine: Machine, ttl: int) -> None:
        self.registry = registry
        self.keys = registry.keys
        self.runner = runner
        self.machine = machine
        self.ttl = max(1, int(ttl))
        self.lease: int | None = None
        self.renewed_at = 0.0
        self.connected = False
        self.inbox: queue.Queue = queue.Queue()
        self._cancel_watches: list[Callable[[], None]] = []
        self.assigned: dict[str, Desired] = {}
        self.global_units: dict[str, Desired] = {}
        self.loaded: dict[str, str] = {}  # unit -> hash the runner holds
        self.started: set[str] = set()
        # unit -> (hash, systemd states, launched) as last written to etcd
        self.published: dict[str, tuple[str, UnitStatus, bool]] = {}
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
        while not stop.is_set():
            try:
                if self.lease is None:
                    self._join()
                elif not self.connected:
                    self._resync()
                self._wait_and_handle(stop)
                self._keepalive()
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
                stop.wait(min(1.0, self.ttl / 3))
        self.shutdown()

    def shutdown(self) -> None:
        self._cancel()
        self.runner.shutdown()
        if getattr(self.runner, "keeps_units_on_shutdown", False):
            # Units still run here: leaving the cluster now would start them elsewhere too.
            # The lease lapses after the TTL unless a restarted fleetd takes over first.
            self.lease = None
            return
        if self.lease is not None:
            self.registry.etcd.revoke(self.lease)  # machine and state keys go with it
            self.lease = None

    def wake(self) -> None:
        """Cut short the wait for watch events (on shutdown: the stop event is not a queue)."""
        self.inbox.put(WAKE)

    def _wait_and_handle(self, stop: threading.Event) -> None:
        timeout = max(0.0, self.renewed_at + self.ttl / 3 - time.monotonic())
        try:
            item = self.inbox.get(timeout=timeout)
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
        if changed and not stop.is_set():
            self.reconcile()

    def _keepalive(self) -> None:
        if self.lease is None or time.monotonic() < self.renewed_at + self.ttl / 3:
            return
        remaining = self.registry.etcd.keepalive(self.lease)
        if remaining <= 0:
            log.warning("machine lease expired; rejoining")
            self.lease = None
            self.connected = False
            self._cancel()
            return
        self.renewed_at = time.monotonic()

    # -- joining -----------------------------------------------------------------------------------
    def _join(self) -> None:
        """(Re)enter the cluster: read assignments and reconcile *before* announcing."""
        self._resync()
        etcd = self.registry.etcd
        self.lease = etcd.grant(self.ttl)
        self.renewed_at = time.monotonic()
        self.registry.register_machine(self.machine, self.lease)
        self.published.clear()  # the old lease took every state key with it
        self._republish()
        log.info("machine %s registered (%s)", self.machine.id, self.machine.public_ip)

    def _resync(self) -> None:
        self._cancel()
        revision, assignments = self.registry.assignments(self.machine.id)
        _, global_kvs = self.registry.etcd.snapshot(self.keys.of(Kind.GLOBAL), revision)
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
            if self.connected:
                log.info("etcd answers again: assignments re-read, unit states republished")

    def _republish(self) -> None:
        """Make the published states the runner's. While etcd was away, state changes were
        not written, unloads left their state keys behind, and runner events queued just
        before the resync went with the old inbox: without this a unit that started then
        would show its last published state (`activating`) until it changed again."""
        for name in [n for n in self.published if n not in self.loaded]:
            try:
                self.registry.clear_state(name, self.machine.id)
            except RegistryUnavailable:
                self.connected = False
                return
            del self.published[name]
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
                if self.connected and self.published.pop(task.unit, None) is not None:
                    self.registry.clear_state(task.unit, self.machine.id)
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
        """Write a unit's state: systemd's columns and whether this agent launched it (asked
        the runner to start it and not to stop it since), which stays true when the unit's
        process then fails, as fleet reports it."""
        digest = self.loaded.get(name)
        if digest is None or self.lease is None or not self.connected:
            return
        launched = name in self.started
        if self.published.get(name) == (digest, status, launched):
            return
        try:
            self.registry.publish_state(name, self.machine.id, digest, status, self.lease,
                                        launched=launched)
            self.published[name] = (digest, status, launched)
        except RegistryUnavailable:
            self.connected = False

    @property
    def desired_states(self) -> dict[str, JobState]:
        return {n: d.state for n, d in {**self.global_units, **self.assigned}.items()}
