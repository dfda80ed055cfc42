"""Waiting for nodes to be healthy: one loop, one deadline, a progress line per node.

`Waiter.wait` polls, until the deadline, the supervisor's status (a failed
etcd, fleet or node unit fails at once, with that unit's log lines) and the
probes (health.py): etcd answers, the fleet machine is registered, the node
units are active. The probes run here, or inside the cluster's network
namespace for dns-srv clusters.
"""

from __future__ import annotations

import errno
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from fleetd.registry.keys import DEFAULT_PREFIX
from provision.errors import OperationFailed
from provision.files import disk_error, write_atomic
from provision.providers.local import control, nodes, state
from provision.providers.local.boot import NodeBoot
from provision.providers.local.dns import exec_prefix
from provision.providers.local.health import NamespaceProber, Prober, excerpt, unit_state
from provision.providers.local.progress import COLUMNS, Progress
from provision.providers.local.units import ETCD_UNIT, FLEET_UNIT
from provision.render.manifest import Manifest

POLL_S = 0.1


def prober_for(state_dir: Path, manifest: Manifest, boots: list[NodeBoot]
               ) -> Prober | NamespaceProber:
    endpoints = list(manifest.etcd.endpoints)
    prefix = boots[0].fleet_prefix if boots else DEFAULT_PREFIX
    netns = nodes.netns(state_dir)
    tls = nodes.etcd_tls(state_dir, manifest)
    if netns:
        return NamespaceProber(endpoints, prefix, exec_prefix(netns),
                               {**os.environ, "PYTHONPATH": control.python_path()}, tls)
    return Prober(endpoints, prefix, tls)


