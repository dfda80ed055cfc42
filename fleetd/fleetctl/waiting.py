"""Wait until units report a state, polling the API with a growing pause.

A unit is done when its `currentState` (what its machine's agent reports) equals
the target; each done unit is reported at once as `Unit X launched on
<id>.../<ip>`. Polling stops after `attempts` rounds or when `timeout` seconds
have passed; the error then says, per unit, what it was still doing (its state,
machine and what systemd reports from /state). API hiccups while waiting are
retried; a unit destroyed meanwhile fails at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fleetd.fleetctl.errors import ConnectError, FleetctlError, WaitTimeout
from fleetd.fleetctl.model import Unit
from fleetd.fleetctl.session import Session

DEFAULT_TIMEOUT = 120.0


@dataclass(frozen=True)
class WaitPolicy:
    attempts: int | None = None  # rounds of polling; None: until the timeout
    timeout: float | None = DEFAULT_TIMEOUT  # seconds; None: no limit
    first_delay: float = 0.1
    max_delay: float = 1.0

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


def wait_for_states(session: Session, names: Sequence[str], target: str,
                    policy: WaitPolicy) -> None:
    pending = list(dict.fromkeys(names))
    last: dict[str, Unit] = {}
    last_error: str | None = None
    start = session.monotonic()
    delay = policy.first_delay
    rounds = 0
    while pending:
        rounds += 1
        for name in list(pending):
            try:
                unit = session.client.unit(name)
            except ConnectError as err:
                last_error = err.message
                break
            except FleetctlError as err:  # an API error status: the server may recover
                last_error = err.message
                continue
            if unit is None:
                raise FleetctlError(f"Unit {name} was destroyed while waiting for it to "
                                    f"become {target}.")
            last[name] = unit
            if reached(unit, target):
                pending.remove(name)
                session.say(done_message(session, unit, target))
        if not pending:
            return
        elapsed = session.monotonic() - start
        if policy.attempts is not None and rounds >= policy.attempts:
            break
        if policy.timeout is not None:
            remaining = policy.timeout - elapsed
            if remaining <= 0:
                break
            session.sleep(min(delay, remaining))
        else:
            session.sleep(delay)
        delay = min(delay * 2, policy.max_delay)
    elapsed = session.monotonic() - start
    raise WaitTimeout(_timeout_message(session, pending, target, last, last_error,
                                       policy.describe(rounds, elapsed)))


def _timeout_message(session: Session, pending: Sequence[str], target: str,
                     last: dict[str, Unit], last_error: str | None, after: str) -> str:
    lines = []
    for name in pending:
        unit = last.get(name)
        where = _describe(session, unit) if unit is not None else "never seen"
        lines.append(f"Timed out waiting for unit {name} to report state {target} {after}; "
                     f"{where}.")
    if last_error:
        lines.append(f"Last error while polling: {last_error}")
    return "\n".join(lines)


def _describe(session: Session, unit: Unit) -> str:
    parts = [f"it is {unit.current_state or 'not scheduled'}"]
    if not unit.machine_id:
        if unit.desired_state != "inactive":
            parts.append("no machine accepted it (check its [X-Fleet] constraints and "
                         "`fleetctl list-machines`)")
        return ", ".join(parts)
    try:
        parts.append(f"on {session.legend(unit.machine_id)}")
        states = session.client.states(machine_id=unit.machine_id, unit_name=unit.name)
    except FleetctlError:
        return " ".join(parts)
    systemd = [f"{s.active_state or '-'}/{s.sub_state or '-'}" for s in states
               if s.name == unit.name]
    if systemd:
        parts.append(f"(systemd: {', '.join(systemd)})")
    return " ".join(parts)
