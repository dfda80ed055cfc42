"""cat, status, journal: look at one unit's file, its systemd status, its log.

status and journal are answered by the fleetd of the machine that runs the unit
(reached through the `apiURL` of its machine record), not by the endpoint.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from fleetd.fleetctl.errors import FleetctlError, UnitNotFound
from fleetd.fleetctl.model import Unit
from fleetd.fleetctl.session import Session
from fleetd.fleetctl.targets import unit_name_of
from fleetd.unit.unitfile import serialize


def cat(session: Session, arg: str) -> str:
    name = unit_name_of(arg)
    unit = session.client.unit(name)
    if unit is None:
        raise UnitNotFound(name)
    return serialize(unit.unit_file)


def _running_unit(session: Session, arg: str) -> Unit:
    name = unit_name_of(arg)
    unit = session.client.unit(name)
    if unit is None:
        raise UnitNotFound(name)
    if unit.is_global:
        raise FleetctlError(f"Unable to determine status of global unit {name}.")
    if unit.current_state in ("", "inactive") or not unit.machine_id:
        raise FleetctlError(f"Unit {name} does not appear to be loaded.")
    return unit


def status(session: Session, args: Sequence[str]) -> list[str]:
    """The systemctl-status-like text of each unit, from the machine that runs it."""
    units = [_running_unit(session, arg) for arg in args]
    texts = []
    for unit in units:
        remote = session.client_for(unit.machine_id, unit.name)
        text = remote.unit_status(unit.name)
        texts.append(text if text.endswith("\n") else text + "\n")
    return texts


def journal(session: Session, arg: str, lines: int, follow: bool) -> Iterator[str]:
    unit = _running_unit(session, arg)
    remote = session.client_for(unit.machine_id, unit.name)
    return remote.journal(unit.name, lines, follow)
