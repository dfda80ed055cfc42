"""list-machines, list-unit-files, list-units: fetch, join, and return a `Table`."""

from __future__ import annotations

from fleetd.fleetctl.columns import (
    DEFAULT_MACHINE_FIELDS,
    DEFAULT_UNIT_FIELDS,
    DEFAULT_UNIT_FILE_FIELDS,
    MACHINE_COLUMNS,
    UNIT_COLUMNS,
    UNIT_FILE_COLUMNS,
    UnitFileRow,
    UnitStateRow,
)
from fleetd.fleetctl.session import Session
from fleetd.fleetctl.tables import Table, choose_columns


def list_machines(session: Session, fields: str | None = None) -> Table:
    columns = choose_columns(fields, MACHINE_COLUMNS, DEFAULT_MACHINE_FIELDS)
    machines = sorted(session.machines().values(), key=lambda m: m.id)
    return Table(columns, tuple(machines))


def list_unit_files(session: Session, fields: str | None = None) -> Table:
    columns = choose_columns(fields, UNIT_FILE_COLUMNS, DEFAULT_UNIT_FILE_FIELDS)
    units = sorted(session.client.units(), key=lambda u: u.name)
    machines = session.machines() if any(u.machine_id for u in units) else {}
    rows = tuple(UnitFileRow(u, machines.get(u.machine_id)) for u in units)
    return Table(columns, rows)


def list_units(session: Session, fields: str | None = None) -> Table:
    columns = choose_columns(fields, UNIT_COLUMNS, DEFAULT_UNIT_FIELDS)
    states = sorted(session.client.states(), key=lambda s: (s.name, s.machine_id))
    machines = session.machines() if states else {}
    rows = tuple(UnitStateRow(s, machines.get(s.machine_id)) for s in states)
    return Table(columns, rows)
