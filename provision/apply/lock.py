"""One `provision apply` at a time per cluster: the holder side of fleet's apply lock.

`ApplyLock.acquire` takes the cluster's lock (`fleetd.registry.apply_lock`) on a lease of
its own, waiting for the current holder — named by host, pid and since when — unless told
not to wait. A thread renews the lease every ttl/3, beside the apply's own work, so a slow
step cannot cost the lock; a process stalled longer than the TTL (SIGSTOP, a frozen VM)
loses it, and its next write is refused by the fencing token (`guard`). A clean exit,
Ctrl-C or SIGTERM revokes the lease at once; SIGKILL leaves it to lapse, except that an
apply on the same machine seeing the holder's process gone takes the lock over at once.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from fleetd.registry.apply_lock import ApplyLockStore, LockRecord
from fleetd.registry.etcd import RegistryUnavailable
from fleetd.registry.registry import Registry
from provision.errors import OperationFailed, UserError

LOCK_TTL_S = 10
POLL_S = 0.2

Report = Callable[[str], None]


class LockLost(OperationFailed):
    """Our lease lapsed (we were stalled longer than its TTL): we may write nothing more."""


def describe(info: Mapping[str, Any], now: float | None = None, brief: bool = False) -> str:
    """`pid 4242 on host build-7 since 2024-05-01 12:02:33 (41s ago; 1 of 3 steps
    written)`; `brief`: `pid 4242 on host build-7 (since 2024-05-01 12:02:33)`."""
    now = time.time() if now is None else now
    try:
        since = float(info.get("since", 0))
    except (TypeError, ValueError):
        since = 0.0
    who = f"pid {info.get('pid', '?')} on host {info.get('host', '?')}"
    if not since:
        return who
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
    if brief:
        return f"{who} (since {stamp})"
    detail = f"{max(0, round(now - since))}s ago"
    steps = info.get("steps")
    if steps:
        detail += f"; {info.get('step', 0)} of {steps} steps written"
    return f"{who} since {stamp} ({detail})"


# -- who we are, and whether a holder on this machine still runs -------------------------------

def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' if it does not exist or has
    died: a zombie waiting for its parent runs nothing)."""
    stat = _read(f"/proc/{pid}/stat")
    # The command name (field 2) may hold spaces and parentheses: split after its end.
    fields = stat.rpartition(")")[2].split()
    if len(fields) <= 19 or fields[0] in ("Z", "X"):
        return ""
    return fields[19]


