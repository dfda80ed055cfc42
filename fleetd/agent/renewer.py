"""The agent's renewer: keeps the machine lease alive and writes the machine's heartbeats,
on a thread of its own, so that nothing the agent loop does (starting a thousand units,
writing their states) delays them. Engines judge a machine by the heartbeats they see
(fleetd.engine.liveness); etcd's lease only holds the machine's keys and is what an engine
revokes to fence it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from fleetd.registry.etcd import LeaseGone, RegistryUnavailable
from fleetd.registry.registry import Beat, Registry, heartbeat_period

log = logging.getLogger("fleetd.agent")


class Renewer:
    """Keeps one machine lease alive and writes the machine's heartbeats, on its own thread.

    Every heartbeat period it writes `heartbeat/<id>` under the lease (a write naming a
    revoked lease fails: that is how a fenced machine learns it), and every third of the
    TTL it refreshes the lease. etcd unreachable: it keeps trying (fail static). Lease gone:
    it sets `lost`, calls `on_lost` once and ends."""

    def __init__(self, registry: Registry, machine: str, lease: int, ttl: int,
                 on_lost: Callable[[], None]) -> None:
        self.registry = registry
        self.machine = machine
        self.lease = lease
        self.ttl = ttl
        self.period = heartbeat_period(ttl)
        self.on_lost = on_lost
        self.lost = False
        self.beats = 0
        self.last_beat = time.monotonic()  # the join transaction carried the first beat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agent-lease", daemon=True)

    def start(self) -> Renewer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(self.registry.etcd.timeout + 2)

    def _run(self) -> None:
        etcd = self.registry.etcd
        next_refresh = time.monotonic() + self.ttl / 3
        due = self.last_beat + self.period
        seq, failures = 0, 0
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            due = time.monotonic() + self.period
            try:
                attempt = max(0.5, self.period)  # see Etcd.put: a raft election drops writes
                if time.monotonic() >= next_refresh:
                    if etcd.keepalive(self.lease, attempt_timeout=attempt) <= 0:
                        raise LeaseGone("keepalive: lease not found")
                    next_refresh = time.monotonic() + self.ttl / 3
                seq += 1
                sent = time.monotonic()
                self.registry.beat(self.machine, Beat(self.lease, seq, sent),
                                   attempt_timeout=attempt)
                self.last_beat = sent
                self.beats += 1
                if failures:
                    log.info("heartbeats written again after %d failed", failures)
                    failures = 0
            except LeaseGone:
                if self._stop.is_set():
                    return
                self.lost = True
                log.warning("machine lease %x is gone (expired, or fenced by the engine)",
                            self.lease)
                self.on_lost()
                return
            except RegistryUnavailable as err:
                # Fail static: keep the units, try again on the next beat. The loop notices
                # the outage through its own calls.
                if not failures:
                    log.warning("heartbeat not written: %s", err)
                failures += 1
