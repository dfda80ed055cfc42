"""The fleet units a cluster definition declares, as they are to be stored (pure).

    desired_units(cluster) -> tuple[DesiredUnit, ...]

Each declared unit set becomes one unit per instance (or one plain/global unit) whose
text is the unit file with the YAML constraints merged into `[X-Fleet]` and a
`[X-Provision]` section naming the cluster: that mark is how `apply --prune` knows which
units it may destroy, and it travels with the unit, so nothing else has to be kept in
step with the registry. A set with `sidekick:` also gets, per instance, an announcer unit
(`web-announce@1.service` for `web@1.service`) shaped like fleet's documented sidekicks:
`BindsTo=` and `After=` its parent, `MachineOf=` its parent, running `fleetd announce`. The sidekick
names its parent's content hash, so a replaced parent replaces its sidekick in the same
step: the runner's BindsTo= stops the sidekick with the old parent, and the new sidekick
starts after the new parent.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetd.job import JobState
from fleetd.registry.keys import DEFAULT_PREFIX, SERVICES_PREFIX
from fleetd.unit.names import UnitName, parse_unit_name
from fleetd.unit.unitfile import UnitFile, UnitOption, content_hash, parse_unit_file, serialize
from provision.errors import Problem, UserError
from provision.pki import CA_NAME, node_file
from provision.spec.model import Cluster, Sidekick, UnitSet

MARK_SECTION = "X-Provision"
MARK_CLUSTER = "Cluster"
ANNOUNCE_SUFFIX = "-announce"


@dataclass(frozen=True)
class Announcement:
    key: str          # the etcd key that holds the instance's JSON while it is healthy
    sidekick: str     # the announcer unit's name


@dataclass(frozen=True)
class DesiredUnit:
    name: str
    text: str
    hash: str
    state: JobState
    set_name: str                 # the declared unit set (e.g. web@.service)
    is_global: bool = False
    parent: str | None = None     # for a sidekick: the unit it announces
    announcement: Announcement | None = None  # for a unit with a sidekick
    rolling: bool = False         # replaced a few at a time (instances of a template set)
    max_unavailable: int = 1


def owner_of(unit: UnitFile) -> str | None:
    """The cluster whose apply created this unit (its [X-Provision] mark), if any."""
    for option in unit.options:
        if option.section == MARK_SECTION and option.name == MARK_CLUSTER:
            return option.value
    return None


def etcd_endpoints(cluster: Cluster) -> tuple[str, ...]:
    """Where fleet's registry answers: fleet's own `etcd_servers`, else every member."""
    if cluster.fleet.etcd_servers and not any("$" in s for s in cluster.fleet.etcd_servers):
        return cluster.fleet.etcd_servers
    return tuple(f"{cluster.etcd_scheme}://{m.ip}:{cluster.etcd.client_port}"
                 for m in cluster.members)


def fleet_prefix(cluster: Cluster) -> str:
    return cluster.fleet.etcd_key_prefix or DEFAULT_PREFIX


def desired_units(cluster: Cluster) -> tuple[DesiredUnit, ...]:
    """Every unit the cluster declares, sidekicks included, in declaration order."""
    units: list[DesiredUnit] = []
    for unit_set in cluster.units:
        units.extend(_units_of(cluster, unit_set))
    taken: dict[str, str] = {}
    problems = []
    for unit in units:
        if unit.name in taken:
            problems.append(Problem(cluster.source, None, None,
                                    f"unit {unit.name} is declared by {taken[unit.name]} and "
                                    f"generated as a sidekick of {unit.parent or unit.set_name}"
                                    "; rename one of them"))
        taken.setdefault(unit.name, unit.set_name)
    if problems:
        raise UserError(problems)
    return tuple(units)


def _units_of(cluster: Cluster, unit_set: UnitSet) -> list[DesiredUnit]:
    base = merged_unit(unit_set)
    state = JobState(unit_set.state)
    rolling = len(unit_set.unit_names) > 1
    found = []
    for name in unit_set.unit_names:
        unit = _marked(base, cluster.name)
        parent_hash = content_hash(unit)
        announcement = None
        if unit_set.sidekick is not None:
            key = announce_key(unit_set, name)
            side_name = sidekick_name(name)
            announcement = Announcement(key, side_name)
        found.append(DesiredUnit(name, serialize(unit), parent_hash, state, unit_set.name,
                                 is_global=unit_set.global_, announcement=announcement,
                                 rolling=rolling, max_unavailable=unit_set.max_unavailable))
        if announcement is not None:
            side = _marked(sidekick_unit(cluster, unit_set.sidekick, name, announcement.key,
                                         parent_hash), cluster.name)
            found.append(DesiredUnit(announcement.sidekick, serialize(side), content_hash(side),
                                     state, unit_set.name, parent=name, rolling=rolling,
                                     max_unavailable=unit_set.max_unavailable))
    return found


def merged_unit(unit_set: UnitSet) -> UnitFile:
    """The unit file with the set's YAML constraints added to its [X-Fleet] section."""
    unit = parse_unit_file(unit_set.content)
    extra = [UnitOption("X-Fleet", "Conflicts", c) for c in unit_set.conflicts]
    if unit_set.machine_of:
        extra.append(UnitOption("X-Fleet", "MachineOf", unit_set.machine_of))
    if unit_set.machine_id:
        extra.append(UnitOption("X-Fleet", "MachineID", unit_set.machine_id))
    for key, values in unit_set.metadata:
        extra.extend(UnitOption("X-Fleet", "MachineMetadata", f"{key}={v}") for v in values)
    if unit_set.global_:
        extra.append(UnitOption("X-Fleet", "Global", "true"))
    return UnitFile.from_options(tuple(unit.options) + tuple(extra)) if extra else unit


