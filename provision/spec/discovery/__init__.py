"""etcd discovery modes: one module each, one object each, in `MODES`.

A mode answers everything that differs between them (`base.DiscoveryMode`): its keys and
their checks, what a render resolves, the etcd2 keys, the files beside the user-data,
what the manifest records, its certificates' extra names and what a provider must start
besides the nodes. Model building, rendering, `pki` and the providers look a mode up
here by name; adding one is a module with its `MODE` and a line below.
"""

from __future__ import annotations

from provision.spec.discovery import custom, dns_srv, static, token
from provision.spec.discovery.base import (
    BootNeeds,
    DiscoveryMode,
    DiscoveryRecord,
    DnsZone,
    ResolveContext,
    Resolved,
)
from provision.spec.model import Cluster

MODES: dict[str, DiscoveryMode] = {m.name: m for m in (
    static.MODE, token.MODE, custom.MODE, dns_srv.MODE)}
DEFAULT_MODE = static.MODE.name

__all__ = ["MODES", "BootNeeds", "DiscoveryMode", "DiscoveryRecord", "DnsZone",
           "Resolved", "ResolveContext", "boot_needs", "mode_of", "schema_keys"]


def mode_of(cluster: Cluster) -> DiscoveryMode:
    return MODES[cluster.etcd.discovery.mode]


def boot_needs(record: DiscoveryRecord) -> BootNeeds:
    """What a provider must do besides starting the nodes, from the manifest's record."""
    return MODES[record.mode].boot_needs(record)


def schema_keys() -> dict[str, dict]:
    """Every `etcd.discovery` key any mode reads, with its JSON Schema (modes that share a
    key must agree on it): the keys of one mode first, in the table's order, then the
    shared ones."""
    keys: dict[str, dict] = {}
    for mode in MODES.values():
        for key, schema in mode.keys.items():
            if keys.setdefault(key, schema) != schema:
                raise AssertionError(f"discovery modes disagree on the schema of {key!r}")
    shared = [key for key in keys if len(modes_reading(key)) > 1]
    return {key: keys[key] for key in sorted(keys, key=shared.__contains__)}


def modes_reading(key: str) -> list[str]:
    """The names of the modes that read `etcd.discovery.<key>`."""
    return sorted(name for name, mode in MODES.items() if key in mode.keys)
