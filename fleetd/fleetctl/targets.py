"""From command-line arguments to unit names and unit contents.

An argument is a path (`units/web.service`: the name is its last part), a name
(`hello`, `apache@1` get `.service`), or a glob (`web@*`) matched against the
units the cluster already has. Commands that submit also look on disk: the
file itself, or for an instance `x@1.service` the template file `x@.service`
next to where the instance file would be, as fleet does.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from fleetd.fleetctl.errors import FleetctlError, UsageError
from fleetd.unit.names import KNOWN_SUFFIXES, UnitNameError, normalize_unit_name, parse_unit_name
from fleetd.unit.unitfile import UnitFile, UnitFileError, parse_unit_file
from fleetd.unit.xfleet import FleetOptionsError, parse_fleet_options

GLOB_CHARS = frozenset("*?[")


def is_glob(arg: str) -> bool:
    return any(ch in GLOB_CHARS for ch in arg)


def has_unit_suffix(text: str) -> bool:
    return text.rpartition(".")[2] in KNOWN_SUFFIXES and "." in text


def unit_name_of(arg: str) -> str:
    """fleetctl's name mangling: the last path part, `.service` added when untyped."""
    base = os.path.basename(arg.rstrip("/")) if "/" in arg else arg
    try:
        return normalize_unit_name(base)
    except UnitNameError as err:
        # Clip the echo: a 100 kB argument made a 100 kB error line (bad-input suite).
        shown = repr(arg) if len(repr(arg)) <= 80 else repr(arg)[:76] + "...'"
        raise UsageError(f"{shown} is not a unit name: {err.message}") from None


def match_units(pattern: str, names: Iterable[str]) -> list[str]:
    """Existing units a glob names; `web@*` matches `web@1.service` but not the template."""
    base = os.path.basename(pattern) if "/" in pattern else pattern
    patterns = [base] if has_unit_suffix(base) else [base, f"{base}.service"]
    matched = []
    for name in sorted(names):
        if "@." in name:  # a template is never started, stopped or destroyed by a glob
            continue
        if any(fnmatchcase(name, p) for p in patterns):
            matched.append(name)
    return matched


@dataclass(frozen=True)
class Target:
    arg: str  # what the user wrote (a path, a name, or the glob it came from)
    name: str  # the unit name


def expand(args: Iterable[str], existing: Iterable[str], files: bool) -> list[Target]:
    """Arguments to targets, globs expanded over existing units (and, when `files`, over
    local unit files if no unit matches); duplicates dropped, order kept."""
    existing = list(existing)
    seen: set[str] = set()
    out: list[Target] = []

    def add(arg: str, name: str) -> None:
        if name not in seen:
            seen.add(name)
            out.append(Target(arg, name))

    for arg in args:
        if not is_glob(arg):
            add(arg, unit_name_of(arg))
            continue
        matched = [] if "/" in arg else match_units(arg, existing)
        if matched:
            for name in matched:
                add(arg, name)
            continue
        paths = sorted(p for p in glob.glob(arg) if os.path.isfile(p)) if files else []
        if not paths:
            where = "the cluster or on disk" if files else "the cluster"
            raise FleetctlError(f"No units match {arg} in {where}.")
        for path in paths:
            add(path, unit_name_of(path))
    return out


@dataclass(frozen=True)
class LocalUnit:
    path: str
    unit: UnitFile
    template: bool  # the content comes from a template file (x@.service) for an instance


def _candidates(arg: str, name: str) -> list[str]:
    paths = [arg]
    if not has_unit_suffix(os.path.basename(arg)):
        paths.append(arg + "." + name.rpartition(".")[2])
    return paths


def read_unit_file(path: str, name: str) -> UnitFile:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise UsageError(f"cannot read unit file {path}: {reason}") from None
    try:
        unit = parse_unit_file(text)
    except UnitFileError as err:
        raise UsageError(f"{path}: {err}") from None
    try:
        parse_fleet_options(unit, name)
    except FleetOptionsError as err:
        raise UsageError(f"{path}: [X-Fleet] {err.message}") from None
    return unit


def find_local_unit(arg: str, name: str) -> LocalUnit | None:
    """The unit file for `arg` on disk, or its template's file for an instance."""
    for path in _candidates(arg, name):
        if os.path.isfile(path):
            return LocalUnit(path, read_unit_file(path, name), template=False)
        if os.path.exists(path):
            raise UsageError(f"{path} is not a regular file; give a unit file")
    parsed = parse_unit_name(name)
    if parsed.template is None:
        return None
    folder = os.path.dirname(arg) if "/" in arg else ""
    path = os.path.join(folder, parsed.template)
    if os.path.isfile(path):
        return LocalUnit(path, read_unit_file(path, name), template=True)
    return None