def _machine() -> str:
    """This kernel boot and pid namespace: where a pid means the same process."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{boot}/{pidns}" if boot else ""


def holder_gone(info: Mapping[str, Any]) -> bool:
    """True only when the holder ran where we run and its process no longer exists (a pid
    reused by another process counts as gone: its start time differs)."""
    here = _machine()
    if not here or info.get("machine") != here:
        return False
    try:
        pid = int(info.get("pid", 0))
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    return _start_time(pid) != str(info.get("started", ""))


# -- the lock ------------------------------------------------------------------------------------

class ApplyLock:
    """The cluster's apply lock, held by this process."""

    def __init__(self, registry: Registry, cluster: str, command: str = "apply") -> None:
        self.store = ApplyLockStore(registry)
        self.etcd = registry.etcd
        self.cluster = cluster
        pid = os.getpid()
        self.info: dict[str, Any] = {
            "cluster": cluster, "command": command, "host": socket.gethostname(), "pid": pid,
            "machine": _machine(), "started": _start_time(pid), "since": time.time(),
            "step": 0, "steps": 0, "txns": 0}
        self.lease: int | None = None
        self.token = 0
        self.waited_for: dict[str, Any] | None = None  # the holder we waited for, if any
        self._lost: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # -- taking it ---------------------------------------------------------------------------
    def acquire(self, *, wait: bool, deadline: float, report: Report,
                on_unreachable: Callable[[RegistryUnavailable], None],
                on_answer: Callable[[], None] = lambda: None) -> None:
        """Hold the lock, or raise: UserError when it is held and `wait` is False,
        OperationFailed when the deadline passes first. `on_unreachable` decides whether an
        etcd outage ends the wait (it raises) or is waited out (it returns); `on_answer`
        hears that etcd answered."""
        shown: tuple[int, str] | None = None
        while True:
            try:
                if self._try():
                    on_answer()
                    return
                record = self.store.read()
            except RegistryUnavailable as err:
                on_unreachable(err)
                time.sleep(POLL_S)
                continue
            on_answer()
            if record is None:
                continue  # released between our attempt and the read: try again
            who = describe(record.info)
            if holder_gone(record.info):
                report(f"the apply of {who} is no longer running; taking its lock over")
                try:
                    self.store.break_lock(record.token)
                except RegistryUnavailable as err:
                    on_unreachable(err)
                continue
            if not wait:
                raise UserError(f"cluster {self.cluster} is being applied by {who}; run "
                                "again when it is done (without --no-wait to wait for it)")
            if time.monotonic() >= deadline:
                raise OperationFailed(f"gave up waiting for the apply of {who} (--timeout); "
                                      "nothing written")
            if shown is None or shown[0] != record.token:
                report(f"waiting for the apply of {who} to finish (--no-wait to give up "
                       "instead)")
                shown = (record.token, who)
                self.waited_for = dict(record.info)
            time.sleep(POLL_S)

    def _try(self) -> bool:
        self._ensure_lease()
        assert self.lease is not None
        self.info["since"] = time.time()  # since when we hold it, not since we queued
        token = self.store.try_acquire(self.info, self.lease)
        if token is None:
            return False
        self.token = token
        return True

    def _ensure_lease(self) -> None:
        """A live lease of ours, renewed from now on (also while we wait for the lock)."""
        if self.lease is not None and self._lost is None:
            return
        if self.lease is not None:
            self._stop.set()
            self.etcd.revoke(self.lease)
            self.lease = None
        self._lost = None
        self._stop = threading.Event()
        self.lease = self.etcd.grant(LOCK_TTL_S)
        self._renewer = threading.Thread(target=self._renew, args=(self.lease, self._stop),
                                         name="apply-lock", daemon=True)
        self._renewer.start()

    def _renew(self, lease: int, stop: threading.Event) -> None:
        while not stop.wait(LOCK_TTL_S / 3):
            try:
                remaining = self.etcd.keepalive(lease)
            except RegistryUnavailable:
                continue  # writes are fenced anyway; the lease may still be alive
            if remaining <= 0:
                if not stop.is_set():
                    self._lost = "expired"
                return

    # -- holding it --------------------------------------------------------------------------
    def check(self, written: str) -> None:
        """Raise LockLost if the renewer saw our lease lapse."""
        if self._lost is not None:
            raise self.lost(written)

    def lost(self, written: str) -> LockLost:
        return LockLost(
            f"this apply lost its lock on cluster {self.cluster}: its lease lapsed while it "
            f"was stalled for more than {LOCK_TTL_S}s, and another apply may have taken over; "
            f"{written}. Run `provision apply` again")

    def still_ours(self) -> bool:
        record = self.store.read()
        return record is not None and record.token == self.token

    def guard(self) -> list:
        return self.store.guard(self.token)

    def progress(self, step: int, steps: int, txns: int) -> tuple[Any, dict[str, Any]]:
        """The op recording progress in the next write, and the value it writes."""
        info = {**self.info, "step": step, "steps": steps, "txns": txns}
        assert self.lease is not None
        return self.store.progress(info, self.lease), info

    def recorded(self) -> LockRecord | None:
        return self.store.read()

    # -- letting go --------------------------------------------------------------------------
    def release(self) -> None:
        self._stop.set()
        if self.lease is not None:
            self.etcd.revoke(self.lease)  # the key goes with its lease
            self.lease = None
        self.token = 0


def current_holder(registry: Registry) -> Mapping[str, Any] | None:
    """Who holds the cluster's apply lock right now (None: nobody, or etcd unreachable)."""
    try:
        record = ApplyLockStore(registry).read()
    except RegistryUnavailable:
        return None
    return record.info if record is not None else None
