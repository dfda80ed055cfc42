"""The announce loop: check, then hold or drop the leased key (see the package docstring)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from fleetd.machine import Machine
from fleetd.registry.etcd import Etcd, RegistryUnavailable
from fleetd.registry.keys import Keys
from fleetd.wakeup import SignalSafeEvent

log = logging.getLogger("fleetd.announce")


@dataclass(frozen=True)
class Target:
    unit: str
    key: str
    port: int
    ttl: int
    interval: float
    machine: str
    host: str


class Announcer:
    def __init__(self, etcd: Etcd, keys: Keys, target: Target,
                 check: Callable[[str], bool]) -> None:
        """`check(ip)` runs one health check of the service on that address."""
        self.etcd = etcd
        self.keys = keys
        self.target = target
        self.check = check
        self.lease: int | None = None
        self.ip: str | None = None

    def run(self, stop: threading.Event | SignalSafeEvent) -> None:
        while not stop.is_set():
            try:
                self.step()
            except RegistryUnavailable as err:
                # The lease lapses by itself if this lasts; nothing to undo here.
                log.warning("etcd unreachable: %s", err)
                self.lease = None
            stop.wait(self.target.interval)
        self.withdraw()

    def step(self) -> None:
        if self.ip is None:
            self.ip = self._machine_ip()
            if self.ip is None:
                return
        healthy = self.check(self.ip)
        if healthy and self.lease is None:
            self.lease = self.etcd.grant(self.target.ttl)
            self.etcd.put(self.target.key, self.value(), lease=self.lease)
            log.warning("%s healthy on %s:%d: announced at %s", self.target.unit, self.ip,
                        self.target.port, self.target.key)
        elif healthy:
            if self.etcd.keepalive(self.lease) <= 0:  # expired meanwhile: announce again
                self.lease = None
                self.step()
        elif self.lease is not None:
            log.warning("%s failed its check on %s:%d: withdrawn from %s", self.target.unit,
                        self.ip, self.target.port, self.target.key)
            self.withdraw()

    def withdraw(self) -> None:
        if self.lease is not None:
            self.etcd.revoke(self.lease)  # the key goes with its lease
            self.lease = None

    def value(self) -> str:
        return json.dumps({"host": self.target.host, "ip": self.ip, "port": self.target.port,
                           "machine": self.target.machine, "unit": self.target.unit},
                          sort_keys=True)

    def _machine_ip(self) -> str | None:
        kv = self.etcd.get(self.keys.machine(self.target.machine))
        if kv is None:
            log.warning("machine %s is not registered (yet); waiting", self.target.machine)
            return None
        return Machine.from_json(json.loads(kv.value)).public_ip or None
