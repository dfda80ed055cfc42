"""Talking to a cluster's supervisor: start it, tell it what to run, stop it, sweep up.

Everything here is a file in the cluster state directory (see state.py) or a
signal to a pid that was checked through /proc to be this cluster's supervisor.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from provision.errors import OperationFailed
from provision.files import check_writable, disk_error, is_disk_error
from provision.providers.local import state
from provision.providers.local.dns import exec_prefix
from provision.providers.local.health import excerpt

START_TIMEOUT_S = 20.0
LAUNCH_GRACE_S = 3.0
POLL_S = 0.05


def repo_root() -> Path:
    """The directory holding the `provision` and `fleetd` packages."""
    return Path(__file__).resolve().parents[3]


def python_path() -> str:
    current = os.environ.get("PYTHONPATH")
    return str(repo_root()) + (os.pathsep + current if current else "")


def running(state_dir: Path) -> bool:
    return state.lock_held(state_dir)


def start_supervisor(state_dir: Path, deadline: float, netns: str | None = None) -> int:
    """Start the detached supervisor (inside `netns`, if given) and wait until it holds its
    lock; its pid."""
    if running(state_dir):
        pid = state.supervisor_pid(state_dir)
        if pid is not None:
            return pid
    (state_dir / state.PID_FILE).unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": python_path()}
    launcher = subprocess.Popen(
        [*exec_prefix(netns), sys.executable, "-m", state.SUPERVISOR_MODULE, str(state_dir),
         "--daemon"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd=state_dir, env=env, start_new_session=True)
    launcher.wait(START_TIMEOUT_S)  # it forks twice and exits at once
    limit = min(deadline, time.monotonic() + START_TIMEOUT_S)
    while time.monotonic() < limit:
        pid = state.supervisor_pid(state_dir)
        if pid is not None and running(state_dir) and state.pid_alive(pid):
            return pid
        time.sleep(POLL_S)
    try:  # the likeliest reason: it could not write its pid file
        check_writable(state_dir)
    except OSError as err:
        if is_disk_error(err):
            raise disk_error(err) from None
    raise OperationFailed("the cluster supervisor did not start\n"
                          + excerpt(state_dir / state.LOG_FILE))


def set_desired(state_dir: Path, changes: dict[str, str]) -> int:
    """Merge node states into desired.json, wake the supervisor; the new generation."""
    current = state.read_json(state_dir / state.DESIRED) or {}
    nodes = dict(current.get("nodes") or {})
    nodes.update(changes)
    generation = int(current.get("generation") or 0) + 1
    state.write_json(state_dir / state.DESIRED, {**current, "generation": generation,
                                                 "nodes": nodes})
    _wake(state_dir)
    return generation


def restart_etcd(state_dir: Path, node: str) -> tuple[int, int]:
    """Ask the supervisor to restart one node's etcd (its other units keep running);
    (the new generation, the node's restart count to wait for in status.json)."""
    current = state.read_json(state_dir / state.DESIRED) or {}
    restarts = dict(current.get("etcd_restarts") or {})
    restarts[node] = int(restarts.get(node) or 0) + 1
    generation = int(current.get("generation") or 0) + 1
    state.write_json(state_dir / state.DESIRED, {**current, "generation": generation,
                                                 "etcd_restarts": restarts})
    _wake(state_dir)
    return generation, restarts[node]


def _wake(state_dir: Path) -> None:
    pid = state.supervisor_pid(state_dir)
    if pid is not None and state.is_our_supervisor(pid, state_dir):
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            pass


def read_status(state_dir: Path, generation: int = 0) -> dict | None:
    """The supervisor's status once it has applied `generation` (else None)."""
    status = state.read_json(state_dir / state.STATUS)
    if status is None or int(status.get("generation") or 0) < generation:
        return None
    return status


def writes_problem(state_dir: Path) -> dict | None:
    """The live supervisor's report that its state writes fail (path, error, since), or None."""
    record = state.read_writes(state_dir)
    if not record.get("failing") or not running(state_dir):
        return None
    return record


def describe_writes_problem(record: dict) -> str:
    return (f"state writes failing: {record.get('path')}: {record.get('error')} since "
            f"{record.get('since')} ({record.get('failures', 1)} attempts; the nodes keep "
            "running, their status is from before)")


def stop_supervisor(state_dir: Path, timeout: float = 60.0, launched: bool = False) -> bool:
    """SIGTERM the supervisor (clean stop of every node); SIGKILL at the deadline.

    True when a supervisor was running; `launched`: one may be starting right now.
    Afterwards no process of the cluster is
    left: the runner's process supervisor dies with it, and `sweep` kills anything
    that still names the cluster's node directories.
    """
    if launched and not running(state_dir):
        # Interrupted while it was starting: it holds its lock within moments.
        limit = time.monotonic() + LAUNCH_GRACE_S
        while time.monotonic() < limit and not running(state_dir):
            time.sleep(POLL_S)
    pid = state.supervisor_pid(state_dir)
    was_running = running(state_dir)
    if was_running and pid is not None and state.is_our_supervisor(pid, state_dir):
        _signal(pid, signal.SIGTERM)
        if not _wait_gone(state_dir, pid, timeout):
            _signal(pid, signal.SIGKILL)
            _wait_gone(state_dir, pid, 10.0)
    sweep(state_dir)
    return was_running


def _wait_gone(state_dir: Path, pid: int, timeout: float) -> bool:
    """Wait until the supervisor released its lock and its process is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running(state_dir) and not state.pid_alive(pid):
            return True
        time.sleep(POLL_S)
    return not running(state_dir) and not state.pid_alive(pid)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def cluster_processes(state_dir: Path) -> list[int]:
    """Live etcd, fleetd, dnsmasq, supervisor and runner-guard processes whose command line
    names this cluster's state directory."""
    nodes = str(state_dir) + os.sep
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        cmdline = state.proc_cmdline(int(entry))
        if not cmdline or not any(nodes in arg or arg == str(state_dir) for arg in cmdline):
            continue
        ours = (os.path.basename(cmdline[0]) in ("etcd", "dnsmasq") or "fleetd.cli" in cmdline
                or any(arg.endswith("guard.py") for arg in cmdline)
                or state.SUPERVISOR_MODULE in cmdline)
        if ours and state.pid_alive(int(entry)):
            found.append(int(entry))
    return found


def sweep(state_dir: Path, timeout: float = 10.0) -> list[int]:
    """SIGKILL whatever of this cluster is still running; the pids that survived (none)."""
    found = cluster_processes(state_dir)
    for pid in found:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while found and time.monotonic() < deadline:
        found = [pid for pid in found if state.pid_alive(pid)]
        time.sleep(POLL_S)
    return found
