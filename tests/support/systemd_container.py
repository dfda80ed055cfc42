"""A REAL systemd for tests: Debian's systemd booted as PID 1 of a systemd-nspawn container.

Tests talk to it the way fleetd's systemd runner talks to a host's systemd: over its
system bus, which the host reaches at /proc/<container pid 1>/root/run/dbus/system_bus_socket
(no user namespace, so host root is root on that bus too). A units directory on the host is
bind-mounted at the same absolute path inside, so a unit file written there by the host can
be linked by that path inside (`LinkUnitFiles`).

The root file system is built once with mmdebstrap (minbase + systemd + dbus, ~15-20 s) from the
Debian mirror in this host's apt sources and cached under $PROVISION_TESTS_CACHE
(/var/cache/provision-tests); every container boots it with `--volatile=overlay`, so its
writes go to a tmpfs and the cache stays pristine. This host's PID 1 need not be systemd:
nspawn runs with `--register=no --keep-unit` (otherwise it asks the host's systemd, over a
bus that does not exist, for a machine registration and a scope) from its own cgroup subtree,
which stop() removes again.

Every wait is a condition with a deadline. stop() is idempotent, also registered with atexit,
and nspawn gets SIGTERM if the process that started it dies, so a crashed test session does
not leave a container running; cgroup subtrees such a crash leaves behind are swept by the
next start.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from provision.image.mirror import MIRROR_ENV as PROJECT_MIRROR_ENV
from provision.image.mirror import debian_mirror as find_debian_mirror

SUITE = "bookworm"
PACKAGES = ("systemd", "dbus")
VARIANT = "minbase"
CACHE_DIR = Path(os.environ.get("PROVISION_TESTS_CACHE", "/var/cache/provision-tests"))
ROOTFS = CACHE_DIR / f"rootfs-{SUITE}"
# Written into the rootfs when it is built: a cached tree from another recipe is rebuilt.
SPEC_FILE = ".provision-tests-rootfs.json"
SPEC = {"suite": SUITE, "variant": VARIANT, "packages": list(PACKAGES), "format": 1}
MIRROR_ENV = "PROVISION_TESTS_DEBIAN_MIRROR"
NAME_PREFIX = "pt-sdc-"  # machine names, and so our cgroup subtrees: how the sweep knows ours
BUILD_TIMEOUT = 900.0
STOP_TIMEOUT = 30.0
STALE_CGROUP_AGE = 120.0  # older empty subtrees of ours are leftovers, not a start in progress
BUS_SOCKET = "run/dbus/system_bus_socket"  # relative to the container's root


class ContainerCommandError(subprocess.CalledProcessError):
    """A command in the container failed; unlike CalledProcessError, says what it printed."""

    def __str__(self) -> str:
        said = (self.stderr or self.stdout or "").strip()
        return super().__str__() + (f": {said}" if said else "")


@dataclass
class SystemdContainer:
    name: str
    pid1: int  # container PID 1 as seen from the host
    bus_address: str  # "unix:path=/proc/<pid1>/root/run/dbus/system_bus_socket"
    units_dir: Path  # host dir bind-mounted at the same path inside
    boot_state: str = "running"  # what `systemctl is-system-running` said at start
    process: subprocess.Popen | None = field(default=None, repr=False)  # systemd-nspawn
    cgroups: list[Path] = field(default_factory=list, repr=False)
    state_dir: Path | None = field(default=None, repr=False)  # nspawn's log; removed on stop

    def run(self, *argv: str, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess:
        """Run argv inside the container (its mount, UTS, IPC, network and PID namespaces)."""
        result = subprocess.run(self.enter_command(*argv), capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=timeout)
        if check and result.returncode != 0:
            raise ContainerCommandError(result.returncode, list(argv), result.stdout,
                                        result.stderr)
        return result

    def enter_command(self, *argv: str) -> list[str]:
        return ["nsenter", "--target", str(self.pid1), "--mount", "--uts", "--ipc", "--net",
                "--pid", "--", *argv]

    def journal_command(self, unit: str, lines: int, follow: bool) -> list[str]:
        """argv that prints `unit`'s journal from the host (fleetd's journal_command shape).

        The HOST's journalctl reads the container's journal files through /proc/<pid1>/root
        (`--root` covers both /run/log/journal and /var/log/journal). Not nsenter: nsenter
        does not pass on SIGTERM, so a terminated `nsenter ... journalctl --follow` leaves
        the journalctl running inside the container.
        """
        argv = ["journalctl", "--root", f"/proc/{self.pid1}/root", "--no-pager",
                "--output", "short-iso", "--unit", unit, "--lines", str(lines)]
        return argv + ["--follow"] if follow else argv

    def log(self) -> str:
        """What systemd-nspawn printed: its own messages and the container's console (boot
        and shutdown status lines)."""
        if self.state_dir is None:
            return ""
        try:
            return (self.state_dir / "nspawn.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Halt the container and remove everything start made (idempotent)."""
        atexit.unregister(self.stop)
        try:
            if self.process is not None and self.process.poll() is None:
                # nspawn turns SIGTERM into a clean halt of the container's systemd.
                self.process.terminate()
                try:
                    self.process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
            deadline = time.monotonic() + STOP_TIMEOUT
            for top in self.cgroups:
                _empty_cgroup_tree(top, deadline)
            for top in self.cgroups:
                _remove_cgroup_tree(top, deadline)
            self.cgroups = []
            # nspawn refuses to rm -rf this when /run is not a tmpfs (it is on disk here).
            shutil.rmtree(Path("/run/systemd/nspawn/propagate") / self.name, ignore_errors=True)
        finally:
            if self.state_dir is not None:
                shutil.rmtree(self.state_dir, ignore_errors=True)
                self.state_dir = None


