"""The state directory of one local cluster, and the files its processes share.

    <state>/rendered/          user-data-N, manifest.json (+ discovery.json): the source of truth
    <state>/plan.json          the boot plan of every node (written by `up`, read by the supervisor)
    <state>/desired.json       {"nodes": {name: "running" | "stopped"}} (written by the CLI)
    <state>/status.json        what runs, with pids (written by the supervisor on every change)
    <state>/supervisor.pid     the supervisor's pid; supervisor.lock is flock-held while it lives
    <state>/state-writes.json  the supervisor's word on its own writes (failing since when):
                               a fixed-size file rewritten in place, so it still works on a
                               full disk, when status.json cannot be replaced
    <state>/supervisor.log
    <state>/nodes/<name>/      root/ (the node's /), etcd/, fleet/, system/ (units, logs)
    <state>/shared/            units the whole cluster shares (dns-srv: dnsmasq), their logs

The CLI asks the supervisor to act by rewriting desired.json and sending SIGHUP;
it learns the outcome by reading status.json. No socket, so no path-length limit
and nothing to clean up after a crash: the lock dies with its holder.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from provision.files import write_atomic

RENDERED = "rendered"
PLAN = "plan.json"
DESIRED = "desired.json"
STATUS = "status.json"
PID_FILE = "supervisor.pid"
LOCK_FILE = "supervisor.lock"
LOG_FILE = "supervisor.log"
WRITES_FILE = "state-writes.json"
WRITES_SIZE = 4096
NODES = "nodes"
SHARED = "shared"
SUPERVISOR_MODULE = "provision.providers.local.supervisor"


def write_json(path: Path, data: object, mode: int | None = None) -> None:
    """Replace a state file whole; an OSError names it and leaves no staged file behind."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n", mode)


def write_plan(state_dir: Path, plan: dict) -> None:
    """plan.json, its owner's alone: the etcd units' text carries the discovery URL."""
    write_json(state_dir / PLAN, plan, 0o600)


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def lock_held(state_dir: Path) -> bool:
    """True while a supervisor of this cluster lives (it holds the lock for its whole life)."""
    try:
        fd = os.open(state_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def take_lock(state_dir: Path) -> int | None:
    """The lock's fd, held until the process exits; None when another supervisor holds it."""
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def supervisor_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def proc_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def pid_alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] not in ("Z", "X")


def is_our_supervisor(pid: int, state_dir: Path) -> bool:
    cmdline = proc_cmdline(pid)
    return SUPERVISOR_MODULE in cmdline and str(state_dir) in cmdline


def node_processes(status: dict | None) -> dict[str, int]:
    """`node/unit` -> pid of every process the status file names."""
    found: dict[str, int] = {}
    for name, node in ((status or {}).get("nodes") or {}).items():
        for unit, info in (node.get("units") or {}).items():
            pid = info.get("pid")
            if isinstance(pid, int) and pid > 0:
                found[f"{name}/{unit}"] = pid
    return found


class WritesRecord:
    """The supervisor's report on its state writes, in a file of fixed size.

    Created (every byte written) while there is room, then only ever overwritten in
    place: an overwrite needs no new disk blocks, so a full disk that makes status.json
    unwritable cannot silence the report of it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            self.write({"failing": False})
            os.fsync(self.fd)  # its blocks allocated now, while there is room
        except OSError:
            os.close(self.fd)
            raise

    def write(self, data: dict) -> None:
        text = json.dumps(data).encode("utf-8")[:WRITES_SIZE - 1]
        os.pwrite(self.fd, text.ljust(WRITES_SIZE - 1) + b"\n", 0)

    def close(self) -> None:
        os.close(self.fd)


def read_writes(state_dir: Path) -> dict:
    """The supervisor's report on its state writes ({"failing": False} when there is none)."""
    return read_json(state_dir / WRITES_FILE) or {"failing": False}
