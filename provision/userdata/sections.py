"""Cluster-file settings that land verbatim in a rendered `coreos.*` section, checked early.

`etcd.settings` and a node's `etcd2:` / `fleet:` pass keys and values straight
into the rendered `coreos.etcd2` / `coreos.fleet` sections. Each is checked by
validating the very lines the template writes for it, so a cluster file is
warned about (or refused for) exactly what `provision validate --user-data`
would report on its rendered user-data, at the cluster file's position.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from provision.userdata.rules import canonical
from provision.userdata.validate import validate_user_data
from provision.yamltext import scalar

_SERVICES = {"etcd2": ("etcd2.service", "ETCD_"), "fleet": ("fleet.service", "FLEET_")}
_FIRST_ENTRY_LINE = 4  # after "#cloud-config", "coreos:" and the section's own line
_KEY_COLUMN = 5


@dataclass(frozen=True)
class SectionFinding:
    """One problem with one passed-through setting, keyed by the user's spelling."""

    key: str
    at_key: bool
    severity: str
    message: str


def check_section(section: str, entries: Mapping[str, tuple[object, str]]
                  ) -> list[SectionFinding]:
    """Problems of `entries` ({rendered key: (value, key as the user wrote it)}) in
    `coreos.<section>`, as coreos-cloudinit v1.13.0 reports them on the rendered file."""
    keys = list(entries)
    lines = ["#cloud-config", "coreos:", f"  {section}:"]
    lines += [f"    {scalar(key)}: {scalar(value)}" for key, (value, _) in entries.items()]
    findings = []
    for problem in validate_user_data("\n".join(lines) + "\n", section):
        index = (problem.line or 0) - _FIRST_ENTRY_LINE
        if not 0 <= index < len(keys):
            continue
        rendered = keys[index]
        user_key = entries[rendered][1]
        value = entries[rendered][0]
        findings.append(SectionFinding(user_key, problem.col == _KEY_COLUMN, problem.severity,
                                       _explain(section, rendered, value, problem.message)))
    return findings


def _explain(section: str, key: str, value: object, message: str) -> str:
    if not message.startswith("unrecognized key"):
        if isinstance(value, bool) and message.startswith("invalid value"):
            message += ("; YAML 1.1 reads unquoted on/off/yes/no as true/false, so quote "
                        "the value")
        return f"{message}; it lands in coreos.{section} of the rendered user-data"
    unit, prefix = _SERVICES.get(section, (f"{section}.service", ""))
    variable = prefix + canonical(key).upper()
    return (f'"{key}" is not a key of CoreOS\'s {section} section: coreos-cloudinit v1.13.0 '
            f"warns of an unrecognized key and {unit} on CoreOS never gets it; set {variable} "
            f"in a drop-in for {unit} instead")
