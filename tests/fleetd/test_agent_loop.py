"""The agent's loop against a real etcd and a real process runner, wrapped to misbehave:
a runner that cannot be read for a moment does not end the agent, and resyncs do not pile
up listeners on the runner."""

from __future__ import annotations

import threading
import uuid

import pytest

from fleetd.agent.agent import Agent
from fleetd.machine import Machine
from fleetd.registry.etcd import Etcd
from fleetd.registry.registry import Registry
from fleetd.runner.base import RunnerError
from fleetd.runner.process import ProcessRunner
from tests.support.etcd import wait_for


class FlakyRunner:
    """A ProcessRunner whose first `failures` state reads fail, counting subscriptions."""

    def __init__(self, inner: ProcessRunner, failures: int) -> None:
        self.inner = inner
        self.failures = failures
        self.subscriptions = 0

    def units(self):  # noqa: ANN201 - the Runner interface
        if self.failures > 0:
            self.failures -= 1
            raise RunnerError("systemd could not read unit states: re-executing")
        return self.inner.units()

    def subscribe(self, listener) -> None:  # noqa: ANN001
        self.subscriptions += 1
        self.inner.subscribe(listener)

    def __getattr__(self, name: str):  # noqa: ANN204 - everything else as is
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
        for _ in range(3):  # what every etcd outage does
            agent.connected = False
            wait_for(lambda: agent.connected, 10, message="resynced")
        assert runner.subscriptions == 1
    finally:
        stop.set()
        agent.wake()
        thread.join(15)
    assert not thread.is_alive()
