"""What to change on a machine so it matches its user-data (pure: data in, a Plan out).

The order is coreos-cloudinit's: hostname, users (created, passwords, authorized keys),
write_files, /etc/hosts, then units: their files and masks written, `enable`d, one
daemon reload, then each unit's `command` in the user-data's order.

Idempotent by construction: an action is planned only where the machine differs. A
file whose content is right but not its mode or owner is chmod/chown'ed, not
rewritten. A unit's command runs when it would change something: `start` when the
unit is not running, and — for every command that acts on a running unit — when one
of the unit's files (fragment, drop-ins, a write_files entry in a unit directory) or
its mask changed in this pass (a running unit whose files changed is restarted: its
new configuration takes effect, as it would on a CoreOS reboot). So a second apply of
the same file changes nothing, and a changed file restarts only what it changed.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator

from provision.errors import Problem, UserError
from provision.machine.config import etc_hosts
from provision.machine.model import (
    MASK_TARGET,
    UNIT_SEARCH_DIRS,
    Account,
    Action,
    CreateUser,
    EnableUnit,
    FileSpec,
    FileState,
    MachineConfig,
    MachineState,
    MakeDirectory,
    Mask,
    Plan,
    Reload,
    SetAttributes,
    SetHostname,
    SetPassword,
    UnitCommand,
    UnitSpec,
    Unmask,
    UserSpec,
    WriteFile,
)

RUNNING = frozenset({"active", "activating", "reloading"})
STOPPED = frozenset({"inactive", "failed"})
# UnitFileState values for which `enable` has nothing left to do.
ENABLED = frozenset({"enabled", "static", "indirect", "generated", "alias", "transient"})
ENABLED_RUNTIME = ENABLED | {"enabled-runtime"}
KEYS_BEGIN = "# provision cloudinit: keys from the user-data (this block is rewritten on apply)"
KEYS_END = "# provision cloudinit: end of keys from the user-data"
SSH_DIR_MODE = 0o700
KEYS_MODE = 0o600
SUDOERS_MODE = 0o440


def command_to_run(command: str | None, active: str, changed: bool) -> tuple[str, str] | None:
    """(systemd method verb, why) for a unit's `command`, or None when it would change
    nothing. `active` is systemd's ActiveState before this pass."""
    running = active in RUNNING
    if command is None:
        return None
    if command == "stop":
        return ("stop", "running") if active not in STOPPED and active != "deactivating" \
            else None
    if command == "start":
        if not running:
            return "start", "not running"
        return ("restart", "its files changed") if changed else None
    if command in ("restart", "reload-or-restart"):
        if changed:
            return command, "its files changed"
        return (command, "not running") if not running else None
    # reload, try-restart, reload-or-try-restart: act on a running unit only.
    if changed and running:
        return command, "its files changed"
    return None


def owner_ids(owner: str | None, state: MachineState) -> tuple[int | None, int | None] | None:
    """(uid, gid) the owner spec means here (None in a slot: left as it is; root for a new
    file), or None when a name is not on the machine (yet)."""
    if owner is None:
        return 0, 0
    user, sep, group = owner.partition(":")
    uid = gid = None
    if user:
        account = _account(user, state)
        if account is None:
            return None
        uid = account.uid
        if sep and not group:
            gid = account.gid  # `user:` is the user's login group, as chown reads it
    if group:
        gid = int(group) if group.isdigit() else state.groups.get(group)
        if gid is None:
            return None
    return uid, gid


def _account(name: str, state: MachineState) -> Account | None:
    if name.isdigit():
        return Account(name, int(name), 0, "/")
    return state.accounts.get(name)


def authorized_keys(existing: str | None, keys: Iterable[str]) -> str:
    """`existing` with the block of the user-data's keys replaced (or appended); lines
    outside the block (keys added by hand or by other tools) are kept."""
    kept: list[str] = []
    inside = False
    for line in (existing or "").splitlines():
        if line == KEYS_BEGIN:
            inside = True
        elif line == KEYS_END:
            inside = False
        elif not inside:
            kept.append(line)
    block = [KEYS_BEGIN, *keys, KEYS_END]
    return "\n".join(kept + block) + "\n"