class Waiter:
    """Polls node health against a deadline and shows it; raises on failure or timeout."""

    def __init__(self, state_dir: Path, boots: list[NodeBoot], manifest: Manifest,
                 progress: Progress | None) -> None:
        self.state_dir = state_dir
        self.boots = {b.name: b for b in boots}
        self.ids = nodes.machine_ids(state_dir)
        self.prober = prober_for(state_dir, manifest, boots)
        self.progress = progress

    def close(self) -> None:
        self.prober.close()

    def wait(self, names: list[str], generation: int, deadline: float,
             columns: tuple[str, ...] = COLUMNS) -> None:
        done: dict[str, set[str]] = {name: set() for name in names}
        while True:
            status = control.read_status(self.state_dir, generation)
            if status is None and not control.running(self.state_dir):
                raise OperationFailed("the cluster supervisor exited\n"
                                      + excerpt(self.state_dir / state.LOG_FILE))
            if problem := control.writes_problem(self.state_dir):
                # It cannot tell us what it does: the disk refuses its status file.
                raise disk_error(OSError(problem.get("errno") or errno.ENOSPC,
                                         str(problem.get("error")), str(problem.get("path"))))
            if status is not None:
                self._check(names, status, done, columns)
            missing = {n: [c for c in columns if c not in done[n]] for n in names}
            if not any(missing.values()):
                return
            if time.monotonic() > deadline:
                raise self._timeout(missing)
            time.sleep(POLL_S)

    def _check(self, names: list[str], status: dict, done: dict[str, set[str]],
               columns: tuple[str, ...]) -> None:
        node_status = {n: (status.get("nodes") or {}).get(n) or {} for n in names}
        self._shared_fail_fast(status.get("shared") or {})
        for name in names:
            self._fail_fast(name, node_status[name])
        if "etcd" in columns:
            probe = [n for n in names if "etcd" not in done[n]
                     and node_status[n].get("state") == "running"]
            healthy = self.prober.etcd([self.boots[n].etcd_url for n in probe]) if probe else []
            for name, ok in zip(probe, healthy, strict=True):
                if ok:
                    done[name].add("etcd")
                    mark_member(self.boots[name])
                    self._show(name, "etcd", "ok", "healthy")
        if "fleet" in columns and any("fleet" not in done[n] for n in names):
            registered = self.prober.machines() or set()
            for name in names:
                if "fleet" not in done[name] and self.ids.get(name) in registered:
                    done[name].add("fleet")
                    self._show(name, "fleet", "ok", f"registered {self.ids[name][:8]}")
        if "units" in columns:
            for name in names:
                wanted = self.boots[name].node_units
                active = [u for u in wanted if unit_state(node_status[name], u)[0] == "active"]
                if len(active) == len(wanted):
                    done[name].add("units")
                    self._show(name, "units", "ok", f"{len(active)}/{len(wanted)} active"
                               if wanted else "none declared")
                else:
                    self._show(name, "units", "waiting", f"{len(active)}/{len(wanted)} active")

    def _fail_fast(self, name: str, node_status: dict) -> None:
        boot = self.boots[name]
        if node_status.get("error"):
            raise OperationFailed(f"node {name} ({boot.ip}) did not start: "
                                  f"{node_status['error']}\n"
                                  + excerpt(self.state_dir / state.LOG_FILE))
        for unit in boot.started_units:
            active, sub = unit_state(node_status, unit)
            if active == "failed":
                column = {ETCD_UNIT: "etcd", FLEET_UNIT: "fleet"}.get(unit, "units")
                self._show(name, column, "failed", f"{unit} failed")
                raise OperationFailed(f"node {name} ({boot.ip}): {unit} failed ({sub})\n"
                                      + excerpt(boot.dirs.unit_log(unit)))

    def _shared_fail_fast(self, shared: dict) -> None:
        logs = self.state_dir / state.SHARED / "system" / "logs"
        if shared.get("error"):
            raise OperationFailed(f"the cluster's shared services did not start: "
                                  f"{shared['error']}\n" + excerpt(logs / "dnsmasq.service.log"))
        for unit in (shared.get("units") or {}):
            if unit_state(shared, unit)[0] == "failed":
                raise OperationFailed(f"{unit} (shared by every node) failed\n"
                                      + excerpt(logs / f"{unit}.log"))

    def _show(self, name: str, column: str, kind: str, text: str) -> None:
        if self.progress is not None and name in self.progress.rows:
            self.progress.set(name, column, kind, text)

    def _timeout(self, missing: dict[str, list[str]]) -> OperationFailed:
        what = {"etcd": "etcd not healthy", "fleet": "fleet machine not registered",
                "units": "node units not active"}
        late = [(n, cols) for n, cols in missing.items() if cols]
        summary = ", ".join(f"{n} ({'; '.join(what[c] for c in cols)})" for n, cols in late)
        name, cols = late[0]
        boot = self.boots[name]
        if cols[0] == "etcd":
            log = boot.dirs.unit_log(ETCD_UNIT)
        elif cols[0] == "fleet":
            log = boot.dirs.unit_log(FLEET_UNIT)
        else:
            log = boot.dirs.unit_log(boot.node_units[0]) if boot.node_units else \
                boot.dirs.unit_log(FLEET_UNIT)
        return OperationFailed(f"not healthy before the deadline: {summary}\n" + excerpt(log))


def mark_member(boot: NodeBoot) -> None:
    """Record that this node's etcd serves as a member with data (see NodeBoot.member_marker)."""
    if boot.role != "etcd-member" or boot.member_marker.exists() or \
            not (boot.dirs.etcd / "member").is_dir():
        return
    write_atomic(boot.member_marker, json.dumps({
        "name": boot.name, "peer_url": boot.peer_url, "data_dir": str(boot.dirs.etcd),
        "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}) + "\n")


def lost_members(boots: list[NodeBoot]) -> list[NodeBoot]:
    """Members whose etcd served with data once and whose data directory is gone now."""
    return [b for b in boots if b.role == "etcd-member" and b.member_marker.exists()
            and not (b.dirs.etcd / "member").is_dir()]
