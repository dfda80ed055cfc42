"""1,000 units on the 3-node local example with its 5 s agent TTL.

`provision apply` of 1,000 `/bin/sleep infinity` instances converges; meanwhile no machine
key ever disappears (no node loses its lease to its own work), and no unit is ever active
on two machines at once (watched on the unit state keys through the whole apply). At the
end exactly 1,000 unit processes run, one per unit, each a child of its node's one
runner supervisor (no interpreter per unit). Then a rolling replace (max_unavailable 50)
keeps the same guarantees.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fleetd.registry.etcd import Etcd
from fleetd.registry.keys import Kind
from fleetd.registry.registry import Registry
from tests.support.etcd import wait_for
from tests.support.localenv import REPO, UP_TIMEOUT, Env

UNITS = 1000
TEMPLATE = "[Service]\nEnvironment=GENERATION={generation}\nExecStart=/bin/sleep infinity\n"


def provision(env: Env, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    exe = shutil.which("provision")
    command = [exe] if exe else [sys.executable, "-m", "provision.cli"]
    return subprocess.run([*command, *argv], capture_output=True, text=True, timeout=timeout,
                          cwd=env.base, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PROVISION_STATE": str(env.state_root),
                               "PYTHONPATH": str(REPO)})


class Watcher:
    """Every machine-key deletion, and every moment a unit was active on two machines."""

    def __init__(self, etcd: Etcd, registry: Registry) -> None:
        self.etcd, self.keys = etcd, registry.keys
        self.events: queue.Queue = queue.Queue()
        revision = etcd.revision() + 1
        self.cancels = [etcd.watch(self.keys.of(Kind.MACHINE), revision, self.events),
                        etcd.watch(self.keys.of(Kind.STATE), revision, self.events)]
        self.active: dict[str, set[str]] = {}
        self.machines_lost: list[str] = []
        self.twice: list[tuple[str, set[str]]] = []

    def drain(self) -> None:
        while True:
            try:
                batch = self.events.get_nowait()
            except queue.Empty:
                return
            if isinstance(batch, Exception):
                raise batch
            for event in batch:
                parsed = self.keys.parse(event.key)
                if parsed is None:
                    continue
                if parsed.kind is Kind.MACHINE and event.value is None:
                    self.machines_lost.append(parsed.machine)
                elif parsed.kind is Kind.STATE:
                    where = self.active.setdefault(parsed.name, set())
                    active = (event.value is not None
                              and json.loads(event.value).get("active") == "active")
                    (where.add if active else where.discard)(parsed.machine)
                    if len(where) > 1:
                        self.twice.append((parsed.name, set(where)))

    def close(self) -> None:
        for cancel in self.cancels:
            cancel()


def sleepers(state_dir: Path) -> list[tuple[int, int]]:
    """(pid, parent pid) of every `sleep infinity` started under this cluster's state dir."""
    marker = str(state_dir).encode()
    tree: dict[int, int] = {}
    cmdlines: dict[int, bytes] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
            cmdlines[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        tree[int(entry)] = int(stat[stat.rfind(b")") + 2:].split()[1])
    roots = {pid for pid, cmd in cmdlines.items() if marker in cmd}

    def under(pid: int) -> bool:
        seen = set()
        while pid > 1 and pid not in seen:
            if pid in roots:
                return True
            seen.add(pid)
            pid = tree.get(pid, 0)
        return False

    return [(pid, tree[pid]) for pid, cmd in cmdlines.items()
            if cmd == b"/bin/sleep\0infinity\0" and under(pid)]


@pytest.fixture(scope="module")
def env():
    env = Env()
    try:
        yield env
    finally:
        env.close()


def declare(env: Env, path: Path, generation: int, max_unavailable: int) -> Path:
    data = yaml.safe_load(path.read_text())
    folder = env.base / "units-many"
    folder.mkdir(exist_ok=True)
    (folder / "job@.service").write_text(TEMPLATE.format(generation=generation))
    data["units"] = [{"file": "units-many/job@.service", "instances": UNITS,
                      "max_unavailable": max_unavailable}]
    out = env.base / f"many-{generation}.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def test_a_thousand_units_converge_with_a_5s_ttl_never_twice_never_losing_a_machine(env):
    path, name = env.cluster("local.yaml", units=[])
    assert yaml.safe_load(path.read_text())["fleet"]["agent_ttl"] == "5s"
    up = provision(env, "up", str(path), "--timeout", str(UP_TIMEOUT))
    assert up.returncode == 0, up.stderr
    exports = provision(env, "env", name).stdout
    endpoints = exports.split("ETCDCTL_ENDPOINTS=", 1)[1].split()[0].split(",")
    etcd = Etcd(endpoints, timeout=5, tls=env.tls(name))
    registry = Registry(etcd)
    watcher = Watcher(etcd, registry)
    try:
        for generation, max_unavailable in ((1, 50), (2, 50)):
            applied = provision(env, "apply", str(declare(env, path, generation,
                                                          max_unavailable)),
                                "--timeout", "900", timeout=1000)
            assert applied.returncode == 0, applied.stderr[-2000:]
            watcher.drain()
            assert watcher.machines_lost == [], "a machine lost its lease during apply"
            assert watcher.twice == [], f"units active on two machines: {watcher.twice[:5]}"
        states = registry.states()
        active = [s for s in states if s.status.active == "active"]
        assert len({s.name for s in active}) == UNITS and len(active) == UNITS
        state_dir = env.state_dir(name)
        assert wait_for(lambda: len(sleepers(state_dir)) == UNITS, 60,
                        message=f"{UNITS} unit processes")
        found = sleepers(state_dir)
        parents = {parent for _, parent in found}
        assert len(parents) == 3, "one supervisor per node is every unit's parent"
        for parent in parents:
            assert b"supervisor.py" in Path(f"/proc/{parent}/cmdline").read_bytes()
    finally:
        watcher.close()
        etcd.close()
        provision(env, "down", name, timeout=300)
