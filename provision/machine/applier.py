"""Apply one user-data file to this machine: parse, read state, plan, act (the wiring).

Nothing is changed before the whole file is known good and the whole plan is made:
a bad file, an unknown owner, a group that does not exist — all refuse the file with
every problem listed. One pass at a time (a lock in /run), so the boot unit and a
hand-run apply never interleave.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fleetd.runner.base import RunnerError
from provision.machine.config import parse_machine_config
from provision.machine.model import EnableUnit, MachineConfig, Plan, Reload, UnitCommand
from provision.machine.perform import ApplyFailed, Performer
from provision.machine.planner import paths_to_read, plan
from provision.machine.state import machine_facts, read_accounts, read_state

LOCK = Path("/run/lock/provision-cloudinit.lock")
SYSTEMD_ACTIONS = (EnableUnit, Reload, UnitCommand)


@contextmanager
def one_pass(lock: Path = LOCK) -> Iterator[None]:
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _systemd(bus_address: str | None):  # pydbus proxy
    from fleetd.runner.systemd import connect_systemd

    try:
        return connect_systemd(bus_address)[1]
    except RunnerError as err:
        raise ApplyFailed(str(err)) from None


def plan_for(config: MachineConfig, bus_address: str | None = None):
    """(plan, systemd manager or None) for this machine as it is now."""
    accounts = read_accounts()
    manager = _systemd(bus_address) if config.units else None
    names = [u.name for u in config.units]
    enabled = [u.name for u in config.units if u.enable]
    try:
        state = read_state(paths_to_read(config, accounts), accounts, manager, names, enabled)
    except Exception as err:  # GLib.Error from systemd: one line
        from fleetd.runner.systemd import dbus_message

        raise ApplyFailed(f"cannot read the units' states from systemd: "
                          f"{dbus_message(err)}") from None
    planned = plan(config, state)
    if manager is None and any(isinstance(a, SYSTEMD_ACTIONS) for a in planned.actions):
        manager = _systemd(bus_address)  # a write_files entry changed a unit file
    return planned, manager


def apply_user_data(text: str, source: str, addresses: dict[str, str], *,
                    say: Callable[[str], None], warn: Callable[[str], None],
                    dry_run: bool = False, bus_address: str | None = None) -> Plan:
    """Apply (or with `dry_run` only plan) `text`; the plan that was carried out.

    UserError: the file is refused, nothing changed. ApplyFailed: an action failed.
    """
    config = parse_machine_config(text, source, addresses, machine_facts())
    with one_pass():
        planned, manager = plan_for(config, bus_address)
        for note in planned.notes:
            warn(note)
        if dry_run:
            for action in planned.actions:
                say(f"would: {action.describe()}")
            return planned
        Performer(manager, say).run(planned.actions)
    return planned


def is_root() -> bool:
    return os.geteuid() == 0
