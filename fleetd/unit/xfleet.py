"""The `[X-Fleet]` section, parsed once into `FleetOptions`.

Scheduler and agents only ever see the frozen value, never the raw section, so
every spelling fleet accepts (deprecated aliases, several values per line,
specifiers like %i) is resolved here and every mistake is reported here.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from fleetd.unit.names import INSTANCE_CHARS, UnitName, UnitNameError, parse_unit_name
from fleetd.unit.specifiers import SpecifierError
from fleetd.unit.specifiers import expand_specifiers as expand_generic
from fleetd.unit.unitfile import UnitFile, UnitFileError, split_command_line

SECTION = "X-Fleet"
KNOWN_KEYS: tuple[str, ...] = (
    "MachineID", "MachineOf", "MachineMetadata", "Conflicts", "Global", "Replaces",
)
# Spellings from fleet < 0.8 that unit files in the wild still use.
DEPRECATED_KEYS: Mapping[str, str] = {
    "X-ConditionMachineID": "MachineID",
    "X-ConditionMachineOf": "MachineOf",
    "X-ConditionMachineMetadata": "MachineMetadata",
    "X-Conflicts": "Conflicts",
}
_TRUE = frozenset({"1", "yes", "y", "true", "t", "on"})
_FALSE = frozenset({"0", "no", "n", "false", "f", "off"})
_MACHINE_ID_RE = re.compile(r"[A-Za-z0-9._:-]+")
_GLOB_CHARS = INSTANCE_CHARS | frozenset("*?[]!")


class FleetOptionsError(ValueError):
    """An [X-Fleet] option fleet would refuse or misread; `key` is the option's name."""

    def __init__(self, message: str, key: str | None = None) -> None:
        self.message = message
        self.key = key
        super().__init__(message)


