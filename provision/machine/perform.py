"""Carry out a plan on this machine: files, accounts (useradd/usermod), the hostname, and
systemd over D-Bus (the manager object from fleetd's `connect_systemd`).

Files are replaced whole: written to a staged file beside the target with their mode
and owner, then renamed over it, so a reader sees the old file or the new one, never
part of one. Missing parent directories are made (0755, root), as coreos-cloudinit did.
The first action that fails stops the pass (ApplyFailed names it); what was done
before it stays done, and applying the file again finishes the job.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

from fleetd.runner.systemd import dbus_message
from provision.errors import OperationFailed
from provision.machine.model import (
    MASK_TARGET,
    Action,
    CreateUser,
    EnableUnit,
    MakeDirectory,
    Mask,
    Reload,
    SetAttributes,
    SetHostname,
    SetPassword,
    UnitCommand,
    Unmask,
    UserSpec,
    WriteFile,
)

METHODS = {
    "start": "StartUnit", "stop": "StopUnit", "restart": "RestartUnit",
    "reload": "ReloadUnit", "try-restart": "TryRestartUnit",
    "reload-or-restart": "ReloadOrRestartUnit",
    "reload-or-try-restart": "ReloadOrTryRestartUnit",
}
COMMAND_TIMEOUT = 120.0


class ApplyFailed(OperationFailed):
    """An action failed on the machine (exit 1)."""


def owner_ids(owner: str | None) -> tuple[int, int]:
    """The owner spec as chown reads it, resolved now (users made in this pass exist)."""
    if owner is None:
        return 0, 0
    user, sep, group = owner.partition(":")
    uid, gid = 0, 0
    if user:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        uid = entry.pw_uid
        if sep and not group:
            gid = entry.pw_gid
    if group:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    return uid, gid


def check_no_foreign_links(path: str) -> None:
    """Refuse a path through a symlink that is not root's: a user who owns a directory on
    the way (their ~/.ssh) could otherwise point root's write, chown or chmod anywhere."""
    current = Path("/")
    for part in Path(path).parts[1:]:
        current = current / part
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(info.st_mode) and info.st_uid != 0:
            raise ApplyFailed(f"{current} is a symlink owned by uid {info.st_uid}; refusing "
                              "to follow it (remove it and apply again)")


def write_file(path: str, content: bytes, mode: int, owner: str | None) -> None:
    check_no_foreign_links(path)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    uid, gid = owner_ids(owner)
    staged = target.with_name(f".{target.name}.provision-{os.getpid()}")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o600)
    try:
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)  # after chown: chown clears setuid/setgid bits
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(staged, target)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


def set_attributes(path: str, mode: int, owner: str | None) -> None:
    check_no_foreign_links(path)
    uid, gid = owner_ids(owner)
    # Through a descriptor of the file itself, never of what a symlink there points to.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def make_directory(path: str, mode: int, owner: str | None) -> None:
    check_no_foreign_links(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    set_attributes(path, mode, owner)


def useradd_argv(user: UserSpec) -> list[str]:
    argv = ["useradd"]
    if user.gecos:
        argv += ["--comment", user.gecos]
    if user.homedir:
        argv += ["--home-dir", user.homedir]
    argv.append("--no-create-home" if user.no_create_home else "--create-home")
    if user.primary_group:
        argv += ["--gid", user.primary_group]
    if user.groups:
        argv += ["--groups", ",".join(user.groups)]
    if user.no_user_group:
        argv.append("--no-user-group")
    elif not user.primary_group:
        argv.append("--user-group")
    if user.system:
        argv.append("--system")
    if user.no_log_init:
        argv.append("--no-log-init")
    if user.shell:
        argv += ["--shell", user.shell]
    if user.passwd:
        argv += ["--password", user.passwd]
    return argv + ["--", user.name]


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            timeout=COMMAND_TIMEOUT)
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip().splitlines()
        raise ApplyFailed(f"{argv[0]} failed ({result.returncode}): "
                          f"{said[-1] if said else 'no output'}")


class Performer:
    """Runs actions in order; `manager` is systemd's manager object (None when the plan
    has no unit actions)."""

    def __init__(self, manager, say: Callable[[str], None]) -> None:
        self.manager = manager
        self.say = say

    def run(self, actions: tuple[Action, ...] | list[Action]) -> None:
        for action in actions:
            failed = f'could not apply "{action.describe()}"'
            try:
                self.perform(action)
            except ApplyFailed as err:
                raise ApplyFailed(f"{failed}: {err}") from None
            except OSError as err:
                where = err.filename or ""
                raise ApplyFailed(f"{failed}: {where}{': ' if where else ''}"
                                  f"{err.strerror or err}") from None
            except KeyError as err:  # an owner that vanished between plan and apply
                raise ApplyFailed(f"{failed}: no such user or group {err}") from None
            self.say(action.describe())

    def perform(self, action: Action) -> None:
        if isinstance(action, SetHostname):
            socket.sethostname(action.name)
        elif isinstance(action, CreateUser):
            _run(useradd_argv(action.user))
        elif isinstance(action, SetPassword):
            _run(["usermod", "--password", action.passwd, "--", action.name])
        elif isinstance(action, MakeDirectory):
            make_directory(action.path, action.mode, action.owner)
        elif isinstance(action, WriteFile):
            write_file(action.path, action.content, action.mode, action.owner)
        elif isinstance(action, SetAttributes):
            set_attributes(action.path, action.mode, action.owner)
        elif isinstance(action, Mask):
            path = Path(action.path)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            staged = path.with_name(f".{path.name}.provision-{os.getpid()}")
            staged.unlink(missing_ok=True)
            staged.symlink_to(MASK_TARGET)
            os.replace(staged, path)
        elif isinstance(action, Unmask):
            path = Path(action.path)
            if path.is_symlink() and os.readlink(path) == MASK_TARGET:
                path.unlink()
        elif isinstance(action, EnableUnit):
            self._call("enable", self.manager.EnableUnitFiles, [action.unit], action.runtime,
                       True)
        elif isinstance(action, Reload):
            self._call("reload", self.manager.Reload)
        elif isinstance(action, UnitCommand):
            method = getattr(self.manager, METHODS[action.command])
            self._call(action.command, method, action.unit, "replace")
        else:  # pragma: no cover - a new action type without its edge
            raise TypeError(f"unknown action {action!r}")

    def _call(self, what: str, method: Callable, *args: object) -> object:
        try:
            return method(*args)
        except Exception as err:  # GLib.Error: one line saying what systemd said
            raise ApplyFailed(f"systemd refused to {what}: {dbus_message(err)}") from None