def unit_of_path(path: str) -> str | None:
    """The unit a file in one of systemd's unit directories belongs to (its fragment or a
    drop-in), or None."""
    parent, name = posixpath.split(path)
    if parent in UNIT_SEARCH_DIRS:
        return name
    grand, directory = posixpath.split(parent)
    if grand in UNIT_SEARCH_DIRS and directory.endswith(".d"):
        return directory[:-2]
    return None


def user_home(user: UserSpec, state: MachineState) -> str:
    account = state.accounts.get(user.name)
    return account.home if account is not None else user.home


def derived_files(config: MachineConfig, state: MachineState) -> list[FileSpec]:
    """Files that follow from users and manage_etc_hosts: authorized keys, sudoers,
    /etc/hosts."""
    files = []
    for user in config.users:
        if user.ssh_authorized_keys:
            path = posixpath.join(user_home(user, state), ".ssh", "authorized_keys")
            current = state.files.get(path)
            existing = current.content.decode("utf-8", "replace") \
                if current is not None and current.content is not None else None
            files.append(FileSpec(path, authorized_keys(existing, user.ssh_authorized_keys)
                                  .encode(), KEYS_MODE, f"{user.name}:",
                                  f"ssh_authorized_keys of {user.name}"))
        if user.sudo:
            files.append(FileSpec(f"/etc/sudoers.d/{user.name}",
                                  f"{user.name} ALL=(ALL) NOPASSWD: ALL\n".encode(),
                                  SUDOERS_MODE, None, f"sudo for {user.name}"))
    if config.manage_etc_hosts:
        files.append(FileSpec("/etc/hosts", etc_hosts(config.hostname or state.hostname),
                              0o644, None, "manage_etc_hosts"))
    return files


def paths_to_read(config: MachineConfig, accounts: dict[str, Account]) -> list[str]:
    """Every path whose current state the plan depends on."""
    state = MachineState(accounts=accounts)
    paths = [f.path for f in config.files]
    for user in config.users:
        if user.ssh_authorized_keys:
            ssh = posixpath.join(user_home(user, state), ".ssh")
            paths += [ssh, f"{ssh}/authorized_keys"]
        if user.sudo:
            paths.append(f"/etc/sudoers.d/{user.name}")
    if config.manage_etc_hosts:
        paths.append("/etc/hosts")
    for unit in config.units:
        paths += [f.path for f in unit.files] + [unit.mask_path]
    return list(dict.fromkeys(paths))


def plan(config: MachineConfig, state: MachineState) -> Plan:
    """The actions that make the machine match `config`; UserError (nothing applied) when
    it names users or groups the machine does not have."""
    problems: list[Problem] = []
    actions: list[Action] = []
    notes = list(config.notes)
    new_users = {u.name for u in config.users if u.name not in state.accounts}
    if config.hostname and state.hostname != config.hostname:
        actions.append(SetHostname(config.hostname))
    actions += _users(config, state, problems)
    changed_units: set[str] = set()
    files = list(config.files) + derived_files(config, state)
    for spec in files:
        ssh_dir = _ssh_dir_of(spec, config, state)
        if ssh_dir is not None:
            actions += ssh_dir
        for action in _file(spec, state, new_users, problems):
            actions.append(action)
            unit = unit_of_path(spec.path)
            if unit is not None and isinstance(action, WriteFile):
                changed_units.add(unit)
    if problems:
        raise UserError(problems)
    unit_actions = _unit_actions(config, state, changed_units)
    return Plan(tuple(actions + unit_actions), tuple(dict.fromkeys(notes)))


def _unit_actions(config: MachineConfig, state: MachineState,
                  changed_units: set[str]) -> list[Action]:
    """Unit files, enabling, the pass's one Reload, then the units' commands; a unit whose
    files changed (`changed_units`, completed here) is re-enabled and restarted."""
    unit_actions: list[Action] = []
    for unit in config.units:
        changed, more = _unit_files(unit, state)
        unit_actions += more
        if changed:
            changed_units.add(unit.name)
    for unit in config.units:
        if unit.enable and not unit.mask:
            current = state.units.get(unit.name)
            satisfied = ENABLED_RUNTIME if unit.runtime else ENABLED
            if unit.name in changed_units or current is None or \
                    current.file_state not in satisfied:
                unit_actions.append(EnableUnit(unit.name, unit.runtime))
    if changed_units or any(isinstance(a, EnableUnit) for a in unit_actions):
        unit_actions.append(Reload())  # one for the whole pass
    for unit in config.units:
        current = state.units.get(unit.name)
        run = command_to_run(unit.command, current.active if current else "inactive",
                             unit.name in changed_units)
        if run is not None:
            unit_actions.append(UnitCommand(unit.name, *run))
    return unit_actions


