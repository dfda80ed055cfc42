"""One nspawn machine: boot it detached, find its PID 1, run commands in it, power it off.

A machine outlives the `provision` command that booted it: systemd-nspawn runs in a
session of its own, from cgroup subtrees named after the machine (one per hierarchy
nspawn needs), which is how a later command finds everything of it, and how `stop`
makes sure nothing is left (SIGKILL to whatever is still in them, then rmdir).
Power-off is nspawn's own: SIGTERM to nspawn halts the machine's systemd cleanly.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from provision.errors import OperationFailed

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROPAGATE_DIR = Path("/run/systemd/nspawn/propagate")
POLL_S = 0.1
STOP_TIMEOUT = 30.0
# The shell joins the machine's cgroups, then runs the command and logs how it ended:
# nothing of the machine is ever at a hierarchy's root, and its log says why it stopped.
_JOIN = ('for p; do shift; [ "$p" = -- ] && break; echo $$ > "$p" || exit 125; done; '
         '"$@"; echo "provision: systemd-nspawn exited with status $?"')


def cgroup_hierarchies() -> list[Path]:
    """Where nspawn needs its cgroup: the unified hierarchy and/or name=systemd (v1)."""
    found = []
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in mountinfo:
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3 or not fields[4].startswith(str(CGROUP_ROOT)):
            continue
        fstype, options = tail[0], tail[2].split(",")
        if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options):
            found.append(Path(fields[4]))
    return found


def _tree_pids(top: Path) -> list[int]:
    pids = []
    for dirpath, _dirs, _files in os.walk(top):
        try:
            pids += [int(p) for p in Path(dirpath, "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            continue
    return pids


@dataclass(frozen=True)
class Machine:
    name: str        # nspawn's machine name; the cgroup subtrees' name
    directory: Path  # the node's own files: upper/, nspawn.log, nspawn.pid

    @property
    def upper(self) -> Path:
        return self.directory / "upper"

    @property
    def log(self) -> Path:
        return self.directory / "nspawn.log"

    def cgroups(self) -> list[Path]:
        return [h / self.name for h in cgroup_hierarchies()]

    def pids(self) -> list[int]:
        return [pid for top in self.cgroups() if top.is_dir() for pid in _tree_pids(top)]

    def running(self) -> bool:
        """Anything of the machine alive: in its cgroups, or its launcher still on its way
        there (the shell joins them just after it started)."""
        return bool(self.pids()) or _alive(self._launcher_pid())

    def _launcher_pid(self) -> int | None:
        """The pid `boot` started, while it is still that process (its command line names
        this machine: a recycled pid never does)."""
        try:
            pid = int((self.directory / "nspawn.pid").read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if f"--machine={self.name}".encode() in cmdline else None

    # -- boot --------------------------------------------------------------------------------

    def boot(self, argv: list[str]) -> int:
        """Start nspawn (argv) detached from this process; its pid."""
        if self.running():
            raise OperationFailed(f"machine {self.name} is running already")
        self._remove_cgroups(time.monotonic() + 5)
        self._remove_leftovers()  # of a machine that was killed rather than stopped
        tops = []
        for top in self.cgroups():
            top.mkdir()
            tops.append(top)
        self.directory.mkdir(parents=True, exist_ok=True)
        shell = ["sh", "-c", _JOIN, "sh", *(str(t / "cgroup.procs") for t in tops), "--",
                 *argv]
        with open(self.log, "ab") as log:
            process = subprocess.Popen(shell, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       env={**os.environ, "TERM": "dumb"})
        (self.directory / "nspawn.pid").write_text(f"{process.pid}\n")
        return process.pid

    def nspawn_pid(self) -> int | None:
        """systemd-nspawn's pid (the launcher shell's child, in the machine's cgroups)."""
        for pid in self.pids():
            if _comm(pid) == "systemd-nspawn":
                return pid
        return None

    def pid1(self) -> int | None:
        """The host pid of the machine's PID 1 (nspawn's child that is PID 1 of its own
        PID namespace), or None while there is none."""
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            values = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            nspids = values.get("NSpid", "").split()
            if nspids[1:] and nspids[-1] == "1":
                return pid
        return None

    def enter(self, *argv: str) -> list[str]:
        """argv run inside the machine (its namespaces), from the host."""
        pid1 = self.pid1()
        if pid1 is None:
            raise OperationFailed(f"machine {self.name} is not running")
        return ["nsenter", "--target", str(pid1), "--mount", "--uts", "--ipc", "--net",
                "--pid", "--", *argv]

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(self.enter(*argv), capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=timeout, check=False)

    def system_state(self, timeout: float = 10) -> str:
        """`systemctl is-system-running` in the machine ("off" when it is not running)."""
        if self.pid1() is None:
            return "off"
        try:
            done = self.run("systemctl", "is-system-running", timeout=timeout)
        except (subprocess.TimeoutExpired, OperationFailed):
            return "unknown"
        return done.stdout.strip() or "starting"

    def wait_booted(self, deadline: float) -> str:
        """Until the machine's systemd has finished starting up (running or degraded)."""
        said = ""
        while True:
            if not self.running():
                time.sleep(0.5)  # a process of it may be between two states: look again
                if not self.running():
                    raise OperationFailed(f"machine {self.name} exited while booting:\n"
                                          + self.log_tail())
            pid1 = self.pid1()
            if pid1 is not None and _comm(pid1) == "systemd":
                try:
                    done = self.run("systemctl", "is-system-running", "--wait",
                                    timeout=max(1.0, deadline - time.monotonic()))
                    said = done.stdout.strip() or done.stderr.strip()
                except subprocess.TimeoutExpired:
                    said = "still starting"
                except OperationFailed:
                    said = "not running"
                if said in ("running", "degraded"):
                    return said
                if said in ("stopping", "maintenance"):
                    raise OperationFailed(f"machine {self.name}'s systemd is {said}:\n"
                                          + self.log_tail())
            if time.monotonic() > deadline:
                raise OperationFailed(f"machine {self.name} did not boot in time (systemd "
                                      f"said {said or 'nothing yet'!r}):\n" + self.log_tail())
            time.sleep(POLL_S)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "  (no nspawn log)"
        return "\n".join(f"  {line}" for line in text.splitlines()[-lines:])

    # -- power off ---------------------------------------------------------------------------

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Power the machine off (systemd's clean halt; SIGKILL after `timeout`) and remove
        what its run left on the host. True when it was running."""
        was_running = self.running()
        deadline = time.monotonic() + timeout
        nspawn = self.nspawn_pid()
        if nspawn is None and _alive(self._launcher_pid()):
            nspawn = self._launcher_pid()  # still on its way into the cgroups
        if nspawn is not None:
            try:
                os.kill(nspawn, signal.SIGTERM)
            except ProcessLookupError:
                pass
            while self.running() and time.monotonic() < deadline:
                time.sleep(POLL_S)
        self._kill_all(time.monotonic() + 10)
        self._remove_cgroups(time.monotonic() + 10)
        self._remove_leftovers()
        return was_running

    def kill(self) -> None:
        """SIGKILL everything of the machine at once (a crash, for tests of failover)."""
        self._kill_all(time.monotonic() + 10)

    def _kill_all(self, deadline: float) -> None:
        while True:
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                raise OperationFailed(f"processes {pids} of machine {self.name} survived "
                                      "SIGKILL")
            time.sleep(0.05)

    def _remove_cgroups(self, deadline: float) -> None:
        for top in self.cgroups():
            while top.exists():
                try:
                    for dirpath, _dirs, _files in os.walk(top, topdown=False):
                        os.rmdir(dirpath)
                except FileNotFoundError:
                    continue
                except OSError as err:
                    if time.monotonic() > deadline:
                        raise OperationFailed(f"cannot remove cgroup {top}: {err}") from None
                    time.sleep(0.05)

    def _remove_leftovers(self) -> None:
        """nspawn's overlay workdir (`.#upper…`, left by a SIGKILL) and its propagation
        directory (it cannot remove that itself when /run is not a tmpfs)."""
        for work in self.directory.glob(".#upper*"):
            shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(PROPAGATE_DIR / self.name, ignore_errors=True)
        (self.directory / "nspawn.pid").unlink(missing_ok=True)


def _alive(pid: int | None) -> bool:
    """A process that exists and is not a zombie."""
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def write_files(root: Path, files: dict[str, tuple[bytes, int]]) -> None:
    """{absolute path: (content, mode)} into a machine's upper directory (owned by root)."""
    for path, (content, mode) in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.provision-tmp")
        tmp.write_bytes(content)
        tmp.chmod(mode)
        os.replace(tmp, target)
