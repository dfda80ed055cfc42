"""Wait until units report a state, polling the API with a growing pause.

Two waits, as fleet v1.0.0's `start` has:

1. `wait_for_states`: a unit is done when its `currentState` (what its machine's agent
   reports) equals the target; each is reported at once as `Unit X launched on
   <id>.../<ip>`. A unit the scheduler cannot place on any machine ends the wait once the
   scheduler has said so for `UNSCHEDULABLE_GRACE_S` (its words name the constraint).
2. `wait_for_active` (after `start`): systemd on the unit's machine reports it
   active/loaded. A unit systemd reports `failed` ends the wait at once, with its last
   journal lines; fleet's fleetctl would wait for ever.

Polling stops after `attempts` rounds or when `timeout` seconds have passed; the error
then says, per unit, what it was still doing. API hiccups while waiting are retried; a
unit destroyed meanwhile fails at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fleetd.fleetctl.errors import (
    ApiError,
    ConnectError,
    FleetctlError,
    UnitFailed,
    Unschedulable,
    WaitTimeout,
)
from fleetd.fleetctl.model import Unit, UnitState
from fleetd.fleetctl.session import Session

if TYPE_CHECKING:
    from fleetd.fleetctl.explain import Verdict

DEFAULT_TIMEOUT = 120.0
UNSCHEDULABLE_GRACE_S = 5.0  # the scheduler must say "no machine" this long before we do
EXPLAIN_EVERY_S = 1.0        # asking it reads every unit and machine: not on every poll
JOURNAL_LINES = 10
LIST_FROM = 20  # waiting for more units than this, a round reads the listings' pages


@dataclass(frozen=True)
class WaitPolicy:
    attempts: int | None = None  # rounds of polling; None: until the timeout
    timeout: float | None = DEFAULT_TIMEOUT  # seconds; None: no limit
    first_delay: float = 0.1
    # fleet's fleetctl polls every 500 ms; a round reads a page or a unit, so a pause no
    # longer than fleet's costs little and ends a wait up to half a second sooner.
    max_delay: float = 0.5

    def describe(self, rounds: int, elapsed: float) -> str:
        if self.attempts is not None and rounds >= self.attempts:
            return f"after {rounds} attempt{'s' if rounds != 1 else ''} (--block-attempts)"
        return f"after {elapsed:.0f}s (--block-timeout)"


def reached(unit: Unit, target: str) -> bool:
    if target == "inactive":
        return unit.current_state in ("inactive", "")
    return unit.current_state == target


def done_message(session: Session, unit: Unit, target: str) -> str:
    message = f"Unit {unit.name} {unit.current_state or target}"
    if target != "inactive" and unit.machine_id:
        message += f" on {session.legend(unit.machine_id)}"
    return message


class _Poll:
    """Rounds of `check(name)` over the pending names with the policy's pauses and limits.
    `check` returns True when a unit is done; `after_round` may raise to end the wait."""

    def __init__(self, session: Session, names: Sequence[str], policy: WaitPolicy) -> None:
        self.session = session
        self.policy = policy
        self.pending = list(dict.fromkeys(names))
        self.last: dict[str, Unit] = {}
        self.last_error: str | None = None
        self.start = session.monotonic()
        self.rounds = 0
        self.round_states: dict[tuple[str, str], list[UnitState]] | None = None

    def states_of(self, unit: Unit) -> list[UnitState]:
        """The states the unit's machine reports for it: from this round's listing when
        many units are waited for, else one request."""
        client = self.session.client
        if self.round_states is None and len(self.pending) > LIST_FROM:
            self.round_states = {}
            for state in client.states():
                self.round_states.setdefault((state.name, state.machine_id), []).append(state)
        if self.round_states is not None:
            return self.round_states.get((unit.name, unit.machine_id), [])
        return client.states(machine_id=unit.machine_id, unit_name=unit.name)

    def run(self, check: Callable[[Unit], bool],
            after_round: Callable[[], None] = lambda: None) -> str | None:
        """None when every unit is done; else how the wait ended ("after 3 attempts ...")."""
        delay = self.policy.first_delay
        while self.pending:
            self.rounds += 1
            listed: Mapping[str, Unit] | None = None
            self.round_states = None
            for name in list(self.pending):
                try:
                    if listed is None and len(self.pending) > LIST_FROM:
                        # Many units: every page of the listing costs less than one
                        # request per unit.
                        listed = self.session.client.units_by_name()
                    unit = listed.get(name) if listed is not None else \
                        self.session.client.unit(name)
                    if unit is None:
                        raise FleetctlError(f"Unit {name} was destroyed while waiting for it.")
                    self.last[name] = unit
                    if check(unit):
                        self.pending.remove(name)
                except ConnectError as err:
                    self.last_error = err.message
                    break
                except ApiError as err:  # an error status: the server may recover
                    self.last_error = err.message
            if not self.pending:
                return None
            after_round()
            elapsed = self.session.monotonic() - self.start
            if self.policy.attempts is not None and self.rounds >= self.policy.attempts:
                break
            if self.policy.timeout is not None:
                remaining = self.policy.timeout - elapsed
                if remaining <= 0:
                    break
                self.session.sleep(min(delay, remaining))
            else:
                self.session.sleep(delay)
            delay = min(delay * 2, self.policy.max_delay)
        return self.policy.describe(self.rounds, self.session.monotonic() - self.start)


def wait_for_states(session: Session, names: Sequence[str], target: str,
                    policy: WaitPolicy) -> None:
    poll = _Poll(session, names, policy)
    unplaced_since: dict[str, float] = {}
    explained_at = [float("-inf")]

    def check(unit: Unit) -> bool:
        if not reached(unit, target):
            return False
        session.say(done_message(session, unit, target))
        return True

    def give_up_on_unschedulable() -> None:
        if target == "inactive":
            return
        now = session.monotonic()
        if now - explained_at[0] < EXPLAIN_EVERY_S:
            return
        explained_at[0] = now
        unplaced = [n for n in poll.pending if n in poll.last and not poll.last[n].machine_id]
        reasons = {n: v.reason for n, v in _verdicts(session, unplaced).items() if v.reason}
        for name in list(unplaced_since):
            if name not in reasons:
                del unplaced_since[name]
        for name in reasons:
            unplaced_since.setdefault(name, now)
        stuck = sorted(n for n, since in unplaced_since.items()
                       if now - since >= UNSCHEDULABLE_GRACE_S)
        if stuck:
            raise Unschedulable("\n".join(
                f"Unit {n} cannot be scheduled: {reasons[n]}; no machine can run it as its "
                "[X-Fleet] section asks (see `fleetctl list-machines`)." for n in stuck))

    ended = poll.run(check, give_up_on_unschedulable)
    if ended is not None:
        raise WaitTimeout(_timeout_message(session, poll, f"report state {target}", ended))


def wait_for_active(session: Session, names: Sequence[str], policy: WaitPolicy) -> None:
    """After `start`: until systemd on each unit's machine reports it active (fleet 1.0's
    second wait); a unit systemd reports failed fails the command with its log tail."""
    poll = _Poll(session, names, policy)
    seen: dict[str, UnitState] = {}

    def check(unit: Unit) -> bool:
        if not unit.machine_id:
            return False  # moving to another machine: wait for it there
        state = next((s for s in poll.states_of(unit) if s.name == unit.name), None)
        if state is None:
            return False
        seen[unit.name] = state
        if state.active_state == "failed":
            raise UnitFailed(_failure_message(session, unit, state))
        return state.active_state == "active" and state.load_state == "loaded"

    ended = poll.run(check)
    if ended is not None:
        raise WaitTimeout(_timeout_message(session, poll, "become active", ended, seen))


def _verdicts(session: Session, names: Sequence[str]) -> Mapping[str, Verdict]:
    if not names:
        return {}
    from fleetd.fleetctl.explain import explain  # the scheduler: only for units left unplaced

    try:
        return explain(session.client.units(), session.machines(refresh=True).values(), names)
    except FleetctlError:
        return {}  # the explanation is a courtesy; the wait goes on


def _failure_message(session: Session, unit: Unit, state: UnitState) -> str:
    text = (f"Unit {unit.name} failed on {session.legend(unit.machine_id)} "
            f"(systemd: {state.active_state}/{state.sub_state or '-'})")
    try:
        remote = session.client_for(unit.machine_id, unit.name)
        lines = "".join(remote.journal(unit.name, JOURNAL_LINES, False)).splitlines()
    except FleetctlError:
        lines = []
    if not lines:
        return text + "; `fleetctl journal " + unit.name + "` may say why."
    return text + "; its last log lines:\n" + "\n".join(f"    {line}" for line in lines)


def _timeout_message(session: Session, poll: _Poll, what: str, after: str,
                     seen: Mapping[str, UnitState] | None = None) -> str:
    verdicts = _verdicts(session, [n for n in poll.pending
                                   if n in poll.last and not poll.last[n].machine_id])
    lines = []
    for name in poll.pending:
        unit = poll.last.get(name)
        where = (_describe(session, unit, verdicts.get(name), (seen or {}).get(name))
                 if unit is not None else "never seen")
        lines.append(f"Timed out waiting for unit {name} to {what} {after}; {where}.")
    if poll.last_error:
        lines.append(f"Last error while polling: {poll.last_error}")
    return "\n".join(lines)


def _describe(session: Session, unit: Unit, verdict: Verdict | None,
              state: UnitState | None) -> str:
    parts = [f"it is {unit.current_state or 'not scheduled'}"]
    if not unit.machine_id:
        if unit.desired_state != "inactive":
            if verdict is not None and verdict.reason:
                parts.append(f"not scheduled: {verdict.reason}")
            elif verdict is not None and verdict.machine:
                parts.append(f"not scheduled yet, though machine "
                             f"{session.legend(verdict.machine)} can run it (is a fleetd "
                             "with the engine enabled running?)")
            else:
                parts.append("no machine accepted it (check its [X-Fleet] constraints and "
                             "`fleetctl list-machines`)")
        return ", ".join(parts)
    try:
        parts.append(f"on {session.legend(unit.machine_id)}")
        if state is None:
            states = session.client.states(machine_id=unit.machine_id, unit_name=unit.name)
            state = next((s for s in states if s.name == unit.name), None)
    except FleetctlError:
        return " ".join(parts)
    if state is not None:
        parts.append(f"(systemd: {state.active_state or '-'}/{state.sub_state or '-'})")
    return " ".join(parts)
