"""Real fleetd processes for integration tests, and a view of what actually runs.

Every test unit's main process records its pid in `<run dir>/<unit>@<machine>.pid`,
so the tests check real processes (not just what the registry says) for "active on
two machines at once".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fleetd.registry.etcd import Etcd
from fleetd.registry.registry import Registry
from tests.support.etcd import wait_for

REPO = Path(__file__).resolve().parents[2]
STARTUP_S = 60  # a fleetd process starting, on a loaded machine


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not running
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def sleeper_unit(run_dir: Path, extra: str = "", xfleet: str = "") -> str:
    """A unit whose main process records its pid and sleeps."""
    return (f"[Unit]\nDescription=test unit %n\n{extra}\n[Service]\n"
            f"ExecStart=/bin/sh -c 'echo $$$$ > {run_dir}/%n@%m.pid; exec sleep 1000'\n"
            + (f"\n[X-Fleet]\n{xfleet}\n" if xfleet else ""))


@dataclass
class FleetdProcess:
    name: str
    state_dir: Path
    process: subprocess.Popen
    log_path: Path

    @property
    def machine_id(self) -> str:
        def written() -> str:
            try:
                return (self.state_dir / "machine-id").read_text().strip()
            except FileNotFoundError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"fleetd exited ({self.process.returncode}) before "
                                       f"writing it: {self.log()[-1000:]}") from None
                raise
        # Written once fleetd has imported its modules and read its config: on a loaded
        # machine a Python process can take well over 10 s to get there.
        return wait_for(written, STARTUP_S, message=f"{self.name} machine id")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class FleetHarness:
    etcd_url: str
    prefix: str
    base: Path
    ttl: int = 3
    fleetds: dict[str, FleetdProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.run_dir = self.base / "run"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.etcd = Etcd([self.etcd_url], timeout=3)
        self.registry = Registry(self.etcd, self.prefix)

    def start(self, name: str, metadata: str = "", engine: bool = True,
              runner: tuple[str, ...] = ("--runner", "process"),
              env: dict[str, str] | None = None, *, etcd_urls: list[str] | None = None,
              public_ip: str = "127.0.0.1", wrapper: tuple[str, ...] = (),
              base_env: dict[str, str] | None = None) -> FleetdProcess:
        """A fleetd on this harness's etcd (or `etcd_urls`); `runner`: its runner flags,
        `env`: extra environment (e.g. DBUS_SYSTEM_BUS_ADDRESS for the systemd runner),
        `wrapper`: a command prefix (e.g. `ip netns exec NS`)."""
        state_dir = self.base / name
        state_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.base / f"{name}.log"
        argv = [*wrapper, sys.executable, "-m", "fleetd.cli",
                "--etcd-servers", ",".join(etcd_urls or [self.etcd_url]),
                "--etcd-key-prefix", self.prefix, "--state-dir", str(state_dir),
                "--agent-ttl", f"{self.ttl}s", "--engine-reconcile-interval", "1",
                "--public-ip", public_ip, "--verbosity", "1", *runner,
                "--disable-engine", "false" if engine else "true"]
        if metadata:
            argv += ["--metadata", metadata]
        environment = {**(os.environ if base_env is None else base_env),
                       "PYTHONPATH": str(REPO), **(env or {})}
        with open(log_path, "ab") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=environment, cwd=REPO)
        fleetd = FleetdProcess(name, state_dir, process, log_path)
        self.fleetds[name] = fleetd
        machine = fleetd.machine_id
        wait_for(lambda: machine in self.registry.machines()[1], 20,
                 message=f"{name} registered")
        return fleetd

    # -- what runs ---------------------------------------------------------------------------------
    def running(self) -> dict[str, list[str]]:
        """unit -> machines on which its recorded main process is alive."""
        found: dict[str, list[str]] = {}
        for path in self.run_dir.glob("*.pid"):
            unit, _, machine = path.stem.rpartition("@")
            try:
                pid = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                continue
            if pid and pid_alive(pid):
                found.setdefault(unit, []).append(machine)
        return found

    def pids(self) -> dict[str, int]:
        result = {}
        for path in self.run_dir.glob("*.pid"):
            try:
                pid = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                continue
            if pid and pid_alive(pid):
                result[path.stem] = pid
        return result

    def wait_running(self, units: list[str], timeout: float = 20) -> dict[str, list[str]]:
        def ready():
            now = self.running()
            return now if all(len(now.get(u, [])) == 1 for u in units) else None
        return wait_for(ready, timeout, message=f"{units} running once each")

    # -- faults and cleanup ------------------------------------------------------------------------
    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        fleetd = self.fleetds[name]
        fleetd.process.send_signal(sig)
        fleetd.process.wait(30)

    def close(self) -> None:
        for fleetd in self.fleetds.values():
            if fleetd.process.poll() is None:
                fleetd.process.terminate()
        deadline = time.monotonic() + 20
        for fleetd in self.fleetds.values():
            try:
                fleetd.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                fleetd.process.kill()
                fleetd.process.wait(5)
        for pid in self.pids().values():  # nothing a test started may outlive it
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        self.etcd.close()
