"""Machine liveness as an engine observes it: which machines it has heard from, judged on a
clock made of its own machine's heartbeats. Pure: events in, verdicts out; the caller passes
its monotonic time (`at`) and does the I/O.

Every agent rewrites `heartbeat/<id>` every heartbeat period (a tenth of the TTL). An engine
watches that prefix; events arrive in revision order. Its clock advances only when its *own*
machine's heartbeat arrives through that same stream, by the time since the previous one was
sent (the sender is this host, so that time is comparable) but at most `stall` (half the TTL,
at most 2.5 s) per heartbeat; between two of them it interpolates with its monotonic time, at
most one period. So:

- an etcd outage, or this engine's process stalled or starved, of any length, moves the
  clock by at most `stall` plus a period: nobody's heartbeat could arrive meanwhile, ours
  neither, and afterwards every machine has the rest of the TTL to write again;
- a raft election (1-2 s in which nobody can write) counts whole: a machine that died with
  etcd's leader is not given the election on top of its TTL;
- a watch stream that lags moves it not at all until it delivers, and then it delivers every
  earlier heartbeat of the others first (revision order);
- a live machine's silence stays near one period; one that has been silent for a TTL on this
  clock had most of a TTL of working etcd to say otherwise.

A machine is judged dead when it has been silent for a TTL, or at once when its last
heartbeat says it is leaving (it stopped its units). Lease expiry is not the judge: etcd
renews every lease to its full TTL when a new raft leader takes over, and expires them all at
once when it answers again after a stall, before their agents could renew. The engine fences
a dead machine (revokes its lease) before it moves the machine's units; the machine counts
as alive again only once a heartbeat under a new lease arrives.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fleetd.registry.registry import Beat


@dataclass
class Heard:
    lease: int      # the lease of its last heartbeat; 0: never heard (tracked for its units)
    since: float    # our clock when its last heartbeat arrived (or tracking began)
    leaving: bool = False
    fenced: bool = False  # judged dead and fenced; alive again only under a new lease


class Liveness:
    def __init__(self, me: str, ttl: float, period: float) -> None:
        self.me = me
        self.ttl = float(ttl)
        self.period = float(period)
        # The most one of our heartbeats may move the clock. Long enough to count a raft
        # election whole (no agent could write during it, but it is part of the TTL a dead
        # machine is given: etcd's election timeout is 1-2 s), short enough that after an
        # outage of any length every machine has TTL - stall - period to write again.
        self.stall = min(self.ttl / 2, 2.5)
        self.clock = 0.0
        self.ticks = 0  # our own heartbeats seen
        self._last_sent: float | None = None
        self._last_tick_at: float | None = None
        self.machines: dict[str, Heard] = {}

    # -- the clock -------------------------------------------------------------------------------
    def now(self, at: float) -> float:
        """The clock at local time `at`: the last of our heartbeats seen plus the time since,
        at most one period (a stalled stream or process must not make time pass)."""
        if self._last_tick_at is None:
            return self.clock
        return self.clock + min(max(0.0, at - self._last_tick_at), self.period)

    def _tick(self, sent: float, at: float) -> None:
        if self._last_sent is not None:
            step = min(max(0.0, sent - self._last_sent), self.stall)
            self.clock = max(self.clock + step, self.now(at))
        self._last_sent = sent
        self._last_tick_at = at
        self.ticks += 1

    # -- what was seen ---------------------------------------------------------------------------
    def reset(self, beats: Mapping[str, Beat], at: float) -> None:
        """Start over from a snapshot (first start, or the watch lost its place): every
        machine with a heartbeat key counts as heard just now."""
        now = self.now(at)
        self.machines = {m: Heard(b.lease, now, b.leaving) for m, b in beats.items()}

    def beat(self, machine: str, beat: Beat | None, at: float) -> bool:
        """One heartbeat event (None: the key was deleted, which says nothing about life).
        True when it changed whether the machine counts as present."""
        if beat is None:
            return False
        if machine == self.me and not beat.leaving:
            self._tick(beat.sent, at)
        heard = self.machines.get(machine)
        if heard is not None and heard.fenced and beat.lease == heard.lease:
            return False  # written before the fence, delivered after it
        was_present = heard is not None and self._present(heard, at)
        heard = Heard(beat.lease, self.now(at), beat.leaving)
        self.machines[machine] = heard
        return was_present != self._present(heard, at)

    def track(self, machines: Iterable[str], at: float) -> None:
        """Machines the engine has units on but never heard from (dead before it started,
        or not registered again yet): silent from now on."""
        now = self.now(at)
        for machine in machines:
            self.machines.setdefault(machine, Heard(0, now))

    def fenced(self, machine: str) -> None:
        heard = self.machines.get(machine)
        if heard is not None:
            heard.fenced = True

    # -- verdicts --------------------------------------------------------------------------------
    def heard_from(self, machine: str) -> bool:
        """Has this machine ever sent a heartbeat we saw (rather than only being tracked)?"""
        heard = self.machines.get(machine)
        return heard is not None and heard.lease != 0

    def lease_of(self, machine: str) -> int:
        heard = self.machines.get(machine)
        return heard.lease if heard is not None else 0

    def silence(self, machine: str, at: float) -> float:
        heard = self.machines.get(machine)
        return self.now(at) - heard.since if heard is not None else 0.0

    def _present(self, heard: Heard, at: float) -> bool:
        return not (heard.fenced or heard.leaving
                    or self.now(at) - heard.since >= self.ttl)

    def is_dead(self, machine: str, at: float) -> bool:
        """Judged dead (fenced, leaving or silent for a TTL). Untracked machines are not."""
        heard = self.machines.get(machine)
        return heard is not None and machine != self.me and not self._present(heard, at)

    def dead(self, at: float) -> list[str]:
        """Machines judged dead and not fenced yet: the engine fences these next."""
        return sorted(m for m, heard in self.machines.items()
                      if m != self.me and not heard.fenced and not self._present(heard, at))

    def due(self, at: float) -> float | None:
        """Local seconds until the next machine could be judged dead, if the clock ran at
        local speed (a hint for when to look again; a heartbeat of ours may come first)."""
        now = self.now(at)
        waits = [heard.since + self.ttl - now for m, heard in self.machines.items()
                 if m != self.me and self._present(heard, at)]
        return max(0.0, min(waits)) if waits else None
