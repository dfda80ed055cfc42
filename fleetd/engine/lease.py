"""Engine leadership: one leader at a time, held through an etcd lease.

The leader key is put with a lease only if absent; its create revision is the
fencing token every engine write compares, so a leader that lost its lease
(paused, partitioned) cannot write a stale plan after a new leader took over.

A standby does not wait for etcd to expire a dead leader's lease (etcd renews every lease
by an election on a raft leader change, which is when leaders tend to die): when its own
judgement (liveness.py) says the leader's machine is dead, it `depose`s it — revokes that
lease — and acquires on its next try.

While leading, a small thread renews the lease every ttl/3, independent of the engine's
loop: a pass or a cache load that takes longer than the TTL (50,000 units on a busy
2-core machine) must not cost the leadership it is working under — that livelocked
bench/schedule.py at 5,000 machines x 50,000 units (load, lose the lease, load again).
When it cannot renew, it calls `on_lost`: the engine's loop sleeps until something
happens instead of looking at the renewals on a timer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fleetd.registry.etcd import Etcd, RegistryUnavailable

log = logging.getLogger("fleetd.engine")


@dataclass(frozen=True)
class Holder:
    """Who held the leader key when we last looked."""

    machine: str
    lease: int
    revision: int = 0  # the store's revision when it was read: watch the key from the next


class Leadership:
    def __init__(self, etcd: Etcd, leader_key: str, machine_id: str, ttl: int,
                 on_lost: Callable[[], None] | None = None) -> None:
        self.etcd = etcd
        self.on_lost = on_lost
        self.key = leader_key
        self.machine_id = machine_id
        self.ttl = max(1, int(ttl))
        self.lease: int | None = None
        self.token: int = 0  # create revision of our leader key
        self.renewed_at = 0.0
        self._lost: str | None = None  # set by the renewer: "expired" or "unreachable"
        self._stop_renewing = threading.Event()
        self._renewer: threading.Thread | None = None
        self.answered = False  # the last ensure() that asked etcd got an answer
        self.holder: Holder | None = None  # the leader seen by the last failed acquire

    @property
    def is_leader(self) -> bool:
        return self.lease is not None

    def guard(self) -> list:
        """Compare that holds only while our leader key is the one in etcd."""
        return [self.etcd.ops.create(self.key) == self.token]

    def ensure(self) -> bool:
        """True while we lead (the renewer keeps the lease); else try to become leader.

        Raises RegistryUnavailable when etcd could not be reached to renew (leadership is
        then given up: its lease may expire before etcd answers again)."""
        if self.lease is not None:
            lost = self._lost
            if lost is None:
                return True
            self._drop()
            if lost == "unreachable":
                self.answered = False
                raise RegistryUnavailable("engine lease could not be renewed")
            log.warning("engine leadership lost (lease expired)")
            return False
        return self._try_acquire()

    def _renew(self, lease: int, stop: threading.Event) -> None:
        while not stop.wait(self.ttl / 3):
            try:
                remaining = self.etcd.keepalive(lease)
            except RegistryUnavailable:
                self._lose("unreachable", stop)
                return
            if remaining <= 0:
                self._lose("expired", stop)
                return
            self.renewed_at = time.monotonic()

    def _lose(self, why: str, stop: threading.Event) -> None:
        if stop.is_set():
            return  # resigned meanwhile: nothing to tell
        self._lost = why
        if self.on_lost is not None:
            self.on_lost()

    def _drop(self) -> None:
        self._stop_renewing.set()
        self.lease, self.token, self._lost = None, 0, None

    def _try_acquire(self) -> bool:
        self.answered = False
        revision, found, _ = self.etcd.range(self.key, self.key + "\0", 1)
        self.answered = True
        if found:
            current = found[0]
            self.holder = Holder(current.value.decode(errors="replace").strip(), current.lease,
                                 revision)
            return False
        self.holder = None
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
        self.lease, self.token, self._lost = lease, kv.create_revision, None
        self.renewed_at = time.monotonic()
        self._stop_renewing = threading.Event()
        self._renewer = threading.Thread(target=self._renew, args=(lease, self._stop_renewing),
                                         name="engine-lease", daemon=True)
        self._renewer.start()
        log.info("became engine leader (token %d)", self.token)
        return True

    def depose(self, holder: Holder) -> None:
        """Revoke another leader's lease (it was judged dead): its key goes, every write it
        might still send fails its guard, and the next `ensure` can win. Raises
        RegistryUnavailable if etcd could not confirm it."""
        if holder.lease:
            self.etcd.fence(holder.lease)
        self.holder = None

    def resign(self) -> None:
        lease = self.lease
        self._drop()
        if lease is not None:
            self.etcd.revoke(lease)
