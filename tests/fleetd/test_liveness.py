"""The engine's liveness judgement, pure: heartbeat events in (with the local time each was
processed), verdicts out. TTL 5 s, heartbeat period 0.5 s, as a local cluster runs it.

Each row is a script of heartbeat deliveries: who, under which lease, sent when (the sender's
monotonic clock; only the engine's own machine's is read) and processed when (`at`)."""

from __future__ import annotations

import pytest

from fleetd.engine.liveness import Liveness
from fleetd.registry.registry import Beat

TTL, PERIOD = 5.0, 0.5
ME, X, Y = "me", "x", "y"


def beats(machine: str, start: float, end: float, lease: int = 1, delay: float = 0.0,
          processed_at: float | None = None) -> list[tuple[float, str, Beat | None]]:
    """Heartbeats of `machine` every period from `start` until `end` (exclusive), each
    processed `delay` after it was sent, or all at `processed_at` (a stalled engine)."""
    out = []
    t = start
    while t < end - 1e-9:
        at = processed_at if processed_at is not None else t + delay
        out.append((at, machine, Beat(lease, int(t / PERIOD), t)))
        t += PERIOD
    return out


def run(script: list[tuple[float, str, Beat | None]], end: float) -> Liveness:
    liveness = Liveness(ME, TTL, PERIOD)
    liveness.reset({ME: Beat(1), X: Beat(1), Y: Beat(1)}, 0.0)
    # Delivered in processing order; what is processed at once comes in send (revision) order.
    for at, machine, beat in sorted(script, key=lambda e: (e[0], e[2].sent if e[2] else 0)):
        if at <= end:
            liveness.beat(machine, beat, at)
    liveness.end_at = end  # type: ignore[attr-defined]
    return liveness


ROWS = [
    ("everyone beating", beats(ME, 0, 30) + beats(X, 0.2, 30) + beats(Y, 0.3, 30), 30, []),
    ("x silent for a TTL while we beat", beats(ME, 0, 30) + beats(X, 0, 10) + beats(Y, 0, 30),
     30, [X]),
    ("x silent for just under a TTL", beats(ME, 0, 14.3) + beats(X, 0, 10) + beats(Y, 0, 15),
     14.3, []),
    # Our own heartbeats stop (our agent re-registering, our etcd member gone): no time
    # passes for the judgement, however long the wall clock runs.
    ("our own heartbeats stop", beats(ME, 0, 3) + beats(X, 0, 2) + beats(Y, 0, 2), 60, []),
    # etcd stalls 10 s for everyone; afterwards all beat again within a period of us.
    ("etcd outage of 10 s", beats(ME, 0, 5) + beats(ME, 15, 30) + beats(X, 0, 5)
     + beats(X, 15.4, 30) + beats(Y, 0, 5) + beats(Y, 15.3, 30), 30, []),
    # ... and right after it x takes 1.5 s longer than us to write again (it has the TTL
    # less the stall and a period: 2 s) ...
    ("etcd outage, x slow to come back", beats(ME, 0, 5) + beats(ME, 15, 30) + beats(X, 0, 5)
     + beats(X, 16.5, 30) + beats(Y, 0, 5) + beats(Y, 15, 30), 30, []),
    # ... but not 3 s longer.
    ("etcd outage, x too slow to come back", beats(ME, 0, 5) + beats(ME, 15, 30)
     + beats(X, 0, 5) + beats(X, 18, 30) + beats(Y, 0, 5) + beats(Y, 15, 30), 17.9, [X]),
    # A raft election: 2 s in which nobody writes, x died just before it. The election
    # counts: x is judged a TTL after its last heartbeat, not a TTL after the election.
    ("x dies with the raft leader", beats(ME, 0, 10) + beats(ME, 12, 30) + beats(X, 0, 10)
     + beats(Y, 0, 10) + beats(Y, 12, 30), 15.0, [X]),
    # The engine's process is stalled for 12 s: everything sent meanwhile is processed at
    # once when it runs again, in order; x's heartbeats are among them.
    ("engine stalled, events delivered late", beats(ME, 0, 20, processed_at=None)
     + beats(ME, 20, 30) + beats(X, 0, 20, processed_at=None) + beats(X, 20, 30)
     + beats(Y, 0, 30), 30, []),
    ("engine stalled 12 s, whole stream processed at once",
     beats(ME, 0, 12, processed_at=12.0) + beats(X, 0.1, 12, processed_at=12.0)
     + beats(Y, 0.2, 12, processed_at=12.0), 12.0, []),
    # The same stall, but x really died at 3 s: its silence was real (we and y kept
    # writing), and is judged once the stream shows it.
    ("engine stalled, x died meanwhile", beats(ME, 0, 12, processed_at=12.0)
     + beats(X, 0.1, 3, processed_at=12.0) + beats(Y, 0.2, 12, processed_at=12.0), 12.0, [X]),
    ("a slow stream (every event 2 s late)", beats(ME, 0, 30, delay=2) + beats(X, 0, 30, delay=2)
     + beats(Y, 0, 30, delay=2), 32, []),
    ("x leaves", beats(ME, 0, 10) + beats(X, 0, 3) + [(3.0, X, Beat(1, -1, 3.0, leaving=True))]
     + beats(Y, 0, 10), 3.1, [X]),
    ("key deletions say nothing of life", beats(ME, 0, 30) + beats(X, 0, 26) + [(26.1, X, None)]
     + beats(Y, 0, 30), 30, []),
]


