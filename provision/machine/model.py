"""The values the applier works with: what the user-data asks for, what the machine has,
and the actions that take one to the other. Plain frozen data, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

UNIT_DIR = "/etc/systemd/system"
RUNTIME_UNIT_DIR = "/run/systemd/system"
# Where systemd reads unit files from: a write_files entry there changes a unit too.
UNIT_SEARCH_DIRS = (UNIT_DIR, RUNTIME_UNIT_DIR, "/usr/local/lib/systemd/system",
                    "/lib/systemd/system", "/usr/lib/systemd/system")
MASK_TARGET = "/dev/null"

COMMANDS = ("start", "stop", "restart", "reload", "try-restart", "reload-or-restart",
            "reload-or-try-restart")


def _frozen(mapping: Mapping | None = None) -> Mapping:
    return MappingProxyType(dict(mapping or {}))


# -- what the user-data asks for --------------------------------------------------------------

@dataclass(frozen=True)
class FileSpec:
    """A file with exactly this content, mode and owner (`user`, `user:group`, `user:`,
    `:group`, or None for root's). `where` names the user-data entry for messages."""

    path: str
    content: bytes
    mode: int = 0o644
    owner: str | None = None
    where: str = ""  # e.g. "write_files[2]"
    at: tuple[str, int | None, int | None] = ("", None, None)  # file, line, col


@dataclass(frozen=True)
class UserSpec:
    name: str
    gecos: str | None = None
    passwd: str | None = None  # a crypt(3) hash, as CoreOS took it
    homedir: str | None = None
    no_create_home: bool = False
    primary_group: str | None = None
    groups: tuple[str, ...] = ()
    no_user_group: bool = False
    system: bool = False
    no_log_init: bool = False
    shell: str | None = None
    ssh_authorized_keys: tuple[str, ...] = ()
    sudo: bool = False  # passwordless sudo, as CoreOS's core user had
    at: tuple[str, int | None, int | None] = ("", None, None)  # its entry: file, line, col

    @property
    def home(self) -> str:
        return self.homedir or f"/home/{self.name}"


@dataclass(frozen=True)
class UnitFileSpec:
    """One file of a unit: its fragment or a drop-in, at its final path."""

    path: str
    content: str
    mode: int = 0o644  # 0600 for a drop-in carrying a secret


@dataclass(frozen=True)
class UnitSpec:
    name: str
    files: tuple[UnitFileSpec, ...] = ()
    command: str | None = None
    enable: bool = False
    runtime: bool = False
    mask: bool = False

    @property
    def unit_dir(self) -> str:
        return RUNTIME_UNIT_DIR if self.runtime else UNIT_DIR

    @property
    def mask_path(self) -> str:
        return f"{self.unit_dir}/{self.name}"


@dataclass(frozen=True)
class MachineConfig:
    hostname: str | None = None
    users: tuple[UserSpec, ...] = ()
    files: tuple[FileSpec, ...] = ()
    units: tuple[UnitSpec, ...] = ()
    notes: tuple[str, ...] = ()  # one warning line each (what is not applied, and why)
    manage_etc_hosts: bool = False  # `manage_etc_hosts: localhost`


# -- what the machine has ---------------------------------------------------------------------

@dataclass(frozen=True)
class Facts:
    """Programs and accounts of the machine the generated units use."""

    etcd: str | None = "/usr/bin/etcd"
    etcd_user: str | None = "etcd"
    etcdctl: str | None = "/usr/bin/etcdctl"
    fleetd: tuple[str, ...] = ("/usr/local/bin/fleetd",)
    flanneld: str | None = None
    sudo: bool = True


@dataclass(frozen=True)
class FileState:
    kind: str  # "file" | "symlink" | "directory" | "other"
    content: bytes | None = None  # a file's
    mode: int = 0
    uid: int = 0
    gid: int = 0
    target: str | None = None  # a symlink's


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str
    passwd: str | None = None  # the hash in /etc/shadow


@dataclass(frozen=True)
class UnitState:
    active: str = "inactive"  # systemd's ActiveState
    file_state: str = ""      # UnitFileState ("" when systemd knows no file)


@dataclass(frozen=True)
class MachineState:
    hostname: str = ""         # the running system's
    files: Mapping[str, FileState] = field(default_factory=_frozen)  # missing: absent
    accounts: Mapping[str, Account] = field(default_factory=_frozen)
    groups: Mapping[str, int] = field(default_factory=_frozen)
    units: Mapping[str, UnitState] = field(default_factory=_frozen)


# -- actions ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SetHostname:
    name: str

    def describe(self) -> str:
        return f"hostname: set to {self.name}"


@dataclass(frozen=True)
class CreateUser:
    user: UserSpec

    def describe(self) -> str:
        return f"user {self.user.name}: created"


@dataclass(frozen=True)
class SetPassword:
    name: str
    passwd: str

    def describe(self) -> str:
        return f"user {self.name}: password set"


@dataclass(frozen=True)
class MakeDirectory:
    path: str
    mode: int
    owner: str | None

    def describe(self) -> str:
        return f"{self.path}/: created ({self.mode:04o})"


@dataclass(frozen=True)
class WriteFile:
    path: str
    content: bytes
    mode: int
    owner: str | None
    created: bool

    def describe(self) -> str:
        verb = "written" if self.created else "updated"
        return f"{self.path}: {verb} ({self.mode:04o} {self.owner or 'root'})"


@dataclass(frozen=True)
class SetAttributes:
    """Mode and owner only: the content is already right, so the file is not rewritten."""

    path: str
    mode: int
    owner: str | None

    def describe(self) -> str:
        return f"{self.path}: mode/owner set ({self.mode:04o} {self.owner or 'root'})"


@dataclass(frozen=True)
class Mask:
    unit: str
    path: str

    def describe(self) -> str:
        return f"{self.unit}: masked ({self.path} -> {MASK_TARGET})"


@dataclass(frozen=True)
class Unmask:
    unit: str
    path: str

    def describe(self) -> str:
        return f"{self.unit}: unmasked"


@dataclass(frozen=True)
class EnableUnit:
    unit: str
    runtime: bool

    def describe(self) -> str:
        return f"{self.unit}: enabled" + (" (runtime)" if self.runtime else "")


@dataclass(frozen=True)
class Reload:
    def describe(self) -> str:
        return "systemd: daemon reloaded"


@dataclass(frozen=True)
class UnitCommand:
    unit: str
    command: str
    reason: str

    def describe(self) -> str:
        return f"{self.unit}: {self.command} ({self.reason})"


Action = (SetHostname | CreateUser | SetPassword | MakeDirectory | WriteFile | SetAttributes
          | Mask | Unmask | EnableUnit | Reload | UnitCommand)


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    notes: tuple[str, ...] = ()
