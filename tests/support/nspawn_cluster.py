"""A real nspawn cluster for integration tests: clusters/nspawn.yaml under a random name,
its own state root, `provision` run as a user would, and looks into the machines."""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from provision.providers.nspawn import layout
from provision.providers.nspawn.machines import PROPAGATE_DIR, Machine, cgroup_hierarchies
from provision.providers.nspawn.provider import requirements_problem, state_dir_of
from tests.support.localenv import REPO

UP_TIMEOUT = 300.0


def nspawn_problem() -> str | None:
    """Why this host cannot boot nspawn clusters (the skip reason), or None."""
    from provision.image.build import image_problem

    return requirements_problem() or image_problem()


class NspawnCluster:
    def __init__(self, discovery: dict | None = None) -> None:
        """clusters/nspawn.yaml under a name of its own; `discovery` replaces its
        etcd.discovery."""
        self.base = Path(tempfile.mkdtemp(prefix="pvn-test-"))
        shutil.copytree(REPO / "clusters" / "units", self.base / "units")
        data = yaml.safe_load((REPO / "clusters" / "nspawn.yaml").read_text())
        self.name = f"nst{random.randrange(16**5):05x}"
        if discovery is not None:
            data["etcd"]["discovery"] = dict(discovery)
        data["name"] = data["etcd"]["discovery"]["cluster_token"] = self.name
        self.path = self.base / f"{self.name}.yaml"
        self.path.write_text(yaml.safe_dump(data, sort_keys=False))
        self.state_root = self.base / "state"
        self.env = {**os.environ, "PROVISION_STATE": str(self.state_root),
                    "PYTHONPATH": str(REPO)}
        self.nodes = ["core-01", "core-02", "core-03"]
        self.namespace = layout.namespace(self.name)

    @property
    def state_dir(self) -> Path:
        return state_dir_of(self.name, self.state_root)

    def provision(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "provision.cli", *argv],
                              capture_output=True, text=True, timeout=timeout,
                              cwd=self.base, stdin=subprocess.DEVNULL, env=self.env)

    def machine(self, node: str) -> Machine:
        return Machine(layout.machine_name(self.name, node), self.state_dir / "nodes" / node)

    def in_machine(self, node: str, *argv: str) -> str:
        return self.machine(node).run(*argv).stdout.strip()

    def fleetctl(self, *argv: str) -> str:
        """fleetctl on a running machine's API socket, straight from the host (root)."""
        pid = next(p for n in self.nodes if (p := self.machine(n).pid1()) is not None)
        endpoint = f"unix:///proc/{pid}/root{layout.FLEET_API_SOCKET}"
        done = subprocess.run([sys.executable, "-m", "fleetd.fleetctl.main", "--endpoint",
                               endpoint, *argv], capture_output=True, text=True, timeout=60,
                              env=self.env, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def exports(self) -> dict[str, str]:
        """What `provision env` exports."""
        done = self.provision("env", self.name)
        assert done.returncode == 0, done.stderr
        return {key: (shlex.split(value) or [""])[0] for key, _, value in (
            line.removeprefix("export ").partition("=") for line in done.stdout.splitlines()
            if line.startswith("export "))}

    def fleetctl_as_env_says(self, *argv: str, netns: bool = False
                             ) -> subprocess.CompletedProcess:
        """fleetctl with `provision env`'s settings (through SSH), from the host's shell or
        (netns) inside the cluster's network namespace."""
        env = {k: v for k, v in self.env.items() if not k.startswith("FLEETCTL_")}
        prefix = ["ip", "netns", "exec", self.namespace] if netns else []
        return subprocess.run([*prefix, sys.executable, "-m", "fleetd.fleetctl.main", *argv],
                              capture_output=True, text=True, timeout=120,
                              env={**env, **self.exports()}, stdin=subprocess.DEVNULL)

    def etcdctl(self, *argv: str) -> subprocess.CompletedProcess:
        """etcdctl inside the namespace, with what `provision env` exports (the https
        endpoints and the admin certificate: etcd wants a client certificate)."""
        exports = dict(line[len("export "):].split("=", 1)
                       for line in self.provision("env", self.name).stdout.splitlines()
                       if line.startswith("export ETCDCTL_"))
        return subprocess.run(
            ["ip", "netns", "exec", self.namespace, shutil.which("etcdctl") or "etcdctl",
             *argv], capture_output=True, text=True, timeout=30,
            env={**self.env, **exports, "ETCDCTL_API": "3"})

    def etcd_get(self, prefix: str) -> dict[str, dict]:
        """Keys under `prefix` with their JSON values, read inside the namespace."""
        done = self.etcdctl("get", "--prefix", prefix)
        lines = done.stdout.splitlines()
        return {lines[i]: json.loads(lines[i + 1]) for i in range(0, len(lines) - 1, 2)}

    def where(self, unit: str) -> str | None:
        """The node whose own systemd has `unit` active (None if none; fails if several)."""
        active = [n for n in self.nodes if self.machine(n).running()
                  and self.in_machine(n, "systemctl", "is-active", unit) == "active"]
        assert len(active) <= 1, f"{unit} active on {active}"
        return active[0] if active else None

    def leftovers(self) -> list[str]:
        found = []
        if Path("/run/netns", self.namespace).exists():
            found.append(f"netns {self.namespace}")
        for hierarchy in cgroup_hierarchies():
            found += [str(p) for p in hierarchy.glob(f"{layout.MACHINE_PREFIX}{self.name}-*")]
        found += [str(p) for p in PROPAGATE_DIR.glob(f"{layout.MACHINE_PREFIX}{self.name}-*")]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                except OSError:
                    continue
                if (f"{layout.MACHINE_PREFIX}{self.name}-".encode() in cmdline
                        or str(self.state_dir).encode() in cmdline):  # e.g. its dnsmasq
                    found.append(f"process {entry}")
        if self.state_dir.exists():
            found.append(str(self.state_dir))
        return found

    def close(self) -> None:
        if self.state_dir.exists():
            self.provision("down", self.name, "--purge", timeout=180)
        for node in self.nodes:  # whatever a failed down left
            self.machine(node).stop(timeout=10)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, check=False)
        shutil.rmtree(self.base, ignore_errors=True)


@contextmanager
def booted_cluster(discovery: dict | None = None) -> Iterator[NspawnCluster]:
    """`provision up` of a fresh cluster (the image built first: a first build is not part
    of `up`'s timeout); down --purge and every leftover removed afterwards."""
    from provision.image import ensure_image, hold_image, release_image

    image = ensure_image()
    hold_image(image)
    running = NspawnCluster(discovery)
    try:
        up = running.provision("up", str(running.path), "--timeout", str(UP_TIMEOUT),
                               timeout=UP_TIMEOUT + 60)
        assert up.returncode == 0, up.stdout + up.stderr
        running.up_output = up.stdout + up.stderr
        yield running
    finally:
        running.close()
        release_image(image)