def _users(config: MachineConfig, state: MachineState, problems: list[Problem]
           ) -> Iterator[Action]:
    for user in config.users:
        account = state.accounts.get(user.name)
        if account is None:
            for group in ([user.primary_group] if user.primary_group else []) + \
                    list(user.groups):
                if group not in state.groups and not group.isdigit():
                    file, line, col = user.at
                    problems.append(Problem(file or "user-data", line, col,
                                            f'user {user.name}: group "{group}" does not '
                                            "exist on this machine; create it first or "
                                            "remove it"))
            yield CreateUser(user)
        elif user.passwd and account.passwd != user.passwd:
            yield SetPassword(user.name, user.passwd)


def _ssh_dir_of(spec: FileSpec, config: MachineConfig, state: MachineState
                ) -> list[Action] | None:
    """A user's ~/.ssh (0700, theirs) before their authorized_keys."""
    if not spec.path.endswith("/.ssh/authorized_keys") or spec.owner is None:
        return None
    directory = posixpath.dirname(spec.path)
    current = state.files.get(directory)
    if current is None:
        return [MakeDirectory(directory, SSH_DIR_MODE, spec.owner)]
    ids = owner_ids(spec.owner, state)
    if current.kind == "directory" and ids is not None and \
            _attributes_match(current, SSH_DIR_MODE, ids):
        return []
    return [MakeDirectory(directory, SSH_DIR_MODE, spec.owner)]


def _attributes_match(current: FileState, mode: int, ids: tuple[int | None, int | None]
                      ) -> bool:
    uid, gid = ids
    return (current.mode & 0o7777) == mode and (uid is None or current.uid == uid) and \
        (gid is None or current.gid == gid)


def _file(spec: FileSpec, state: MachineState, new_users: set[str],
          problems: list[Problem]) -> list[Action]:
    ids = owner_ids(spec.owner, state)
    if ids is None:
        names = [n for n in (spec.owner or "").split(":") if n]
        if not any(n in new_users for n in names):
            file, line, col = spec.at
            problems.append(Problem(file or "user-data", line, col,
                                    f'{spec.where}: owner "{spec.owner}" does not exist on '
                                    "this machine; create the user or group (users:) or "
                                    "fix the owner"))
            return []
    current = state.files.get(spec.path)
    if current is None or current.kind != "file":
        if current is not None and current.kind == "directory":
            file, line, col = spec.at
            problems.append(Problem(file or "user-data", line, col,
                                    f"{spec.where}: {spec.path} is a directory on this "
                                    "machine; give a file path"))
            return []
        return [WriteFile(spec.path, spec.content, spec.mode, spec.owner, current is None)]
    if current.content != spec.content:
        return [WriteFile(spec.path, spec.content, spec.mode, spec.owner, False)]
    if ids is None or not _attributes_match(current, spec.mode, ids):
        return [SetAttributes(spec.path, spec.mode, spec.owner)]
    return []


def _is_masked(current: FileState | None) -> bool:
    return current is not None and current.kind == "symlink" and current.target == MASK_TARGET


def _unit_files(unit: UnitSpec, state: MachineState) -> tuple[bool, list[Action]]:
    """(whether the unit's files or mask change, the actions)."""
    actions: list[Action] = []
    changed = False
    masked = _is_masked(state.files.get(unit.mask_path))
    if unit.mask and not masked:
        actions.append(Mask(unit.name, unit.mask_path))
        changed = True
    elif not unit.mask and masked:
        actions.append(Unmask(unit.name, unit.mask_path))
        changed = True
    for file in unit.files:
        if unit.mask and file.path == unit.mask_path:
            continue  # the mask takes the fragment's place, as coreos-cloudinit's did
        spec = FileSpec(file.path, file.content.encode(), file.mode, None, unit.name)
        current = state.files.get(file.path)
        if current is None or current.kind != "file" or current.content != spec.content:
            actions.append(WriteFile(file.path, spec.content, file.mode, None,
                                     current is None))
            changed = True
        elif not _attributes_match(current, file.mode, (0, 0)):
            actions.append(SetAttributes(file.path, file.mode, None))
    return changed, actions

