"""A local node's units: etcd and fleet from their sections, the user-data's own units.

The unit files the supervisor's process runner loads for one node. etcd2 and
fleet come first (fleet ordered after etcd, so it stops first); a unit's
content and drop-ins are merged as systemd reads them; flanneld, which cannot
run here, keeps only its drop-in's ExecStartPre (storing the network config),
as a oneshot that retries until etcd answers. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetd.unit.unitfile import UnitFile, UnitFileError, parse_unit_file, serialize
from provision.userdata.services import ETCD_UNIT, FLANNEL_UNIT, FLEET_UNIT, exec_line

ETCD_UNIT_ALIASES = (ETCD_UNIT, "etcd.service", "etcd-member.service")
FLANNEL_NOTE = ("flanneld cannot run on a local node (it needs root and a VXLAN/TUN device); "
                "only its drop-in's ExecStartPre runs, so the network config still lands in "
                "etcd")
START_COMMANDS = ("start", "restart", "reload-or-restart")
HOST_ETCDCTL = ("/usr/bin/etcdctl", "/bin/etcdctl", "etcdctl")
# etcd flags whose values are secrets (a token discovery URL lets anyone join the cluster):
# handed to etcd in its environment, which only its owner can read (/proc/PID/environ is
# 0400), never on its command line, which every local user can (`ps`).
SECRET_ETCD_FLAGS = {"--discovery=": "ETCD_DISCOVERY"}


@dataclass(frozen=True)
class Tools:
    """Host programs a node runs."""

    etcd: str
    etcdctl: str
    python: str
    pythonpath: str = ""  # so `python -m fleetd.cli` works from a checkout


@dataclass(frozen=True)
class UnitPlan:
    name: str
    text: str  # the merged unit file
    start: bool


def environment_line(name: str, value: str) -> str:
    """`Environment="NAME=value"`, quoted and escaped so the unit hands over exactly `value`
    (no `$` expansion there, unlike Exec lines)."""
    escaped = (value.replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"')
               .replace("\n", "\\n"))
    return f'Environment="{name}={escaped}"'


def secrets_apart(argv: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the command line without secret flags, `Environment=` lines carrying them)."""
    kept: list[str] = []
    environment: list[str] = []
    for arg in argv:
        flag = next((f for f in SECRET_ETCD_FLAGS if arg.startswith(f)), None)
        if flag is None:
            kept.append(arg)
        else:
            environment.append(environment_line(SECRET_ETCD_FLAGS[flag], arg[len(flag):]))
    return tuple(kept), tuple(environment)


def system_unit(description: str, argv: tuple[str, ...], *, after: str = "",
                stop_timeout: int = 20, extra: tuple[str, ...] = ()) -> str:
    """A unit running `argv`; secret flags go into its environment (`secrets_apart`)."""
    argv, secrets = secrets_apart(argv)
    extra = (*secrets, *extra)
    lines = ["[Unit]", f"Description={description}"]
    if after:
        lines.append(f"After={after}")
    lines += ["", "[Service]", f"ExecStart={exec_line(argv)}", f"TimeoutStopSec={stop_timeout}",
              *extra]
    return "\n".join(lines) + "\n"


