"""The cluster's apply lock in etcd: at most one `provision apply` writes units at a time.

The key `lock/apply` is created only if absent, on its holder's lease: a holder that
exits releases it by revoking the lease, one that crashes loses it when the lease lapses.
Its create revision is the holder's fencing token: every write of the holder compares it
in the same transaction (`guard`), so a holder whose lease lapsed while it was stalled
cannot write after another apply took over. Each of the holder's write transactions also
rewrites the key's value (`progress`) with how far it got, which tells others what it is
doing and tells the holder itself whether a transaction whose reply was lost committed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetd.registry.registry import Registry


@dataclass(frozen=True)
class LockRecord:
    """The lock as stored: who holds it (the value its holder wrote) and its token."""

    info: Mapping[str, Any]   # host, pid, since, ... as the holder wrote them
    token: int                # create revision: the fencing token
    lease: int


class ApplyLockStore:
    """Reads and writes the `lock/apply` key of one fleet keyspace."""

    def __init__(self, registry: Registry) -> None:
        self.etcd = registry.etcd
        self.key = registry.keys.apply_lock()

    def read(self) -> LockRecord | None:
        kv = self.etcd.get(self.key)
        if kv is None:
            return None
        try:
            info = json.loads(kv.value)
        except ValueError:
            info = {}
        return LockRecord(info if isinstance(info, dict) else {}, kv.create_revision, kv.lease)

    def try_acquire(self, info: Mapping[str, Any], lease: int) -> int | None:
        """Create the key on `lease` if nobody holds it; our token, or None if held."""
        ops = self.etcd.ops
        self.etcd.txn([ops.version(self.key) == 0],
                      [ops.put(self.key, _encode(info), lease=lease)])
        # Read back either way: a retried transaction whose first reply was lost fails
        # its compare on our own key.
        record = self.read()
        if record is None or record.lease != lease:
            return None
        return record.token

    def break_lock(self, token: int) -> bool:
        """Delete the lock if it still has this token (its holder is known to be dead)."""
        ops = self.etcd.ops
        return self.etcd.txn([ops.create(self.key) == token], [ops.delete(self.key)])

    def guard(self, token: int) -> list:
        """Compares that hold only while the lock is still the one with this token."""
        return [self.etcd.ops.create(self.key) == token]

    def progress(self, info: Mapping[str, Any], lease: int) -> Any:  # etcd op
        """The op, for the holder's write transactions, that records how far it got."""
        return self.etcd.ops.put(self.key, _encode(info), lease=lease)


def _encode(info: Mapping[str, Any]) -> bytes:
    return json.dumps(dict(info), sort_keys=True, separators=(",", ":")).encode()