# -- can it run here ------------------------------------------------------------------------


def systemd_container_problem() -> str | None:
    """None when a container can be started here; else a clear reason to skip."""
    missing = []
    if os.geteuid() != 0:
        missing.append(f"root (you are uid {os.geteuid()})")
    if shutil.which("systemd-nspawn") is None:
        missing.append("systemd-nspawn (Debian: apt-get install systemd-container)")
    for tool in ("nsenter", "journalctl"):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (Debian: util-linux / systemd)")
    if not _cgroup_hierarchies():
        missing.append("a cgroup2 or name=systemd cgroup hierarchy under /sys/fs/cgroup")
    if not _rootfs_ready():
        if shutil.which("mmdebstrap") is None:
            missing.append(f"mmdebstrap to build the {SUITE} root file system once "
                           "(Debian: apt-get install mmdebstrap)")
        if debian_mirror() is None:
            missing.append(f"a Debian mirror (none in /etc/apt/sources.list{{,.d/*}}; "
                           f"set {MIRROR_ENV})")
    if not missing:
        return None
    return ("a real systemd in a systemd-nspawn container needs " + ", ".join(missing))


def debian_mirror() -> str | None:
    """The Debian mirror this host's apt uses ($PROVISION_TESTS_DEBIAN_MIRROR overrides)."""
    return find_debian_mirror(SUITE, (MIRROR_ENV, PROJECT_MIRROR_ENV))


# -- the cached root file system ------------------------------------------------------------


def _rootfs_ready() -> bool:
    try:
        return json.loads((ROOTFS / SPEC_FILE).read_text()) == SPEC
    except (OSError, ValueError):
        return False


def cached_rootfs(timeout: float = BUILD_TIMEOUT) -> Path:
    """The root file system, built (once, under a lock) if the cache lacks it."""
    if _rootfs_ready():
        return ROOTFS
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent session may be building it
        if _rootfs_ready():
            return ROOTFS
        # Holding the lock: any build dir is a leftover of a killed build.
        for stale in CACHE_DIR.glob(".build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        build = Path(tempfile.mkdtemp(prefix=".build-", dir=CACHE_DIR))
        try:
            _build_rootfs(build / "rootfs", timeout)
            if ROOTFS.exists():  # an older recipe's tree: move it aside, then drop it
                os.rename(ROOTFS, build / "old")
            # Same file system, one rename: a half-built tree is never at ROOTFS.
            os.rename(build / "rootfs", ROOTFS)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return ROOTFS


def _build_rootfs(target: Path, timeout: float) -> None:
    mirror = debian_mirror()
    if mirror is None:
        raise RuntimeError(f"no Debian mirror in this host's apt sources; set {MIRROR_ENV}")
    argv = ["mmdebstrap", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}",
            SUITE, str(target), mirror]
    log_path = target.with_name("mmdebstrap.log")
    with open(log_path, "wb") as log:
        try:
            result = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{' '.join(argv)} did not finish within {timeout:.0f}s") from None
    if result.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n{tail}")
    # mmdebstrap copies the host's hostname; without it the container is named by nspawn.
    (target / "etc/hostname").unlink(missing_ok=True)
    # Every boot then makes its own machine id (the overlay keeps it out of the cache).
    (target / "etc/machine-id").write_text("uninitialized\n")
    (target / SPEC_FILE).write_text(json.dumps(SPEC))