def node_units(entries: list, *, etcd_argv: tuple[str, ...], fleetd_argv: tuple[str, ...],
               tools: Tools, node_name: str, notes: list[str], problems: list[str]
               ) -> tuple[UnitPlan, ...]:
    units: dict[str, UnitPlan] = {
        ETCD_UNIT: UnitPlan(ETCD_UNIT, system_unit(f"etcd of {node_name}", etcd_argv), True),
        FLEET_UNIT: UnitPlan(FLEET_UNIT, system_unit(
            f"fleetd of {node_name}", fleetd_argv, after=ETCD_UNIT, stop_timeout=30,
            extra=(f"Environment={exec_line(['PYTHONPATH=' + tools.pythonpath])}",)
            if tools.pythonpath else ()), True),
    }
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            problems.append(f"coreos.units[{index}]: needs a `name`")
            continue
        name = entry["name"]
        start = str(entry.get("command") or "") in START_COMMANDS
        drop_ins = [d for d in entry.get("drop-ins") or [] if isinstance(d, dict)]
        if entry.get("mask"):
            units.pop(name, None)
            notes.append(f"{name} is masked; not run")
            continue
        if name in ETCD_UNIT_ALIASES or name == FLEET_UNIT:
            if drop_ins or entry.get("content"):
                notes.append(f"{name}: its content and drop-ins are not applied locally; "
                             "the node runs its own from the etcd2/fleet sections")
            own = ETCD_UNIT if name in ETCD_UNIT_ALIASES else FLEET_UNIT
            units[own] = UnitPlan(own, units[own].text, True)
            continue
        if name == FLANNEL_UNIT:
            plan = flannel_unit(drop_ins, tools, start, problems)
            notes.append(FLANNEL_NOTE)
            if plan is not None:
                units[name] = plan
            continue
        if entry.get("content") is None:
            notes.append(f"{name}: no unit file in the user-data and no stock units on a "
                         "local node; not run")
            continue
        merged = _merged(name, str(entry["content"]), drop_ins, problems)
        if merged is not None:
            units[name] = UnitPlan(name, serialize(_host_tools(merged, tools)), start)
    return tuple(units.values())


def _merged(name: str, content: str, drop_ins: list[dict], problems: list[str]
            ) -> UnitFile | None:
    """The unit with its drop-ins applied in name order, as systemd reads them."""
    try:
        options = list(parse_unit_file(content).options)
        for drop_in in sorted(drop_ins, key=lambda d: str(d.get("name", ""))):
            options += parse_unit_file(str(drop_in.get("content") or "")).options
    except UnitFileError as err:
        problems.append(f"unit {name}: {err}")
        return None
    return UnitFile(tuple(options))


def _host_tools(unit: UnitFile, tools: Tools) -> UnitFile:
    """Point a unit's etcdctl commands at the etcdctl that goes with our etcd."""
    options = []
    for option in unit.options:
        value = option.value
        if option.section == "Service" and option.name.startswith("Exec"):
            value = _swap_etcdctl(value, tools.etcdctl)
        options.append(type(option)(option.section, option.name, value))
    return UnitFile(tuple(options))


def _swap_etcdctl(value: str, etcdctl: str) -> str:
    stripped = value.lstrip("-@+!:")
    prefix = value[: len(value) - len(stripped)]
    for name in HOST_ETCDCTL:
        if stripped == name or stripped.startswith(name + " "):
            return prefix + exec_line([etcdctl]) + stripped[len(name):]
    return value


def flannel_unit(drop_ins: list[dict], tools: Tools, start: bool, problems: list[str]
                 ) -> UnitPlan | None:
    """flanneld's drop-in ExecStartPre lines as a oneshot that retries until etcd answers."""
    try:
        pre = [value for d in sorted(drop_ins, key=lambda d: str(d.get("name", "")))
               for value in parse_unit_file(str(d.get("content") or "")).get(
                   "Service", "ExecStartPre")]
    except UnitFileError as err:
        problems.append(f"unit {FLANNEL_UNIT}: {err}")
        return None
    if not pre:
        return None
    lines = ["[Unit]", "Description=flanneld network config (flanneld itself cannot run "
             "locally)", f"After={ETCD_UNIT}", "StartLimitIntervalSec=0", "", "[Service]",
             "Type=oneshot", "RemainAfterExit=yes", "Restart=on-failure", "RestartSec=1"]
    lines += [f"ExecStart={_swap_etcdctl(value, tools.etcdctl)}" for value in pre if value]
    return UnitPlan(FLANNEL_UNIT, "\n".join(lines) + "\n", start)
