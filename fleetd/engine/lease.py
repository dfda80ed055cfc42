"""Engine leadership: one leader at a time, held through an etcd lease.

The leader key is put with a lease only if absent; its create revision is the
fencing token every engine write compares, so a leader that lost its lease
(paused, partitioned) cannot write a stale plan after a new leader took over.
"""

from __future__ import annotations

import logging
import time

from fleetd.registry.etcd import Etcd, RegistryUnavailable  # noqa: F401 - raised through

log = logging.getLogger("fleetd.engine")


class Leadership:
    def __init__(self, etcd: Etcd, leader_key: str, machine_id: str, ttl: int) -> None:
        self.etcd = etcd
        self.key = leader_key
        self.machine_id = machine_id
        self.ttl = max(1, int(ttl))
        self.lease: int | None = None
        self.token: int = 0  # create revision of our leader key
        self.renewed_at = 0.0

    @property
    def is_leader(self) -> bool:
        return self.lease is not None

    def guard(self) -> list:
        """Compare that holds only while our leader key is the one in etcd."""
        return [self.etcd.ops.create(self.key) == self.token]

    def due(self) -> float:
        """Seconds until the next renewal is due."""
        return max(0.0, self.renewed_at + self.ttl / 3 - time.monotonic())

    def ensure(self) -> bool:
        """Renew our lease or try to become leader; True while we lead.

        Raises RegistryUnavailable when etcd cannot be reached (leadership is then
        given up: its lease may expire before etcd answers again)."""
        if self.lease is not None:
            if self.due() > 0:
                return True
            try:
                remaining = self.etcd.keepalive(self.lease)
            except RegistryUnavailable:
                self.lease, self.token = None, 0
                raise
            if remaining > 0:
                self.renewed_at = time.monotonic()
                return True
            log.warning("engine leadership lost (lease expired or etcd unreachable)")
            self.lease, self.token = None, 0
            return False
        return self._try_acquire()

    def _try_acquire(self) -> bool:
        current = self.etcd.get(self.key)
        if current is not None:
            return False
        lease = self.etcd.grant(self.ttl)
        ops = self.etcd.ops
        won = self.etcd.txn([ops.version(self.key) == 0],
                            [ops.put(self.key, self.machine_id, lease=lease)])
        if not won:
            self.etcd.revoke(lease)
            return False
        kv = self.etcd.get(self.key)
        if kv is None or kv.value.decode() != self.machine_id:
            return False
        self.lease, self.token = lease, kv.create_revision
        self.renewed_at = time.monotonic()
        log.info("became engine leader (token %d)", self.token)
        return True

    def resign(self) -> None:
        if self.lease is not None:
            self.etcd.revoke(self.lease)
        self.lease, self.token = None, 0
