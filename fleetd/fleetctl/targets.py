"""From command-line arguments to unit names and unit contents.

An argument is a path (`units/web.service`: the name is its last part), a name
(`hello`, `apache@1` get `.service`), or a glob (`web@*`) matched against the
units the cluster already has. Commands that submit also look on disk, as fleet
does: the file named like the unit (`hello` is read from `hello.service`; a file
is only ever read under its own unit name, so `bad.txt` is refused, not submitted
as `bad.txt.service`), or for an instance `x@1.service` the template file
`x@.service` next to where the instance file would be.

Globs are ours (fleet 1.0 has none). A glob matches unit names with fnmatch,
templates included (`web@*` matches `web@.service` too), but only `destroy`
acts on a template: load/start/stop/unload skip templates, which never run.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from fleetd.fleetctl.errors import FleetctlError, UsageError
from fleetd.unit.names import (
    KNOWN_SUFFIXES,
    UnitNameError,
    is_template_name,
    normalize_unit_name,
    parse_unit_name,
)
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


def match_units(pattern: str, names: Iterable[str], templates: bool = False) -> list[str]:
    """Existing units a glob names; `web@*` matches `web@1.service`, and the template
    `web@.service` only with `templates` (destroy: no template is left behind)."""
    base = os.path.basename(pattern) if "/" in pattern else pattern
    patterns = [base] if has_unit_suffix(base) else [base, f"{base}.service"]
    matched = []
    for name in sorted(names):
        if not templates and is_template_name(name):  # templates never run
            continue
        if any(fnmatchcase(name, p) for p in patterns):
            matched.append(name)
    return matched


@dataclass(frozen=True)
class Target:
    arg: str  # what the user wrote (a path, a name, or the glob it came from)
    name: str  # the unit name


def expand(args: Iterable[str], existing: Iterable[str], files: bool,
           templates: bool = False) -> list[Target]:
    """Arguments to targets, globs expanded over existing units (templates too with
    `templates`; and, when `files`, over local unit files if no unit matches); duplicates
    dropped, order kept."""
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
        matched = [] if "/" in arg else match_units(arg, existing, templates)
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


def _candidate(arg: str, name: str) -> str:
    """The file that holds unit `name` for `arg`: the path itself when its last part is a
    unit name, else the path with the unit's type added (`hello` → `hello.service`)."""
    if has_unit_suffix(os.path.basename(arg)):
        return arg
    return arg + "." + name.rpartition(".")[2]


def refuse_non_unit_file(arg: str) -> None:
    """A file the user named that is not named like a unit (`bad.txt`): fleet refuses it
    instead of submitting it under a made-up name (`bad.txt.service`)."""
    if not has_unit_suffix(os.path.basename(arg)) and os.path.isfile(arg):
        base = os.path.basename(arg)
        raise UsageError(f"{arg} is not a unit file: its name must be a unit name ending in a "
                         f"unit type ({', '.join(KNOWN_SUFFIXES[:3])}, ...); rename it, e.g. "
                         f"to {base.partition('.')[0] or base}.service")


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
    if not unit.options:
        what = "is empty" if not text.strip() else "has no options (only comments)"
        raise UsageError(f"{path} {what}: a unit file needs at least a section with an "
                         "option, e.g. [Service] ExecStart=...")
    try:
        parse_fleet_options(unit, name)
    except FleetOptionsError as err:
        raise UsageError(f"{path}: [X-Fleet] {err.message}") from None
    return unit


def find_local_unit(arg: str, name: str) -> LocalUnit | None:
    """The unit file for `arg` on disk, or its template's file for an instance."""
    path = _candidate(arg, name)
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
