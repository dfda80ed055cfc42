"""Tools of the fault suite (tests/faults): what really runs, a background invariant
sampler, figures, a multi-member etcd cluster and network namespaces.

The suite judges real processes, not the registry: every test unit's main process
writes `<run dir>/<unit>@<machine>.pid` and carries a marker in its command line,
so a pid reused by some unrelated process is never mistaken for a live unit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.etcd import free_port, wait_for
from tests.support.fleet import FleetdProcess, FleetHarness, pid_alive

DEBIAN_ETCD = "/usr/bin/etcd"
SLEEP_MARK = "86399"  # `sleep 86399`: how a sleeper unit's process is recognised
UnitView = dict[str, dict[str, int]]  # unit -> {machine: live main pid}


def sleeper_text(run_dir: Path, description: str = "fault sleeper %n") -> str:
    """A unit whose main process records its pid, then sleeps (the marker in its argv)."""
    return (f"[Unit]\nDescription={description}\n\n[Service]\n"
            f"ExecStart=/bin/sh -c 'echo $$$$ > {run_dir}/%n@%m.pid; "
            f"exec sleep {SLEEP_MARK}'\n")


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def live_units(run_dir: Path, markers: tuple[str, ...] = (SLEEP_MARK, "http.server")
               ) -> UnitView:
    """unit -> {machine: pid} for every unit whose main process is alive: by its pid file,
    and before the file is written by the shell still naming it in its command line (under
    load the shell may write it well after the unit was started, as systemd counts it)."""
    found: UnitView = {}
    for path in run_dir.glob("*.pid"):
        unit, _, machine = path.stem.rpartition("@")
        try:
            pid = int(path.read_text().strip() or 0)
        except (OSError, ValueError):
            continue  # being written right now: its shell is found below
        if pid and pid_alive(pid) and any(m in cmdline(pid) for m in markers):
            found.setdefault(unit, {})[machine] = pid
    for pid, unit, machine in starting_units(run_dir, markers):
        if found.get(unit, {}).get(machine) != pid and pid_alive(pid):
            found.setdefault(unit, {})[machine] = pid
    return found


def starting_units(run_dir: Path, markers: tuple[str, ...]) -> list[tuple[int, str, str]]:
    """(pid, unit, machine) of every live shell of a test unit, named by the pid file its
    command line writes: `sh -c 'echo $$ > RUN_DIR/UNIT@MACHINE.pid; exec … MARKER'`."""
    prefix = f"> {run_dir}/"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        line = cmdline(int(entry.name))
        at = line.find(prefix)
        if at < 0 or not any(m in line for m in markers):
            continue
        path = line[at + len(prefix):].split(";", 1)[0].strip()
        if path.endswith(".pid"):
            unit, _, machine = path[:-len(".pid")].rpartition("@")
            found.append((int(entry.name), unit, machine))
    return found


def percentile(values: Iterable[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: every figure is a measured value)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def figure(name: str, sink: Path | None = None, **values: object) -> dict:
    """Print one figure as `FAULT-FIGURE {json}` (collected from `pytest -s`) and append it
    to `sink` as a JSON line."""
    record = {"figure": name, **values}
    line = json.dumps(record, sort_keys=False, default=str)
    print(f"FAULT-FIGURE {line}", flush=True)
    if sink is not None:
        with open(sink, "a") as handle:
            handle.write(line + "\n")
    return record


@dataclass
class Sample:
    at: float  # time.monotonic()
    view: UnitView


class Sampler:
    """Samples the real processes every `interval` s in a thread and checks, on every sample,
    that no unit (but the global ones) is alive on two machines at once.

    `doubles` holds every violation seen (time, unit, machines); `allow_doubles` (a callable
    on the sample time) lets a scenario tolerate them where they are expected (a partitioned
    machine keeping its units: fail static). History is kept for the scenario's queries."""

    def __init__(self, read: Callable[[], UnitView], global_units: Iterable[str] = (),
                 interval: float = 0.05, keep: int = 40_000) -> None:
        self.read = read
        self.global_units = set(global_units)
        self.interval = interval
        self.keep = keep
        self.history: list[Sample] = []
        self.doubles: list[tuple[float, str, list[str]]] = []
        self.tolerated: list[tuple[float, str, list[str]]] = []
        self.allow_doubles: Callable[[float], bool] = lambda at: False
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="fault-sampler", daemon=True)

    def _run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                view = self.read()
            except Exception as err:  # a sampler must not die silently
                self.errors.append(repr(err))
                continue
            at = time.monotonic()
            with self.lock:
                self.history.append(Sample(at, view))
                if len(self.history) > self.keep:
                    del self.history[: len(self.history) - self.keep]
                for unit, machines in view.items():
                    if unit not in self.global_units and len(machines) > 1:
                        entry = (at, unit, sorted(machines))
                        (self.tolerated if self.allow_doubles(at) else self.doubles).append(entry)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(5)

    def samples(self, since: float = 0.0) -> list[Sample]:
        with self.lock:
            return [s for s in self.history if s.at >= since]

    def latest(self) -> UnitView:
        with self.lock:
            return self.history[-1].view if self.history else {}

    def wait_sample(self, predicate: Callable[[UnitView], bool], since: float, timeout: float,
                    message: str) -> Sample:
        """The first sample taken at or after `since` that satisfies `predicate`."""
        def first() -> Sample | None:
            return next((s for s in self.samples(since) if predicate(s.view)), None)
        return wait_for(first, timeout, interval=self.interval, message=message)

    def changed_pids(self, baseline: UnitView, since: float, units: Iterable[str]
                     ) -> list[tuple[float, str, dict, dict]]:
        """Samples since `since` where a unit of `units` did not run as in `baseline` (stopped,
        restarted or started somewhere else)."""
        watched = list(units)
        changes = []
        for sample in self.samples(since):
            for unit in watched:
                if sample.view.get(unit, {}) != baseline.get(unit, {}):
                    changes.append((sample.at, unit, baseline.get(unit, {}),
                                    sample.view.get(unit, {})))
        return changes


