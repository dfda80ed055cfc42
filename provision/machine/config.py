"""A user-data file as what it asks of a machine (pure: text in, `MachineConfig` out).

The file must pass provision's cloud-config validator (coreos-cloudinit's rules, see
provision/userdata/). Its warnings that still leave a clear meaning are applied
and reported (an unknown or deprecated key: ignored, as coreos-cloudinit did; an
empty value: the zero value); every other finding — a wrong type, an unknown unit
command, an unquoted mode — refuses the whole file, before anything is applied. On top
of the validator, what the machine cannot apply safely is refused too: a bad unit or
drop-in name, a path with `..`, undecodable content, an address variable without an
address, a masked unit asked to start.

Address variables are replaced in the whole text first, as coreos-cloudinit did.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from fleetd.unit.names import UnitNameError, parse_unit_name
from provision.errors import Problem, UserError
from provision.machine.model import (
    COMMANDS,
    RUNTIME_UNIT_DIR,
    UNIT_DIR,
    Facts,
    FileSpec,
    MachineConfig,
    UnitFileSpec,
    UnitSpec,
    UserSpec,
)
from provision.machine.services import service_files
from provision.userdata import validate_user_data
from provision.userdata.services import decode_content
from provision.userdata.substitution import ENVIRONMENT, substitute, variables_used
from provision.yamlmarks import MarkedDocument, Path_, load_yaml

CORE_USER = "core"
CORE_GECOS = "CoreOS Admin"
CORE_SHELL = "/bin/bash"
HOSTNAME_MAX = 64
_HOST_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,30}\$?$")  # Debian's useradd NAME_REGEX
_OWNER = re.compile(r"^[^:\s]*(:[^:\s]*)?$")
_DROP_IN = re.compile(r"^[^/\s][^/]*\.conf$")
STARTING_COMMANDS = ("start", "restart", "reload", "try-restart", "reload-or-restart",
                     "reload-or-try-restart")
NOT_APPLIED = {
    "etcd": "coreos.etcd (etcd 0.4) is not applied on this machine; use coreos.etcd2",
    "locksmith": "coreos.locksmith is not applied on this machine (no locksmithd)",
    "update": "coreos.update is not applied on this machine (no update engine)",
    "oem": "coreos.oem is not applied on this machine",
}


def blocks_apply(problem: Problem) -> bool:
    """Whether a validator finding refuses the file for the applier (see module doc)."""
    if problem.severity == "error":
        return True
    if problem.severity == "info":
        return False
    message = problem.message
    return not (message.startswith(("unrecognized key", "deprecated key"))
                or message.endswith("the value is empty"))


def parse_machine_config(text: str, source: str, addresses: Mapping[str, str],
                         facts: Facts) -> MachineConfig:
    """The config, or UserError with every problem (validator's and ours), positioned."""
    problems = validate_user_data(text, source)
    # A finding that refuses the file is an error here, whatever the validator called it.
    fatal = [replace(p, severity="error") for p in problems if blocks_apply(p)]
    notes = [str(p) for p in problems if not blocks_apply(p)]
    fatal += _missing_addresses(text, source, addresses)
    if fatal:
        raise UserError(fatal)
    try:
        doc = load_yaml(substitute(text, addresses), source, keep_scalars=True)
    except UserError as err:  # only a substituted address could break it now
        raise UserError([Problem(p.file, p.line, p.col, f"after address substitution: "
                                 f"{p.message}") for p in err.problems]) from None
    builder = _Builder(doc, facts)
    config = builder.build()
    if builder.problems:
        raise UserError(builder.problems)
    return MachineConfig(config.hostname, config.users, config.files, config.units,
                         tuple(notes) + config.notes, config.manage_etc_hosts)


def _missing_addresses(text: str, source: str, addresses: Mapping[str, str]) -> list[Problem]:
    problems = []
    for name in variables_used(text):
        if name in addresses:
            continue
        at = re.search(r"(?<!\\)\$" + name, text)
        line = text.count("\n", 0, at.start()) + 1 if at else None
        col = at.start() - text.rfind("\n", 0, at.start()) if at else None
        problems.append(Problem(source, line, col, (
            f"${name} is used but this machine's address is unknown: give "
            f"--{name.replace('_', '-')} or set {ENVIRONMENT[name]} (in the environment or "
            "/etc/environment)")))
    return problems


def _canonical(mapping: Mapping, key: str) -> tuple[str | None, Any]:
    """(the user's spelling, value) of a key matched as cloud-init does (`-` = `_`)."""
    for spelled, value in mapping.items():
        if str(spelled).replace("-", "_") == key:
            return spelled, value
    return None, None


class _Builder:
    def __init__(self, doc: MarkedDocument, facts: Facts) -> None:
        self.doc = doc
        self.facts = facts
        self.problems: list[Problem] = []
        self.notes: list[str] = []

    def fail(self, path: Path_, message: str) -> None:
        self.problems.append(self.doc.problem(path, message))

    def get(self, mapping: Mapping, path: Path_, key: str) -> tuple[Path_, Any]:
        spelled, value = _canonical(mapping, key)
        return path + ((spelled,) if spelled is not None else (key,)), value

    def get_text(self, mapping: Mapping, path: Path_, key: str) -> tuple[Path_, Any]:
        """`get` for a string field, read as coreos-cloudinit's Go structs read it: the
        scalar's text as written (unquoted `0644` is "0644", not the number 420)."""
        where, value = self.get(mapping, path, key)
        if value is not None and not isinstance(value, (str, list, dict)):
            scalar = self.doc.scalar(where)
            if scalar is not None:
                return where, scalar.text
        return where, value

    def build(self) -> MachineConfig:
        data = self.doc.data if isinstance(self.doc.data, dict) else {}
        hostname = self.hostname(data)
        files = list(self.write_files(data))
        if hostname:
            files.insert(0, FileSpec("/etc/hostname", f"{hostname}\n".encode(), 0o644, None,
                                     "hostname"))
        _, manage = self.get(data, (), "manage_etc_hosts")
        users = self.users(data)
        coreos_path, coreos = self.get(data, (), "coreos")
        coreos = coreos if isinstance(coreos, dict) else {}
        for key, note in NOT_APPLIED.items():
            if _canonical(coreos, key)[0] is not None:
                self.notes.append(note)
        units = self.units(coreos_path, coreos)
        return MachineConfig(hostname, tuple(users), tuple(files), tuple(units),
                             tuple(self.notes), manage == "localhost")

    # -- hostname, users ---------------------------------------------------------------------

    def hostname(self, data: Mapping) -> str | None:
        path, value = self.get_text(data, (), "hostname")
        if value is None or value == "":
            return None
        name = str(value)
        if len(name) > HOSTNAME_MAX or not all(_HOST_LABEL.match(p) for p in name.split(".")):
            self.fail(path, f'hostname "{name[:80]}" is not a valid host name (letters, digits '
                            f"and inner dashes, dot-separated labels, at most {HOSTNAME_MAX} "
                            "characters)")
            return None
        return name

    def users(self, data: Mapping) -> list[UserSpec]:
        users: dict[str, UserSpec] = {}
        path, entries = self.get(data, (), "users")
        for index, entry in enumerate(entries or []):
            if not isinstance(entry, dict):
                continue
            user = self.user(path + (index,), entry)
            if user is None:
                continue
            if user.name in users:
                self.fail(path + (index,), f'user "{user.name}" is listed twice; merge the '
                                           "entries")
                continue
            users[user.name] = user
        keys_path, keys = self.get(data, (), "ssh_authorized_keys")
        keys = tuple(str(k) for k in keys or [] if k is not None)
        if keys or CORE_USER in users:
            core = users.get(CORE_USER) or UserSpec(CORE_USER, gecos=CORE_GECOS,
                                                    shell=CORE_SHELL)
            merged = core.ssh_authorized_keys + tuple(k for k in keys
                                                      if k not in core.ssh_authorized_keys)
            users[CORE_USER] = UserSpec(**{**core.__dict__, "ssh_authorized_keys": merged,
                                           "sudo": True})
        return list(users.values())

    def user(self, path: Path_, entry: Mapping) -> UserSpec | None:
        name_path, name = self.get_text(entry, path, "name")
        if name is None or name == "":
            self.notes.append(str(self.doc.problem(
                path, "a users entry without a name is skipped", severity="warning")))
            return None
        name = str(name)
        if not _USER_NAME.match(name):
            self.fail(name_path, f'user name "{name[:40]}" is not valid (lowercase letters, '
                                 "digits, _ and -, starting with a letter or _, at most 32)")
            return None

        def text(key: str) -> str | None:
            value = self.get_text(entry, path, key)[1]
            return None if value is None or value == "" else str(value)

        def flag(key: str) -> bool:
            return self.get(entry, path, key)[1] is True

        def strings(key: str) -> tuple[str, ...]:
            return tuple(str(v) for v in self.get(entry, path, key)[1] or [] if v is not None)

        homedir = text("homedir")
        if homedir is not None and not homedir.startswith("/"):
            self.fail(self.get(entry, path, "homedir")[0],
                      f'homedir "{homedir}" is not an absolute path')
        return UserSpec(name, gecos=text("gecos"), passwd=text("passwd"), homedir=homedir,
                        no_create_home=flag("no_create_home"),
                        primary_group=text("primary_group"), groups=strings("groups"),
                        no_user_group=flag("no_user_group"), system=flag("system"),
                        no_log_init=flag("no_log_init"), shell=text("shell"),
                        ssh_authorized_keys=strings("ssh_authorized_keys"),
                        sudo=name == CORE_USER, at=(self.doc.file, *self.doc.where(path)))

    # -- write_files -------------------------------------------------------------------------

    def write_files(self, data: Mapping) -> list[FileSpec]:
        path, entries = self.get(data, (), "write_files")
        files: dict[str, FileSpec] = {}
        for index, entry in enumerate(entries or []):
            if not isinstance(entry, dict):
                continue
            spec = self.write_file(path + (index,), entry, f"write_files[{index}]")
            if spec is None:
                continue
            if spec.path in files:
                self.notes.append(str(self.doc.problem(
                    path + (index,), f"{spec.path} is also written by "
                    f"{files[spec.path].where}; the later entry wins", severity="warning")))
            files[spec.path] = spec
        return list(files.values())

    def write_file(self, path: Path_, entry: Mapping, where: str) -> FileSpec | None:
        target_path, target = self.get_text(entry, path, "path")
        if target is None:
            return None  # the validator reported it
        target = str(target)
        if ".." in target.split("/"):
            self.fail(target_path, f'write_files path "{target[:80]}" contains ".."; give the '
                                   "path without it")
            return None
        normal = "/" + "/".join(p for p in target.split("/") if p not in ("", "."))
        content_path, content = self.get_text(entry, path, "content")
        _, encoding = self.get_text(entry, path, "encoding")
        try:
            raw = decode_content("" if content is None else str(content), encoding)
        except ValueError as err:
            self.fail(content_path, str(err))
            return None
        mode_path, mode = self.get_text(entry, path, "permissions")
        owner_path, owner = self.get_text(entry, path, "owner")
        owner = None if owner is None or owner == "" else str(owner)
        if owner is not None and not _OWNER.match(owner):
            self.fail(owner_path, f'owner "{owner[:40]}" is not user, user:group, user: or '
                                  ":group")
            return None
        line, col = self.doc.where(owner_path if owner else path)
        return FileSpec(normal, raw, 0o644 if mode in (None, "") else int(str(mode), 8),
                        owner, where, (self.doc.file, line, col))

    # -- units -------------------------------------------------------------------------------

    def units(self, coreos_path: Path_, coreos: Mapping) -> list[UnitSpec]:
        path, entries = self.get(coreos, coreos_path, "units")
        listed: dict[str, UnitSpec] = {}
        for index, entry in enumerate(entries or []):
            if not isinstance(entry, dict):
                continue
            unit = self.unit(path + (index,), entry)
            if unit is None:
                continue
            if unit.name in listed:
                self.fail(path + (index,), f'unit "{unit.name}" is listed twice in '
                                           "coreos.units; merge the entries")
                continue
            listed[unit.name] = unit
        services = service_files(coreos, set(listed), self.facts, self.notes)
        units = []
        for name, files in services.items():
            if name not in listed:
                units.append(UnitSpec(name, tuple(files)))
        for name, unit in listed.items():
            extra = tuple(services.get(name, ()))
            units.append(UnitSpec(name, extra + unit.files, unit.command, unit.enable,
                                  unit.runtime, unit.mask))
        return units

    def unit(self, path: Path_, entry: Mapping) -> UnitSpec | None:
        name_path, name = self.get_text(entry, path, "name")
        if name is None or name == "":
            return None  # the validator reported it
        name = str(name)
        try:
            parsed = parse_unit_name(name)
        except UnitNameError as err:
            self.fail(name_path, str(err))
            return None
        command_path, command = self.get_text(entry, path, "command")
        command = None if command in (None, "") else str(command)
        if command is not None and command not in COMMANDS:
            self.fail(command_path, f'unknown unit command "{command}" (want one of: '
                                    f"{', '.join(COMMANDS)})")
            return None
        mask = self.get(entry, path, "mask")[1] is True
        enable = self.get(entry, path, "enable")[1] is True
        runtime = self.get(entry, path, "runtime")[1] is True
        if mask and command in STARTING_COMMANDS:
            self.fail(command_path, f'{name} is masked (mask: true) and cannot "{command}"; '
                                    "drop one of them")
            return None
        if parsed.is_template and (command or enable):
            self.fail(command_path if command else path,
                      f"{name} is a template: it cannot be started or enabled, only its "
                      "instances (e.g. " + name.replace("@.", "@1.") + ")")
            return None
        directory = RUNTIME_UNIT_DIR if runtime else UNIT_DIR
        files = []
        _, content = self.get_text(entry, path, "content")
        if content is not None and content != "":
            files.append(UnitFileSpec(f"{directory}/{name}", str(content)))
        drop_ins_path, drop_ins = self.get(entry, path, "drop_ins")
        seen: set[str] = set()
        for index, drop in enumerate(drop_ins or []):
            if not isinstance(drop, dict):
                continue
            drop_name_path, drop_name = self.get_text(drop, drop_ins_path + (index,), "name")
            if drop_name is None:
                continue  # the validator reported it
            drop_name = str(drop_name)
            if not _DROP_IN.match(drop_name) or drop_name in (".conf",):
                self.fail(drop_name_path, f'drop-in name "{drop_name[:60]}" must be a file name '
                                          'ending in ".conf" (systemd reads only those)')
                continue
            if drop_name in seen:
                self.fail(drop_name_path, f'drop-in "{drop_name}" of {name} is listed twice')
                continue
            seen.add(drop_name)
            _, drop_content = self.get_text(drop, drop_ins_path + (index,), "content")
            files.append(UnitFileSpec(f"{directory}/{name}.d/{drop_name}",
                                      "" if drop_content is None else str(drop_content)))
        return UnitSpec(name, tuple(files), command, enable, runtime, mask)


def etc_hosts(hostname: str) -> bytes:
    return (f"127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"
            f"127.0.0.1\t{hostname}\n").encode()
