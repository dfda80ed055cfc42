"""A machine busy with its own work keeps its place in the cluster.

One real fleetd (process runner, agent TTL 3 s: close to etcd's minimum lease TTL of 2 s
with its default election timeout) is handed hundreds of `/bin/sleep infinity` units at
once. Starting them keeps its agent loop busy for many TTLs; the machine lease is renewed
and the heartbeat written beside that loop, and unit states go out in batches, so the
machine key never disappears meanwhile (it used to: the agent renewed its lease only
between units, and lost it, and every unit moved, and came back)."""

from __future__ import annotations

import queue
import time
import uuid

from fleetd.job import JobState
from fleetd.registry.keys import Kind
from fleetd.unit.unitfile import parse_unit_file
from tests.support.etcd import wait_for
from tests.support.fleet import FleetHarness

UNITS = 1000
UNIT = "[Service]\nExecStart=/bin/sleep infinity\n"


def test_hundreds_of_units_at_once_never_cost_the_machine_its_lease(etcd_server, tmp_path):
    harness = FleetHarness(etcd_server.url, f"/many-{uuid.uuid4().hex[:8]}/", tmp_path, ttl=3)
    try:
        fleetd = harness.start("n1")
        machine = fleetd.machine_id
        etcd, keys = harness.etcd, harness.registry.keys
        gone: queue.Queue = queue.Queue()
        cancel = etcd.watch(keys.of(Kind.MACHINE), etcd.revision() + 1, gone)
        try:
            started = time.monotonic()
            unit = parse_unit_file(UNIT)
            for i in range(1, UNITS + 1):
                harness.registry.create_job(f"job@{i}.service", unit, JobState.LAUNCHED)

            def active() -> int:
                return sum(1 for s in harness.registry.states()
                           if s.status.active == "active" and s.machine == machine)
            wait_for(lambda: active() == UNITS, 240, interval=0.5,
                     message=f"{UNITS} units active")
            took = time.monotonic() - started
            deleted = []
            while True:
                try:
                    batch = gone.get_nowait()
                except queue.Empty:
                    break
                if isinstance(batch, Exception):
                    raise batch
                deleted += [e.key for e in batch if e.value is None]
        finally:
            cancel()
        assert deleted == [], f"the machine key disappeared while its units started: {deleted}"
        assert took > harness.ttl, \
            f"{UNITS} units started in {took:.1f}s: too few to keep the agent busy for a TTL"
        assert "machine lease gone" not in fleetd.log()
    finally:
        harness.close()