# -- etcd members outside the local provider (the partition scenario) --------------------------

def clean_env() -> dict[str, str]:
    """This environment without ETCD_* variables: etcd reads its flags from them too, and a
    system's /etc/default/etcd exported into a shell must not configure the test's members."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    extra_hosts: tuple[str, ...] = ()
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def url_on(self, host: str) -> str:
        return f"http://{host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


class EtcdCluster:
    """Three etcd members on 127.0.0.1 (free ports), each also serving clients on
    `extra_hosts` (e.g. a veth's host-side address a namespaced fleetd talks to)."""

    def __init__(self, size: int = 3, extra_hosts: tuple[str, ...] = (),
                 binary: str = DEBIAN_ETCD) -> None:
        self.binary = binary
        self.base = Path(tempfile.mkdtemp(prefix="fault-etcd-"))
        self.members = [EtcdMember(f"m{i}", free_port(), free_port(), self.base / f"m{i}",
                                   extra_hosts) for i in range(1, size + 1)]
        self.token = f"fault-{os.getpid()}-{id(self):x}"

    def urls(self, host: str | None = None) -> list[str]:
        return [m.url_on(host) if host else m.url for m in self.members]

    def start(self, timeout: float = 30) -> EtcdCluster:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        try:
            for member in self.members:
                clients = ",".join([member.url] + [member.url_on(h) for h in member.extra_hosts])
                member.data_dir.mkdir(parents=True, exist_ok=True)
                with open(member.data_dir.with_suffix(".log"), "ab") as log:
                    member.process = subprocess.Popen(
                        [self.binary, "--name", member.name, "--data-dir", str(member.data_dir),
                         "--listen-client-urls", clients, "--advertise-client-urls", member.url,
                         "--listen-peer-urls", member.peer_url,
                         "--initial-advertise-peer-urls", member.peer_url,
                         "--initial-cluster", initial, "--initial-cluster-token", self.token,
                         "--initial-cluster-state", "new", "--log-level", "error"],
                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        env=clean_env())
            wait_for(self.healthy, timeout, interval=0.1, message="etcd cluster healthy")
        except BaseException:
            self.stop()
            raise
        return self

    def healthy(self) -> bool:
        import etcd3

        for member in self.members:
            # A fresh client per probe: etcd3 marks a refused endpoint failed for minutes.
            client = etcd3.client(host="127.0.0.1", port=member.client_port, timeout=1)
            try:
                client.get("/ready")  # a linearizable read: needs a leader and quorum
            finally:
                client.close()
        return True

    def stop(self) -> None:
        for member in self.members:
            if member.process is not None and member.process.poll() is None:
                member.process.send_signal(signal.SIGCONT)
                member.process.terminate()
        for member in self.members:
            if member.process is None:
                continue
            try:
                member.process.wait(10)
            except subprocess.TimeoutExpired:
                member.process.kill()
                member.process.wait(10)
        shutil.rmtree(self.base, ignore_errors=True)


# -- network namespaces --------------------------------------------------------------------------

def netns_problem() -> str | None:
    """Why network namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` (iproute2) to create network namespaces"
    probe = f"fprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


def _ip(*argv: str) -> None:
    result = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=20)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)}: {result.stderr.strip()}")


@dataclass
class Netns:
    """A namespace joined to the host by a veth pair: host side `host_ip`, inside `ns_ip`."""

    name: str
    host_ip: str
    ns_ip: str
    host_if: str = ""
    ns_if: str = ""
    created: bool = field(default=False)

    @classmethod
    def create(cls, tag: str) -> Netns:
        # A /30 from 10.250.x.y: both ends differ per run, so parallel runs do not collide.
        third, fourth = (os.getpid() >> 6) % 250, (os.getpid() % 63) * 4
        space = cls(f"fault-{tag}", f"10.250.{third}.{fourth + 1}", f"10.250.{third}.{fourth + 2}",
                    f"fh{tag}"[:15], f"fn{tag}"[:15])
        try:
            _ip("netns", "add", space.name)
            space.created = True
            _ip("link", "add", space.host_if, "type", "veth", "peer", "name", space.ns_if)
            _ip("link", "set", space.ns_if, "netns", space.name)
            _ip("addr", "add", f"{space.host_ip}/30", "dev", space.host_if)
            _ip("link", "set", space.host_if, "up")
            for argv in (("addr", "add", f"{space.ns_ip}/30", "dev", space.ns_if),
                         ("link", "set", space.ns_if, "up"), ("link", "set", "lo", "up")):
                _ip("-n", space.name, *argv)
        except BaseException:
            space.delete()
            raise
        return space

    def cut(self) -> None:
        _ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        _ip("link", "set", self.host_if, "up")

    def delete(self) -> None:
        subprocess.run(["ip", "link", "delete", self.host_if], capture_output=True)
        if self.created:
            subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


class NetnsFleetHarness(FleetHarness):
    """FleetHarness whose fleetds may run inside a network namespace, on several etcd
    endpoints, announcing their own address."""

    def start_in(self, name: str, etcd_urls: list[str], public_ip: str,
                 netns: str | None = None) -> FleetdProcess:
        return self.start(name, etcd_urls=etcd_urls, public_ip=public_ip,
                          wrapper=("ip", "netns", "exec", netns) if netns else (),
                          base_env=clean_env())


# -- injected load -------------------------------------------------------------------------------

# Both end by themselves when the test process is gone (an interrupted run must not leave a
# loaded machine behind): they check that their parent is still theirs.
_BUSY = """
import os, sys
parent = int(sys.argv[1])
while os.getppid() == parent:
    for _ in range(100_000):
        pass
"""
_FSYNC_WRITER = """
import os, sys
path, parent = sys.argv[1], int(sys.argv[2])
block = os.urandom(64 * 1024)
while os.getppid() == parent:
    with open(path, "wb") as handle:
        for _ in range(16):
            handle.write(block)
            handle.flush()
            os.fsync(handle.fileno())
"""


class Load:
    """What a busy machine looks like to the cluster: one CPU-bound process per core and one
    writer that fsyncs 64 KiB blocks in a loop (etcd's WAL shares the disk). Processes are
    started in their own process group and killed with it; `with Load(): ...`."""

    def __init__(self, cores: int | None = None) -> None:
        self.cores = cores or os.cpu_count() or 1
        self.dir = Path(tempfile.mkdtemp(prefix="fault-load-"))
        self.processes: list[subprocess.Popen] = []

    def start(self) -> Load:
        import sys

        try:
            for _ in range(self.cores):
                self._spawn([sys.executable, "-c", _BUSY, str(os.getpid())])
            self._spawn([sys.executable, "-c", _FSYNC_WRITER, str(self.dir / "fsync.bin"),
                         str(os.getpid())])
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, argv: list[str]) -> None:
        self.processes.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL,
                                               start_new_session=True))

    def alive(self) -> bool:
        return bool(self.processes) and all(p.poll() is None for p in self.processes)

    def stop(self) -> None:
        for process in self.processes:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except OSError:
                pass
        for process in self.processes:
            process.wait(10)
        self.processes = []
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
