"""Check the declared fleet units (`units:`) of a cluster definition.

Each entry names a unit file (relative to the cluster file) or carries inline
content; it may be a plain unit, a template with instances, or a global unit,
with constraints in the file's [X-Fleet] section or as YAML keys. Problems in
a unit file point into that file (`units/web@.service:4:1: …`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fleetd.unit.names import UnitName, UnitNameError, parse_unit_name
from fleetd.unit.unitfile import UnitFile, UnitFileError, UnitOption, parse_unit_file
from fleetd.unit.xfleet import FleetOptionsError, parse_fleet_options
from provision.errors import Problem
from provision.spec.model import Sidekick, UnitSet
from provision.yamlmarks import MarkedDocument

ReadText = Callable[[Path], str]


def build_unit_sets(doc: MarkedDocument, base_dir: Path, read_text: ReadText,
                    problems: list[Problem]) -> tuple[UnitSet, ...]:
    sets: list[UnitSet] = []
    owner: dict[str, int] = {}
    for i, spec in enumerate(doc.data.get("units", [])):
        unit_set = _build_one(doc, ("units", i), spec, base_dir, read_text, problems)
        if unit_set is None:
            continue
        for name in unit_set.unit_names:
            if name in owner:
                problems.append(doc.problem(("units", i), f"unit `{name}` is declared twice "
                                                          f"(also by units[{owner[name]}])"))
            owner.setdefault(name, i)
        sets.append(unit_set)
    return tuple(sets)


Error = Callable[..., None]


def _build_one(doc: MarkedDocument, path: tuple, spec: dict, base_dir: Path,
               read_text: ReadText, problems: list[Problem]) -> UnitSet | None:
    def error(message: str, sub: tuple = (), key: bool = False) -> None:
        problems.append(doc.problem(path + sub, message, key=key))

    where = f"units[{path[1]}]"
    read = _read_unit(doc, path, spec, base_dir, read_text, error)
    if read is None:
        return None
    content, source, default_name, line_offset = read

    name_text = spec.get("name", default_name)
    if name_text is None:
        error(f"`{where}` has inline content and needs a `name` such as web@.service")
        return None
    try:
        name = parse_unit_name(name_text)
    except UnitNameError as err:
        error(f"`{where}`: {err}", ("name",) if "name" in spec else ("file",))
        return None

    try:
        unit = parse_unit_file(content)
    except UnitFileError as err:
        problems.append(Problem(source, (err.line or 0) + line_offset or None, err.col,
                                f"{err.message}"))
        return None

    instances = _instances(spec, name, where, error)
    if instances is None:
        return None
    is_global = bool(spec.get("global", False))
    if is_global and not _global_allowed(spec, where, error):
        return None
    if not _fleet_options_valid(unit, spec, name, instances, where, error):
        return None

    sidekick = None
    if "sidekick" in spec:
        sidekick = _sidekick(spec["sidekick"], where, error)
        if sidekick is None:
            return None

    metadata = tuple(
        (k, tuple(str(x) for x in (v if isinstance(v, list) else [v])))
        for k, v in spec.get("metadata", {}).items()
    )
    return UnitSet(
        name=name.full, content=content, source=source, instances=instances,
        global_=is_global, state=spec.get("state", "launched"),
        conflicts=tuple(spec.get("conflicts", ())), machine_of=spec.get("machine_of"),
        machine_id=spec.get("machine_id"), metadata=metadata, sidekick=sidekick,
        max_unavailable=spec.get("max_unavailable", 1),
    )


def _read_unit(doc: MarkedDocument, path: tuple, spec: dict, base_dir: Path,
               read_text: ReadText, error: Error) -> tuple[str, str, str | None, int] | None:
    """The unit's text, where it comes from, the name its file gives it and the line its
    text starts on in that source; None (reported) when there is none to read."""
    where = f"units[{path[1]}]"
    if "file" in spec and "content" in spec:
        error(f"`{where}` gives both `file` and `content`; keep one")
        return None
    if "file" not in spec and "content" not in spec:
        error(f"`{where}` needs `file` (a unit file path) or `content` (the unit inline)")
        return None
    if "content" in spec:
        return spec["content"], doc.file, None, doc.where(path + ("content",))[0] or 0
    file_path = base_dir / spec["file"]
    try:
        content = read_text(file_path)
    except FileNotFoundError:
        error(f"`{where}.file`: unit file {spec['file']!r} not found (looked for "
              f"{file_path}); paths are relative to the cluster file", ("file",))
        return None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        error(f"`{where}.file`: cannot read {spec['file']!r}: {err}", ("file",))
        return None
    return content, str(file_path), Path(spec["file"]).name, 0


def _global_allowed(spec: dict, where: str, error: Error) -> bool:
    for key in ("machine_of", "conflicts", "machine_id"):
        if key in spec:
            error(f"`{where}`: `global: true` cannot be combined with `{key}`; global "
                  "units run on every machine that matches `metadata`", (key,), key=True)
            return False
    return True


def _fleet_options_valid(unit: UnitFile, spec: dict, name: UnitName,
                         instances: tuple[str, ...], where: str, error: Error) -> bool:
    try:
        merged = _merge_constraints(unit, spec)
    except UnitFileError as err:
        # A YAML constraint (conflicts, machine_of, ...) holding a newline or another
        # control character cannot become a unit-file line: a positioned problem, not
        # a traceback (a user's typo must end as one line, exit 2).
        error(f"`{where}` ({name.full}): {err.message}")
        return False
    first_name = UnitName(name.prefix, instances[0], name.suffix) if instances else name
    try:
        parse_fleet_options(merged, first_name.full)
    except FleetOptionsError as err:
        error(f"`{where}` ({name.full}): {err}")
        return False
    return True


def _sidekick(side: dict, where: str, error: Error) -> Sidekick | None:
    if "port" not in side:
        error(f"`{where}.sidekick` needs a `port` to health-check and announce "
              "(e.g. port: 8080)", ("sidekick",))
        return None
    for key in ("path", "key"):
        # Both land inside the generated sidekick's Description= and ExecStart=
        # lines; a newline would end the line and smuggle in settings of its own
        # (e.g. ExecStartPre=), so control characters are refused.
        bad = _control_char(side.get(key))
        if bad is not None:
            error(f"`{where}.sidekick.{key}` holds control character U+{ord(bad):04X}; "
                  "remove it", ("sidekick", key))
            return None
    return Sidekick(port=side["port"], check=side.get("check", "tcp"),
                    path=side.get("path", "/"), ttl=side.get("ttl", 30),
                    interval=side.get("interval"), key=side.get("key"))


def _instances(spec: dict, name: UnitName, where: str, error: Callable) -> tuple[str, ...] | None:
    given = spec.get("instances")
    if name.is_template:
        if given is None:
            error(f"`{where}`: {name.full} is a template; say how many to run with "
                  "`instances: N` or list them (`instances: [a, b]`)")
            return None
        if spec.get("global"):
            error(f"`{where}`: a global unit cannot have instances", ("instances",))
            return None
        names = ([str(i) for i in range(1, given + 1)] if isinstance(given, int)
                 else [str(x) for x in given])
        seen: set[str] = set()
        for j, instance in enumerate(names):
            try:
                parse_unit_name(name.instantiate(instance).full)
            except (UnitNameError, ValueError) as err:
                error(f"`{where}.instances[{j}]`: {err}", ("instances", j))
                return None
            if instance in seen:
                error(f"`{where}.instances` lists `{instance}` twice", ("instances", j))
                return None
            seen.add(instance)
        return tuple(names)
    if given is not None:
        error(f"`{where}`: `instances` needs a template unit such as web@.service, but "
              f"{name.full} is not one", ("instances",), key=True)
        return None
    if name.is_instance:
        return ()
    return ()


def _merge_constraints(unit: UnitFile, spec: dict) -> UnitFile:
    extra: list[UnitOption] = []
    for pattern in spec.get("conflicts", ()):
        extra.append(UnitOption("X-Fleet", "Conflicts", pattern))
    if "machine_of" in spec:
        extra.append(UnitOption("X-Fleet", "MachineOf", spec["machine_of"]))
    if "machine_id" in spec:
        extra.append(UnitOption("X-Fleet", "MachineID", spec["machine_id"]))
    for key, values in spec.get("metadata", {}).items():
        for value in values if isinstance(values, list) else [values]:
            extra.append(UnitOption("X-Fleet", "MachineMetadata", f"{key}={value}"))
    if spec.get("global"):
        extra.append(UnitOption("X-Fleet", "Global", "true"))
    if not extra:
        return unit
    return UnitFile.from_options(tuple(unit.options) + tuple(extra))


def _control_char(value: object) -> str | None:
    """The first C0 control character (or DEL) in a string value, else None."""
    if not isinstance(value, str):
        return None
    return next((ch for ch in value if ord(ch) < 32 or ord(ch) == 127), None)