class FrozenMetadata(Mapping[str, frozenset[str]]):
    """Metadata key -> allowed values; immutable and hashable so FleetOptions is too."""

    __slots__ = ("_data",)

    def __init__(self, items: Mapping[str, Iterable[str]] | None = None) -> None:
        data = {key: frozenset(values) for key, values in (items or {}).items()}
        self._data = dict(sorted(data.items()))

    def __getitem__(self, key: str) -> frozenset[str]:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(tuple(self._data.items()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return self._data == dict(other.items())

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: {sorted(v)!r}" for k, v in self._data.items())
        return f"FrozenMetadata({{{inner}}})"


@dataclass(frozen=True)
class FleetOptions:
    machine_id: str | None = None
    machine_of: tuple[str, ...] = ()
    machine_metadata: FrozenMetadata = field(default_factory=FrozenMetadata)
    conflicts: tuple[str, ...] = ()
    global_: bool = False
    replaces: tuple[str, ...] = ()


def parse_fleet_options(unit: UnitFile, unit_name: str) -> FleetOptions:
    """Read [X-Fleet] of `unit` as it runs under `unit_name` (specifiers expand against it)."""
    try:
        name = parse_unit_name(unit_name)
    except UnitNameError as err:
        raise FleetOptionsError(f"cannot read [X-Fleet] options: {err}") from None
    values: dict[str, list[tuple[str, str]]] = {key: [] for key in KNOWN_KEYS}
    for option in unit.section(SECTION):
        key = _canonical_key(option.name)
        try:
            expanded = expand_specifiers(option.value, name)
        except FleetOptionsError as err:
            raise FleetOptionsError(f"{option.name}={_clip(option.value)}: {err.message}",
                                    option.name) from None
        values[key].append((option.name, expanded))

    options = FleetOptions(
        machine_id=_machine_id(values["MachineID"]),
        machine_of=_unit_names(values["MachineOf"], name),
        machine_metadata=_metadata(values["MachineMetadata"]),
        conflicts=_conflicts(values["Conflicts"]),
        global_=_global(values["Global"]),
        replaces=_unit_names(values["Replaces"], name),
    )
    _check_combination(options)
    return options


_NAMED_KEYS = frozenset({"MachineOf", "Replaces", "X-ConditionMachineOf"})


def options_depend_on_name(unit: UnitFile) -> bool:
    """Whether `parse_fleet_options` can answer differently for two names of this unit (a
    specifier to expand, or unit names checked against the unit's own); if not, a
    template's instances share one parse."""
    return any("%" in option.value or option.name in _NAMED_KEYS
               or option.name not in KNOWN_KEYS and option.name not in DEPRECATED_KEYS
               for option in unit.section(SECTION))


def expand_specifiers(value: str, name: UnitName) -> str:
    """Expand fleet's specifiers: %n name, %N name without type, %p prefix, %i instance, %%."""
    table = {"n": name.full, "N": name.stem, "p": name.prefix, "i": name.instance or "",
             "%": "%"}
    try:
        return expand_generic(value, table)
    except SpecifierError as err:
        raise FleetOptionsError(str(err)) from None


def matches_metadata(options: FleetOptions, machine_metadata: Mapping[str, str]) -> bool:
    """True when the machine has, for every required key, one of the allowed values."""
    return all(machine_metadata.get(key) in allowed
               for key, allowed in options.machine_metadata.items())


def conflicts_with(options: FleetOptions, other_unit_name: str) -> bool:
    """True when a Conflicts= glob of `options` matches the other unit's name."""
    return any(fnmatchcase(other_unit_name, pattern) for pattern in options.conflicts)


def _canonical_key(key: str) -> str:
    if key in KNOWN_KEYS:
        return key
    if key in DEPRECATED_KEYS:
        return DEPRECATED_KEYS[key]
    spellings = {k.lower(): k for k in KNOWN_KEYS}
    spellings.update({alias.lower(): k for alias, k in DEPRECATED_KEYS.items()})
    close = spellings.get(key.lower())
    if close is None:
        near = difflib.get_close_matches(key.lower(), list(spellings), n=1, cutoff=0.6)
        close = spellings[near[0]] if near else None
    hint = (f"did you mean {close}?" if close
            else f"[X-Fleet] understands {', '.join(KNOWN_KEYS)}")
    raise FleetOptionsError(f"unknown [X-Fleet] option {key!r}; {hint}", key)


def _words(written: str, value: str) -> list[str]:
    # fleet reads several space-separated items per line and lets each be quoted
    # (MachineMetadata="region=us east" "disk=ssd").
    try:
        return split_command_line(value)
    except UnitFileError as err:
        raise FleetOptionsError(f"{written}={_clip(value)}: {err.message} (at position "
                                f"{err.col})", written) from None


def _machine_id(entries: list[tuple[str, str]]) -> str | None:
    found: str | None = None
    for written, value in entries:
        if not _MACHINE_ID_RE.fullmatch(value):
            raise FleetOptionsError(f"{written}={_clip(value)} is not a machine ID; give one "
                                    "ID such as the 32 hex digits of /etc/machine-id "
                                    "(fleetctl list-machines --full)", written)
        if found is not None and value != found:
            raise FleetOptionsError(f"{written} is given twice ({found} and {value}); a unit "
                                    "can be pinned to only one machine", written)
        found = value
    return found


def _global(entries: list[tuple[str, str]]) -> bool:
    found: bool | None = None
    for written, value in entries:
        lowered = value.lower()
        if lowered not in _TRUE | _FALSE:
            raise FleetOptionsError(f"{written}={_clip(value)} is not a boolean; write "
                                    f"{written}=true or {written}=false", written)
        flag = lowered in _TRUE
        if found is not None and flag != found:
            raise FleetOptionsError(f"{written} is given twice with different values; "
                                    "keep one", written)
        found = flag
    return bool(found)


def _metadata(entries: list[tuple[str, str]]) -> FrozenMetadata:
    # A key named on several lines (or twice on one) lists alternatives; different
    # keys must all match. An empty value adds nothing, as in fleet.
    allowed: dict[str, set[str]] = {}
    for written, value in entries:
        for word in _words(written, value):
            key, eq, wanted = word.partition("=")
            if not eq:
                raise FleetOptionsError(f"{written}: {_clip(word)!r} is not key=value; write "
                                        f"e.g. {written}=region=us-west", written)
            if not key.strip() or not wanted.strip():
                part = "key" if not key.strip() else "value"
                raise FleetOptionsError(f"{written}: {_clip(word)!r} has an empty {part}; "
                                        f"write e.g. {written}=region=us-west", written)
            allowed.setdefault(key, set()).add(wanted)
    return FrozenMetadata(allowed)


def _conflicts(entries: list[tuple[str, str]]) -> tuple[str, ...]:
    patterns: list[str] = []
    for written, value in entries:
        for word in _words(written, value):
            bad = next((i for i, ch in enumerate(word) if ch not in _GLOB_CHARS), None)
            if bad is not None:
                raise FleetOptionsError(f"{written}: character {word[bad]!r} in pattern "
                                        f"{_clip(word)!r} cannot occur in a unit name; use "
                                        "a glob such as web@*.service", written)
            patterns.append(word)
    return tuple(dict.fromkeys(patterns))


def _unit_names(entries: list[tuple[str, str]], own: UnitName) -> tuple[str, ...]:
    names: list[str] = []
    for written, value in entries:
        for word in _words(written, value):
            try:
                other = parse_unit_name(word)
            except UnitNameError as err:
                raise FleetOptionsError(f"{written}={_clip(word)}: {err.message}",
                                        written) from None
            if other.full == own.full:
                raise FleetOptionsError(f"{written}={word} names the unit itself; a unit "
                                        f"cannot refer to itself in {written}", written)
            if other.is_template and not own.is_template:
                raise FleetOptionsError(f"{written}={word} names a template, which never "
                                        f"runs; name an instance such as "
                                        f"{other.prefix}@1.{other.suffix} (or "
                                        f"{other.prefix}@%i.{other.suffix} for the same "
                                        "instance as this unit)", written)
            names.append(other.full)
    return tuple(dict.fromkeys(names))


def _check_combination(options: FleetOptions) -> None:
    if options.global_:
        # Global units already run on every eligible machine; pinning or spreading
        # them, or letting them push others away, has no meaning.
        for key, present in (("MachineID", options.machine_id is not None),
                             ("MachineOf", bool(options.machine_of)),
                             ("Conflicts", bool(options.conflicts)),
                             ("Replaces", bool(options.replaces))):
            if present:
                raise FleetOptionsError(f"Global=true cannot be combined with {key}; global "
                                        "units run on every machine matching "
                                        "MachineMetadata", key)
    for peer in options.machine_of:
        if peer in options.replaces:
            raise FleetOptionsError(f"{peer} is named by both MachineOf and Replaces; a unit "
                                    "cannot run next to the unit it replaces", "Replaces")
        clash = next((p for p in options.conflicts if fnmatchcase(peer, p)), None)
        if clash is not None:
            raise FleetOptionsError(f"Conflicts={clash} matches MachineOf={peer}; the unit "
                                    "would have to share a machine with a unit it conflicts "
                                    "with", "Conflicts")


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