@pytest.mark.parametrize("script,end,dead", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_judgement(script, end, dead):
    liveness = run(script, end)
    assert liveness.dead(end) == dead


def test_silence_counts_observed_time_only():
    """After a 10 s outage the clock moved by at most the stall and a period, not by the
    10 s the wall clock did."""
    liveness = run(beats(ME, 0, 5) + beats(X, 0, 5) + beats(ME, 15, 15.5), 15.0)
    assert liveness.stall == 2.5
    assert liveness.silence(X, 15.0) <= PERIOD + liveness.stall + PERIOD + 1e-9


def test_a_fenced_machine_comes_back_only_under_a_new_lease():
    liveness = run(beats(ME, 0, 12) + beats(X, 0, 5) + beats(Y, 0, 12), 12)
    assert liveness.dead(12) == [X]
    liveness.fenced(X)
    assert liveness.dead(12) == [] and liveness.is_dead(X, 12)
    liveness.beat(X, Beat(1, 99, 11.0), 12.0)  # written before the fence, delivered after
    assert liveness.is_dead(X, 12)
    assert liveness.beat(X, Beat(2, 0, 12.0), 12.1)  # registered again: present again
    assert not liveness.is_dead(X, 12.1)


def test_a_machine_never_heard_from_is_judged_after_a_ttl_of_our_clock():
    liveness = Liveness(ME, TTL, PERIOD)
    liveness.reset({ME: Beat(1)}, 0.0)
    liveness.track([X], 0.0)
    assert not liveness.heard_from(X)
    for at, machine, beat in beats(ME, 0, 4.5):
        liveness.beat(machine, beat, at)
    assert liveness.dead(4.5) == []
    for at, machine, beat in beats(ME, 4.5, 6):
        liveness.beat(machine, beat, at)
    assert liveness.dead(6) == [X]


def test_we_never_judge_ourselves():
    liveness = run(beats(X, 0, 30), 30)
    assert ME not in liveness.dead(30) and not liveness.is_dead(ME, 30)


def test_due_says_when_to_look_again():
    liveness = run(beats(ME, 0, 10) + beats(X, 0, 8) + beats(Y, 0, 10), 10)
    due = liveness.due(10)
    assert due is not None and 0 < due <= TTL - 2 + PERIOD
