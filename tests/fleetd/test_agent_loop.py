"""The agent's loop against a real etcd and a real process runner, wrapped to misbehave:
a runner that cannot be read for a moment does not end the agent, and resyncs do not pile
up listeners on the runner."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from fleetd.agent.agent import Agent
from fleetd.job import JobState
from fleetd.machine import Machine
from fleetd.registry.etcd import Etcd, RegistryUnavailable
from fleetd.registry.registry import Registry
from fleetd.runner.base import RunnerError
from fleetd.runner.process import ProcessRunner
from fleetd.unit.unitfile import parse_unit_file
from tests.support.etcd import wait_for


class FlakyRunner:
    """A ProcessRunner whose first `failures` state reads fail, counting subscriptions."""

    def __init__(self, inner: ProcessRunner, failures: int) -> None:
        self.inner = inner
        self.failures = failures
        self.subscriptions = 0

    def units(self):  # the Runner interface
        if self.failures > 0:
            self.failures -= 1
            raise RunnerError("systemd could not read unit states: re-executing")
        return self.inner.units()

    def subscribe(self, listener) -> None:
        self.subscriptions += 1
        self.inner.subscribe(listener)

    def __getattr__(self, name: str):  # everything else as is
        return getattr(self.inner, name)


@pytest.fixture
def registry(etcd_server):
    etcd = Etcd([etcd_server.url], timeout=3)
    yield Registry(etcd, f"/agent-{uuid.uuid4().hex[:8]}/")
    etcd.close()


def test_runner_errors_are_retried_and_resyncs_do_not_add_listeners(registry, tmp_path):
    machine = Machine(uuid.uuid4().hex, "127.0.0.1")
    runner = FlakyRunner(ProcessRunner(tmp_path, machine.id, "node"), failures=3)
    agent = Agent(registry, runner, machine, ttl=3)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: machine.id in registry.machines()[1], 15,
                 message="registered once the runner answers again")
        assert thread.is_alive() and runner.failures == 0
        for _ in range(3):  # what every etcd outage does (inside the loop, which goes on)
            agent.connected = False
            agent.wake()
            wait_for(lambda: agent.connected, 10, message="resynced")
        assert runner.subscriptions == 1
    finally:
        stop.set()
        agent.wake()
        thread.join(15)
    assert not thread.is_alive()


def published(registry: Registry, name: str) -> tuple[str, str] | None:
    for record in registry.states():
        if record.name == name:
            return record.status.active, record.status.sub
    return None


def test_states_that_changed_while_etcd_was_away_are_published_on_resync(registry, tmp_path):
    """The CI failure this comes from: a watch broke just as a unit started; its
    `active` state was never written and `activating/start` stayed published for good."""
    flag = tmp_path / "go"
    unit = parse_unit_file(
        "[Service]\n"
        f"ExecStartPre=/bin/sh -c 'while [ ! -e {flag} ]; do sleep 0.02; done'\n"
        "ExecStart=/bin/sleep 600\n"
        "[X-Fleet]\nGlobal=true\n")
    registry.create_job("held.service", unit, JobState.LAUNCHED)
    machine = Machine(uuid.uuid4().hex, "127.0.0.1")
    runner = ProcessRunner(tmp_path / "runner", machine.id, "node")
    agent = Agent(registry, runner, machine, ttl=3)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: published(registry, "held.service") == ("activating", "start-pre"),
                 15, message="start-pre published")
        agent.inbox.put(RegistryUnavailable("watch stream broke"))  # what a broken watch sends
        wait_for(lambda: not agent.connected, 5, message="the agent notices the break")
        flag.touch()  # the unit becomes active while the agent is not connected
        wait_for(lambda: runner.units()["held.service"].active == "active", 10,
                 message="the runner runs it")
        wait_for(lambda: published(registry, "held.service") == ("active", "running"), 10,
                 message="the resynced agent publishes the state it missed")
    finally:
        stop.set()
        agent.wake()
        thread.join(15)
    assert not thread.is_alive()


class SlowRunner(FlakyRunner):
    """A ProcessRunner whose starts take `delay` seconds each (a busy machine)."""

    def __init__(self, inner: ProcessRunner, delay: float) -> None:
        super().__init__(inner, failures=0)
        self.delay = delay
        self.starting = threading.Event()

    def start(self, name: str) -> None:
        self.starting.set()
        threading.Event().wait(self.delay)  # the unit work itself, not a wait for anything
        self.inner.start(name)


def test_the_lease_is_renewed_while_the_loop_is_busy_with_units(registry, tmp_path):
    """Unit work that keeps the agent loop busy for three TTLs costs the machine nothing:
    its heartbeats go on and its machine key never disappears."""
    import queue as queue_module

    from fleetd.registry.keys import Kind

    machine = Machine(uuid.uuid4().hex, "127.0.0.1")
    runner = SlowRunner(ProcessRunner(tmp_path, machine.id, "node"), delay=3 * 3)
    agent = Agent(registry, runner, machine, ttl=3)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: machine.id in registry.machines()[1], 15, message="registered")
        events: queue_module.Queue = queue_module.Queue()
        cancel = registry.etcd.watch(registry.keys.of(Kind.MACHINE),
                                     registry.etcd.revision() + 1, events)
        try:
            registry.create_job("slow.service",
                                parse_unit_file("[Service]\nExecStart=/bin/sleep 600\n"
                                                "[X-Fleet]\nGlobal=true\n"), JobState.LAUNCHED)
            assert runner.starting.wait(15), "the slow start began"
            first = registry.heartbeats()[1][machine.id].seq
            wait_for(lambda: runner.inner.units().get("slow.service") is not None
                     and runner.inner.units()["slow.service"].active == "active",
                     3 * 3 + 15, message="the slow start done")
            last = registry.heartbeats()[1][machine.id].seq
        finally:
            cancel()
        deleted = []
        while not events.empty():
            batch = events.get()
            deleted += [e.key for e in batch if e.value is None] if isinstance(batch, list) \
                else [repr(batch)]
        assert deleted == [], f"the machine key went while the loop was busy: {deleted}"
        assert last - first >= 3 * 3, f"heartbeats {first} -> {last} while busy (9 s)"
    finally:
        stop.set()
        agent.wake()
        thread.join(30)


def test_an_idle_agent_sleeps_and_sends_only_heartbeats_and_keepalives(etcd_server, tmp_path):
    """With its units running and nothing changing, the agent's loop does not turn at all
    (nothing it waits for comes from a timer) and its etcd client sends only the renewer's
    heartbeats and lease keepalives."""
    etcd = Etcd([etcd_server.url], timeout=3)  # the agent's own client: its requests alone
    registry = Registry(etcd, f"/agent-{uuid.uuid4().hex[:8]}/")
    machine = Machine(uuid.uuid4().hex, "127.0.0.1")
    runner = ProcessRunner(tmp_path, machine.id, "node")
    agent = Agent(registry, runner, machine, ttl=3)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        for i in range(3):
            registry.create_job(f"idle{i}.service",
                                parse_unit_file("[Service]\nExecStart=/bin/sleep 600\n"
                                                f"X={i}\n[X-Fleet]\nGlobal=true\n"),
                                JobState.LAUNCHED)
        wait_for(lambda: [published(registry, f"idle{i}.service") for i in range(3)]
                 == [("active", "running")] * 3, 15, message="three units running, published")
        wait_for(lambda: not agent.unpublished and agent.inbox.empty(), 5, message="at rest")
        renewer = agent.renewer
        assert renewer is not None
        turns, requests, beats = agent.turns, etcd.requests, renewer.beats
        started = time.monotonic()
        wait_for(lambda: renewer.beats >= beats + 10, 15, message="ten heartbeats")
        elapsed = time.monotonic() - started
        keepalives = elapsed / (3 / 3) + 1
        assert agent.turns == turns, f"the idle loop turned {agent.turns - turns} times"
        sent = etcd.requests - requests
        assert sent <= renewer.beats - beats + keepalives, (
            f"{sent} requests for {renewer.beats - beats} heartbeats in {elapsed:.1f}s")
    finally:
        stop.set()
        agent.wake()
        thread.join(30)
        etcd.close()