# -- cgroups --------------------------------------------------------------------------------


def _cgroup_hierarchies() -> list[Path]:
    """Where nspawn needs its cgroup: the unified hierarchy and/or name=systemd (v1)."""
    found = []
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in mountinfo:
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        point, fstype, options = fields[4], tail[0], tail[2]
        if not point.startswith("/sys/fs/cgroup"):
            continue
        if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options.split(",")):
            found.append(Path(point))
    return found


def _tree_pids(top: Path) -> list[int]:
    pids = []
    for dirpath, _dirs, _files in os.walk(top):
        try:
            pids += [int(p) for p in Path(dirpath, "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            continue
    return pids


def _empty_cgroup_tree(top: Path, deadline: float) -> None:
    """SIGKILL whatever is still in the subtree (normally nothing once nspawn exited)."""
    while True:
        pids = _tree_pids(top)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes {pids} in {top} survived SIGKILL")
        time.sleep(0.05)


def _remove_cgroup_tree(top: Path, deadline: float) -> None:
    """rmdir bottom-up; the kernel may report EBUSY briefly after the last process exits."""
    while top.exists():
        try:
            for dirpath, _dirs, _files in os.walk(top, topdown=False):
                os.rmdir(dirpath)
        except FileNotFoundError:
            continue
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _sweep_leftovers(hierarchies: list[Path]) -> None:
    """Remove what a session killed before its teardown left: our empty cgroup subtrees
    and the temporary directories named after the same containers."""
    now = time.time()
    for hierarchy in hierarchies:
        for top in hierarchy.glob(f"{NAME_PREFIX}*"):
            try:
                if now - top.stat().st_mtime < STALE_CGROUP_AGE or _tree_pids(top):
                    continue  # being started right now, or still running
                _remove_cgroup_tree(top, time.monotonic() + 5)
            except OSError:
                continue
            for leftover in Path(tempfile.gettempdir()).glob(f"{top.name}-*"):
                shutil.rmtree(leftover, ignore_errors=True)


# -- start ----------------------------------------------------------------------------------


def new_container_name() -> str:
    """A unique machine name; temporary directories named `<it>-*` go with the container."""
    return f"{NAME_PREFIX}{uuid.uuid4().hex[:8]}"


def start_systemd_container(units_dir: Path, name: str | None = None,
                            timeout: float = 60, *, rootfs: Path | None = None,
                            upper: Path | None = None) -> SystemdContainer:
    """Boot a container and return once its systemd is up (state running or degraded).

    `timeout` covers the boot; building the root file system the first time (cached
    afterwards) has its own deadline. The caller owns `units_dir` and removes it.
    `rootfs` boots another tree than the tests' own (e.g. the project's machine image);
    `upper` keeps the container's writes in that directory (an overlay on the read-only
    tree, as machines boot) instead of a tmpfs, so files put there before the boot are
    in the container from its first moment. The caller owns `upper` too.
    """
    problem = systemd_container_problem()
    if problem:
        raise RuntimeError(problem)
    units_dir = Path(units_dir).resolve()
    if ":" in str(units_dir):
        raise ValueError(f"{units_dir}: nspawn's --bind takes ':' as a separator")
    units_dir.mkdir(parents=True, exist_ok=True)
    rootfs = rootfs or cached_rootfs()
    if upper is None:
        root_args = ["--directory", str(rootfs), "--volatile=overlay"]
    else:
        # --read-only: were the overlay to fail, nothing may write into the shared tree.
        root_args = ["--directory", str(rootfs), "--read-only",
                     f"--overlay={rootfs}:{Path(upper).resolve()}:/"]
    name = name or new_container_name()
    hierarchies = _cgroup_hierarchies()
    _sweep_leftovers(hierarchies)

    container = SystemdContainer(name=name, pid1=0, bus_address="", units_dir=units_dir,
                                 state_dir=Path(tempfile.mkdtemp(prefix=f"{name}-")))
    atexit.register(container.stop)
    try:
        for hierarchy in hierarchies:
            top = hierarchy / name
            top.mkdir()
            container.cgroups.append(top)
        nspawn = ["systemd-nspawn", *root_args, "--machine", name, "--boot",
                  "--register=no", "--keep-unit", "--private-network",
                  "--console=passive", f"--bind={units_dir}"]
        if shutil.which("setpriv"):
            # Halt the container if this process dies without running its teardown.
            nspawn = ["setpriv", "--pdeathsig", "TERM", "--", *nspawn]
        # The shell joins the new cgroups before it execs nspawn, so nothing of the
        # container is ever at a hierarchy's root, and stop() finds all of it there.
        join = ('for p; do shift; [ "$p" = -- ] && break; echo $$ > "$p" || exit 125; done; '
                'exec "$@"')
        argv = ["sh", "-c", join, "sh", *(str(t / "cgroup.procs") for t in container.cgroups),
                "--", *nspawn]
        assert container.state_dir is not None
        with open(container.state_dir / "nspawn.log", "wb") as log:
            # TERM reaches the container's systemd: plain console lines, no colour codes.
            container.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL,
                                                 env={**os.environ, "TERM": "dumb"})
        container.boot_state = _wait_until_booted(container, time.monotonic() + timeout)
        container.bus_address = f"unix:path=/proc/{container.pid1}/root/{BUS_SOCKET}"
        return container
    except BaseException:
        container.stop()
        raise


def _wait_until_booted(container: SystemdContainer, deadline: float) -> str:
    assert container.process is not None
    said = ""
    while True:
        if container.process.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited ({container.process.returncode}) "
                               f"before its systemd was up:\n{container.log()}")
        if not container.pid1:
            container.pid1 = _container_init(container.process.pid)
        if container.pid1 and _comm(container.pid1) == "systemd":
            remaining = max(1.0, deadline - time.monotonic())
            try:
                # Fails at once ("Failed to connect to bus") until systemd's private
                # socket is there; then blocks until start-up has finished.
                result = container.run("systemctl", "is-system-running", "--wait",
                                       check=False, timeout=remaining)
                said = (result.stdout.strip() or result.stderr.strip())
            except subprocess.TimeoutExpired:
                said = "still starting"
            bus = Path(f"/proc/{container.pid1}/root/{BUS_SOCKET}")
            if said in ("running", "degraded") and bus.exists():
                return said
            # "offline" is no verdict: systemctl also says it while /run/systemd/system is
            # not there yet (sd_booted() false, early in the container's boot).
            if said in ("stopping", "maintenance"):
                raise RuntimeError(f"the container's systemd is {said}:\n{container.log()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"container {container.name} not up in time (pid 1: "
                               f"{container.pid1 or 'none yet'}; systemctl said "
                               f"{said!r}):\n{container.log()}")
        time.sleep(0.05)


def _container_init(nspawn_pid: int) -> int:
    """nspawn's child that is PID 1 of its own PID namespace, or 0 while there is none."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        values = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        nspids = values.get("NSpid", "").split()  # its pid in each namespace, outermost first
        if values.get("PPid", "").strip() == str(nspawn_pid) and nspids[1:] and nspids[-1] == "1":
            return int(entry)
    return 0


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


# -- the fixture ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def systemd_container() -> Iterator[SystemdContainer]:
    """One booted container per test module, with a fresh units directory; skipped, with
    the reason, where it cannot run. Tests use distinct unit names."""
    problem = systemd_container_problem()
    if problem:
        pytest.skip(problem)
    # Under /tmp (the same path inside, where nspawn mounts a tmpfs on /tmp and this
    # bind mount over it) and named after the container, so a later start sweeps it up if
    # this session is killed before its teardown.
    name = new_container_name()
    units_dir = Path(tempfile.mkdtemp(prefix=f"{name}-units-"))
    try:
        container = start_systemd_container(units_dir, name=name)
        try:
            yield container
        finally:
            container.stop()
    finally:
        shutil.rmtree(units_dir, ignore_errors=True)
