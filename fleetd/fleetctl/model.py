"""The API's records as fleetctl sees them, read defensively from JSON."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Mapping

from fleetd.fleetctl.errors import FleetctlError
from fleetd.unit.unitfile import UnitFile, UnitFileError, UnitOption, content_hash

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~7 ms of a command)
if TYPE_CHECKING:
    from typing import Any

# A listing holds many units of one content (a template's instances): each distinct option
# is checked once, each distinct content read (hashed, described) once, per fleetctl run.
_OPTIONS: dict[tuple[str, str, str], UnitOption] = {}
# The options of a unit's JSON, as (section, name, value) triples -> the checked options,
# one tuple shared by every unit of that content.
_CONTENTS: dict[tuple[tuple[str, str, str], ...], tuple[UnitOption, ...]] = {}


class _Content:
    """What a listing shows of one unit content, worked out once for all its units."""

    __slots__ = ("options", "unit_file", "hash", "description", "fleet_section", "globals")

    def __init__(self, options: tuple[UnitOption, ...]) -> None:
        self.options = options
        self.unit_file = UnitFile(options)
        self.hash = content_hash(self.unit_file)
        self.description = self.unit_file.get_last("Unit", "Description") or ""
        self.fleet_section = any(option.section == "X-Fleet" for option in options)
        self.globals: dict[str, bool] = {}  # unit name -> Global=, when it has [X-Fleet]


_READ: dict[tuple[UnitOption, ...], _Content] = {}


def _content(options: tuple[UnitOption, ...]) -> _Content:
    found = _READ.get(options)
    if found is None:
        found = _READ[options] = _Content(options)
    return found


def _options_key(raw: Any) -> tuple[tuple[str, str, str], ...] | None:
    """The triples of a JSON options list, or None when it is not a list of objects
    with those keys (the careful path then says what is wrong)."""
    try:
        key = tuple([(item["section"], item["name"], item["value"]) for item in raw])
        hash(key)  # a list or object where text belongs is not
    except (TypeError, KeyError):
        return None
    return key


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


# The records are named tuples, not dataclasses: importing dataclasses and making each
# class cost a listing more than its decoding and rendering together.
class Machine(namedtuple("Machine", ("id", "primary_ip", "metadata", "api_url"),
                         defaults=("", {}, ""))):
    __slots__ = ()
    id: str
    primary_ip: str
    metadata: Mapping[str, str]  # never changed: the default is shared
    api_url: str

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


class Unit(namedtuple("Unit", ("name", "options", "desired_state", "current_state",
                               "machine_id"), defaults=((), "", "", ""))):
    __slots__ = ()
    name: str
    options: tuple[UnitOption, ...]
    desired_state: str
    current_state: str
    machine_id: str

    @classmethod
    def from_json(cls, data: Any) -> Unit:
        data = _object(data, "a unit")
        name = _text(data, "name", "a unit", required=True)
        raw = data.get("options") or []
        if not isinstance(raw, list):
            raise malformed(f"unit {name}", "'options' is not a list")
        key = _options_key(raw)
        options = _CONTENTS.get(key) if key is not None else None
        if options is None:
            options = cls._read_options(name, raw)
            if key is not None:
                _CONTENTS[key] = options
        return cls(name=name, options=options,
                   desired_state=_text(data, "desiredState", name),
                   current_state=_text(data, "currentState", name),
                   machine_id=_text(data, "machineID", name))

    @staticmethod
    def _read_options(name: str, raw: list[Any]) -> tuple[UnitOption, ...]:
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
        return tuple(options)

    @property
    def unit_file(self) -> UnitFile:
        return _content(self.options).unit_file

    @property
    def hash(self) -> str:
        return _content(self.options).hash

    @property
    def is_global(self) -> bool:
        content = _content(self.options)
        if not content.fleet_section:
            return False  # nothing says so (and nothing to check)
        found = content.globals.get(self.name)
        if found is None:
            found = content.globals[self.name] = _global_flag(content.unit_file, self.name)
        return found

    @property
    def description(self) -> str:
        return _content(self.options).description


def _global_flag(unit_file: UnitFile, name: str) -> bool:
    from fleetd.unit.xfleet import FleetOptionsError, parse_fleet_options

    try:
        return parse_fleet_options(unit_file, name).global_
    except FleetOptionsError:
        # A unit the cluster accepted but we cannot read: fall back to the raw flag.
        values = unit_file.get("X-Fleet", "Global")
        return bool(values) and values[-1].lower() in ("1", "yes", "y", "true", "t", "on")


class UnitState(namedtuple("UnitState", ("name", "hash", "machine_id", "load_state",
                                         "active_state", "sub_state"),
                           defaults=("", "", "", "", ""))):
    __slots__ = ()
    name: str
    hash: str
    machine_id: str
    load_state: str
    active_state: str
    sub_state: str

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
