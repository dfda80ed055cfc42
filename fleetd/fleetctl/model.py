"""The API's records as fleetctl sees them, read defensively from JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from fleetd.fleetctl.errors import FleetctlError
from fleetd.unit.unitfile import UnitFile, UnitFileError, UnitOption, content_hash
from fleetd.unit.xfleet import FleetOptionsError, parse_fleet_options

# A listing holds many units of one content (a template's instances): each distinct option
# is checked once, each distinct content hashed once, per fleetctl run.
_OPTIONS: dict[tuple[str, str, str], UnitOption] = {}
_HASHES: dict[tuple[UnitOption, ...], str] = {}


def malformed(what: str, problem: str) -> FleetctlError:
    return FleetctlError(f"fleet API returned a malformed answer for {what}: {problem}")


def _text(data: Mapping[str, Any], key: str, what: str, required: bool = False) -> str:
    value = data.get(key)
    if value is None:
        if required:
            raise malformed(what, f"{key!r} is missing")
        return ""
    if not isinstance(value, str):
        raise malformed(what, f"{key!r} is not a string")
    return value


def _object(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise malformed(what, "expected a JSON object")
    return data


@dataclass(frozen=True)
class Machine:
    id: str
    primary_ip: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    api_url: str = ""

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @classmethod
    def from_json(cls, data: Any) -> Machine:
        data = _object(data, "a machine")
        metadata = data.get("metadata") or {}
        if not isinstance(metadata, Mapping):
            raise malformed("a machine", "'metadata' is not an object")
        return cls(id=_text(data, "id", "a machine", required=True),
                   primary_ip=(_text(data, "primaryIP", "a machine")
                               or _text(data, "publicIP", "a machine")),
                   metadata={str(k): str(v) for k, v in metadata.items()},
                   api_url=_text(data, "apiURL", "a machine"))


@dataclass(frozen=True)
class Unit:
    name: str
    options: tuple[UnitOption, ...] = ()
    desired_state: str = ""
    current_state: str = ""
    machine_id: str = ""

    @classmethod
    def from_json(cls, data: Any) -> Unit:
        data = _object(data, "a unit")
        name = _text(data, "name", "a unit", required=True)
        raw = data.get("options") or []
        if not isinstance(raw, list):
            raise malformed(f"unit {name}", "'options' is not a list")
        options = []
        for item in raw:
            item = _object(item, f"an option of unit {name}")
            triple = (_text(item, "section", name), _text(item, "name", name),
                      _text(item, "value", name))
            option = _OPTIONS.get(triple)
            if option is None:
                try:
                    option = UnitOption(*triple)
                except UnitFileError as err:
                    raise malformed(f"unit {name}", str(err)) from None
                _OPTIONS[triple] = option
            options.append(option)
        return cls(name=name, options=tuple(options),
                   desired_state=_text(data, "desiredState", name),
                   current_state=_text(data, "currentState", name),
                   machine_id=_text(data, "machineID", name))

    @cached_property
    def unit_file(self) -> UnitFile:
        return UnitFile(self.options)

    @cached_property
    def hash(self) -> str:
        digest = _HASHES.get(self.options)
        if digest is None:
            digest = _HASHES[self.options] = content_hash(self.unit_file)
        return digest

    @cached_property
    def is_global(self) -> bool:
        if not any(option.section == "X-Fleet" for option in self.options):
            return False  # nothing says so (and nothing to check)
        try:
            return parse_fleet_options(self.unit_file, self.name).global_
        except FleetOptionsError:
            # A unit the cluster accepted but we cannot read: fall back to the raw flag.
            values = self.unit_file.get("X-Fleet", "Global")
            return bool(values) and values[-1].lower() in ("1", "yes", "y", "true", "t", "on")

    @property
    def description(self) -> str:
        return self.unit_file.get_last("Unit", "Description") or ""


@dataclass(frozen=True)
class UnitState:
    name: str
    hash: str = ""
    machine_id: str = ""
    load_state: str = ""
    active_state: str = ""
    sub_state: str = ""

    @classmethod
    def from_json(cls, data: Any) -> UnitState:
        data = _object(data, "a unit state")
        name = _text(data, "name", "a unit state", required=True)
        return cls(name=name, hash=_text(data, "hash", name),
                   machine_id=_text(data, "machineID", name),
                   load_state=_text(data, "systemdLoadState", name),
                   active_state=_text(data, "systemdActiveState", name),
                   sub_state=_text(data, "systemdSubState", name))


def machine_id_legend(machine_id: str, full: bool) -> str:
    """fleet's MACHINE cell: `d0ef0562...` (the first 8 characters) unless full."""
    return machine_id if full else f"{machine_id[:8]}..."


def machine_legend(machine_id: str, machine: Machine | None, full: bool) -> str:
    """`<short id>.../<ip>`; without a known IP just the id part."""
    legend = machine_id_legend(machine_id, full)
    if machine is not None and machine.primary_ip:
        legend = f"{legend}/{machine.primary_ip}"
    return legend
