"""Guarded batch writes of a plan, sent while the plan is still being made.

A plan's writes go in transactions of at most MAX_TXN_OPS operations, each guarded by the
same compares (e.g. "I still hold the engine lease"). Two kinds:

- ordered operations (removals, with whatever must land with the first of them) commit one
  transaction after another, before anything else is sent;
- unordered puts (keys none of the others touch) follow as they are produced: each full
  batch is sent at once without waiting for etcd's answer, up to `in_flight` transactions
  on their way (etcd commits concurrent transactions together), so the writer keeps
  deciding while etcd writes what it decided. No thread is involved: threads sending
  batches spent the pass taking turns at the interpreter lock with the writer feeding them.

A refused batch (a compare failed) is counted, never retried: the caller's view is stale.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from types import TracebackType

from fleetd.registry.etcd import Etcd, SentTxn, Txn

MAX_TXN_OPS = 128  # etcd's default --max-txn-ops
COMMIT_IN_FLIGHT = 8  # transactions of one plan's unordered puts on their way at once


class BatchCommit:
    """One plan's writes: `ordered(...)` first, then `put(key, value)` or `add(op)` per
    unordered write, then `finish()` for the number of refused batches. `first` go with
    the first transaction sent (e.g. a fence that must land with the first move), alone if
    only unordered writes follow. Once a batch is known refused, nothing more is sent and
    the rest count as refused: the plan is stale, and a put must never land when a removal
    before it did not. Use as a context manager: leaving it early (an error while the plan
    was made) sends nothing more and stops waiting for what is on its way."""

    def __init__(self, etcd: Etcd, guard: list, per_txn: int = MAX_TXN_OPS,
                 in_flight: int = COMMIT_IN_FLIGHT, first: Iterable = ()) -> None:
        self.etcd = etcd
        self.guard = list(guard)
        self.per_txn = per_txn
        self.in_flight = in_flight
        self.failed = 0
        self.empty = True  # nothing given yet
        self._first: list | None = list(first)  # None once sent
        self._txn: Txn | None = None  # the batch being filled
        self._sent: deque[SentTxn] = deque()
        self._unordered = False

    def __enter__(self) -> BatchCommit:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        while self._sent:
            self._sent.popleft().cancel()

    def ordered(self, ops: Iterable) -> None:
        """Commit `ops` (built with `Etcd.ops`) now, in order, a transaction after another;
        before any unordered write."""
        if self._unordered:
            raise RuntimeError("ordered operations after unordered ones")
        first, self._first = self._first or [], None
        for batch in batches([*first, *ops], self.per_txn):
            self.empty = False
            if self.failed:
                self.failed += 1
                continue
            txn = Txn(self.guard)
            for op in batch:
                txn.add(op)
            self.failed += not self.etcd.commit(txn)

    def put(self, key: str, value: bytes) -> None:
        """One unordered put: sent with its batch as soon as the batch is full."""
        txn = self._txn or self._open()
        txn.put(key, value)
        if txn.size >= self.per_txn:
            self._send()

    def add(self, op: object) -> None:
        """One unordered operation built with `Etcd.ops`, as `put`."""
        txn = self._txn or self._open()
        txn.add(op)
        if txn.size >= self.per_txn:
            self._send()

    def finish(self) -> int:
        """Send the last batch, wait for every one; how many batches were refused."""
        if self._first:  # nothing else was given
            self.ordered(())
        if self._txn is not None:
            self._send()
        while self._sent:
            self._answered(self._sent.popleft())
        return self.failed

    def _open(self) -> Txn:
        if self._first is not None:
            self.ordered(())
        self._unordered = True
        self.empty = False
        self._txn = Txn(self.guard)
        return self._txn

    def _send(self) -> None:
        txn, self._txn = self._txn, None
        assert txn is not None
        if self.failed:
            self.failed += 1
        elif self.in_flight <= 1:
            self.failed += not self.etcd.commit(txn)
        else:
            while len(self._sent) >= self.in_flight:
                self._answered(self._sent.popleft())
            self._sent.append(self.etcd.send(txn))

    def _answered(self, sent: SentTxn) -> None:
        self.failed += not sent.succeeded()


def batches(ops: Iterable, per_txn: int) -> list[list]:
    found: list[list] = []
    for op in ops:
        if not found or len(found[-1]) >= per_txn:
            found.append([])
        found[-1].append(op)
    return found
