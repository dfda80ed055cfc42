"""The columns of fleetctl's three listings, keyed by their `--fields` names.

Cells follow fleetctl: `-` for anything unknown, machine ids cut to 8
characters plus `...` and hashes to 7 unless `--full`. JSON values are never
cut and use null for unknown.
"""

from __future__ import annotations

from collections import namedtuple

from fleetd.fleetctl.model import Machine, Unit, UnitState, machine_id_legend, machine_legend
from fleetd.fleetctl.tables import Column


def _dash(text: str) -> str:
    return text or "-"


def _none(text: str) -> str | None:
    return text or None


def format_metadata(metadata: dict[str, str]) -> str:
    """`k=v,k=v` sorted by key; a value that starts with an operator keeps it (`k>=3`)."""
    if not metadata:
        return "-"
    pairs = []
    for key in sorted(metadata):
        value = metadata[key]
        sep = "" if value.startswith(("<=", ">=", "!=", "==", "<", ">")) else "="
        pairs.append(f"{key}{sep}{value}")
    return ",".join(pairs)


# -- list-machines ---------------------------------------------------------------------

MACHINE_COLUMNS: dict[str, Column] = {
    "machine": Column("machine", lambda m, full: machine_id_legend(m.id, full),
                      lambda m: m.id),
    "ip": Column("ip", lambda m, full: _dash(m.primary_ip), lambda m: _none(m.primary_ip)),
    "metadata": Column("metadata", lambda m, full: format_metadata(dict(m.metadata)),
                       lambda m: dict(sorted(m.metadata.items()))),
}
DEFAULT_MACHINE_FIELDS = ("machine", "ip", "metadata")


# -- list-unit-files -------------------------------------------------------------------

class UnitFileRow(namedtuple("UnitFileRow", ("unit", "machine"))):
    __slots__ = ()
    unit: Unit
    machine: Machine | None  # the target machine's record, when known


def _target_cell(row: UnitFileRow, full: bool) -> str:
    if row.unit.is_global:
        return "global"
    if not row.unit.machine_id:
        return "-"
    return machine_legend(row.unit.machine_id, row.machine, full)


def _target_value(row: UnitFileRow) -> str | None:
    if row.unit.is_global:
        return "global"
    return _none(row.unit.machine_id)


def _state_cell(row: UnitFileRow) -> str:
    return "-" if row.unit.is_global else _dash(row.unit.current_state)


UNIT_FILE_COLUMNS: dict[str, Column] = {
    "unit": Column("unit", lambda r, full: r.unit.name, lambda r: r.unit.name),
    "hash": Column("hash", lambda r, full: r.unit.hash if full else r.unit.hash[:7],
                   lambda r: r.unit.hash),
    "dstate": Column("dstate", lambda r, full: _dash(r.unit.desired_state),
                     lambda r: _none(r.unit.desired_state)),
    "state": Column("state", lambda r, full: _state_cell(r),
                    lambda r: None if _state_cell(r) == "-" else r.unit.current_state),
    "target": Column("target", _target_cell, _target_value),
    "global": Column("global", lambda r, full: str(r.unit.is_global).lower(),
                     lambda r: r.unit.is_global),
    "desc": Column("desc", lambda r, full: _dash(r.unit.description),
                   lambda r: _none(r.unit.description)),
}
DEFAULT_UNIT_FILE_FIELDS = ("unit", "hash", "dstate", "state", "target")


# -- list-units ------------------------------------------------------------------------

class UnitStateRow(namedtuple("UnitStateRow", ("state", "machine"))):
    __slots__ = ()
    state: UnitState
    machine: Machine | None


def _machine_cell(row: UnitStateRow, full: bool) -> str:
    if not row.state.machine_id:
        return "-"
    return machine_legend(row.state.machine_id, row.machine, full)


UNIT_COLUMNS: dict[str, Column] = {
    "unit": Column("unit", lambda r, full: r.state.name, lambda r: r.state.name),
    "machine": Column("machine", _machine_cell, lambda r: _none(r.state.machine_id)),
    "ip": Column("ip", lambda r, full: _dash(r.machine.primary_ip if r.machine else ""),
                 lambda r: _none(r.machine.primary_ip if r.machine else "")),
    "active": Column("active", lambda r, full: _dash(r.state.active_state),
                     lambda r: _none(r.state.active_state)),
    "sub": Column("sub", lambda r, full: _dash(r.state.sub_state),
                  lambda r: _none(r.state.sub_state)),
    "load": Column("load", lambda r, full: _dash(r.state.load_state),
                   lambda r: _none(r.state.load_state)),
    "hash": Column("hash", lambda r, full: _dash(r.state.hash if full else r.state.hash[:7]),
                   lambda r: _none(r.state.hash)),
}
DEFAULT_UNIT_FIELDS = ("unit", "machine", "active", "sub")