def _marked(unit: UnitFile, cluster: str) -> UnitFile:
    kept = tuple(o for o in unit.options
                 if (o.section, o.name) != (MARK_SECTION, MARK_CLUSTER))
    return UnitFile.from_options(kept + (UnitOption(MARK_SECTION, MARK_CLUSTER, cluster),))


def sidekick_name(parent: str) -> str:
    name = parse_unit_name(parent)
    return UnitName(name.prefix + ANNOUNCE_SUFFIX, name.instance, name.suffix).full


def announce_key(unit_set: UnitSet, unit: str) -> str:
    """/services/<set>/<instance> (the set's prefix and the instance, or the unit's name)."""
    name = parse_unit_name(unit)
    base = unit_set.sidekick.key if unit_set.sidekick and unit_set.sidekick.key else (
        f"{SERVICES_PREFIX}{name.prefix}")
    return f"{base.rstrip('/')}/{name.instance or name.prefix}"


def exec_word(value: str) -> str:
    """One literal word of an ExecStart= line, as systemd reads it: `%`, `$` and `\\` are
    escaped (systemd expands specifiers, variables and escapes even inside quotes) and a
    word with blanks or quotes is double-quoted. (Shell quoting would not do: this line is
    never seen by a shell.)"""
    escaped = (value.replace("\\", "\\\\").replace("%", "%%").replace("$", "$$")
               .replace('"', '\\"'))
    return f'"{escaped}"' if not value or any(c in value for c in " \t'\"") else escaped


def sidekick_unit(cluster: Cluster, sidekick: Sidekick, parent: str, key: str,
                  parent_hash: str) -> UnitFile:
    words = [exec_word(a) for a in (
        "/usr/bin/env", "fleetd", "announce", "--unit", parent, "--key", key,
        "--port", str(sidekick.port), "--check", sidekick.check, "--ttl", str(sidekick.ttl),
        "--etcd-servers", ",".join(etcd_endpoints(cluster)),
        "--etcd-key-prefix", fleet_prefix(cluster))]
    if cluster.tls:  # the node's fleetd certificate
        words += [exec_word(a) for a in (
            "--etcd-cafile", node_file(CA_NAME), "--etcd-certfile", node_file("fleetd"),
            "--etcd-keyfile", node_file("fleetd", key=True))]
    words += ["--machine", "%m", "--host", "%H"]  # specifiers, expanded where it runs
    if sidekick.check == "http":
        words += ["--path", exec_word(sidekick.path)]
    if sidekick.interval is not None:
        words += ["--interval", f"{sidekick.interval:g}"]
    text = "\n".join([
        "[Unit]",
        f"Description=Announce {parent} at {key} while its {sidekick.check} check passes",
        f"BindsTo={parent}",
        f"After={parent}",
        # Rolling replaces restart it several times in a few seconds; systemd's default
        # start limit (5 in 10 s) would then refuse it and fail the apply.
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "ExecStart=" + " ".join(words),
        "Restart=always",
        "RestartSec=2",
        "",
        "[X-Fleet]",
        f"MachineOf={parent}",
        "",
        f"[{MARK_SECTION}]",
        f"Parent={parent}",
        f"ParentHash={parent_hash}",
        "",
    ])
    return parse_unit_file(text)
