"""Where and with what environment a unit's commands run: env files, directories, root_dir.

A `NodeEnvironment` holds what is the same for every unit of one runner (the
base environment, the specifier context, the node root) and prepares one
activation: `Environment=` then `EnvironmentFile=` (later files win, as in
systemd) and the working directory. With a node root, absolute paths are looked
up inside it and anything resolving outside it (`..`, symlinks) is refused.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable, Mapping
from pathlib import Path

from fleetd.runner.process.settings import ServiceConfig
from fleetd.runner.process.specifiers import SpecifierContext, parse_environment_file
from fleetd.runner.process.state import StartError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_PASSED_THROUGH = ("LANG", "LC_ALL", "TZ")
NODE_ROOT_VARIABLE = "FLEETD_NODE_ROOT"


class NodeEnvironment:
    def __init__(self, machine_id: str, hostname: str, env: Mapping[str, str] | None,
                 root_dir: Path | None) -> None:
        self.root = Path(root_dir).resolve() if root_dir is not None else None
        self.base = base_environment(env)
        if self.root is not None:
            # Paths a unit is given are the node's (/etc/ssl/etcd/…): a unit that opens
            # one itself (`fleetd announce`'s certificates) finds it under this root.
            self.base.setdefault(NODE_ROOT_VARIABLE, str(self.root))
        self.context = specifier_context(machine_id, hostname)

    def prepare(self, config: ServiceConfig,
                warn: Callable[[str], None]) -> tuple[dict[str, str], str]:
        """(environment, working directory) for one activation; StartError if impossible."""
        env = dict(self.base)
        env.update(config.environment)
        for path, optional in config.environment_files:
            host_path = self.host_path(path, "EnvironmentFile")
            try:
                text = host_path.read_text(encoding="utf-8", errors="replace")
            except OSError as err:
                if optional:
                    continue
                raise StartError(f"Failed to load environment file {path}: "
                                 f"{err.strerror or err}") from None
            pairs, warnings = parse_environment_file(text)
            for warning in warnings:
                warn(f"EnvironmentFile={path}: {warning}")
            env.update(pairs)
        cwd = str(self.root) if self.root is not None else "/"
        if config.working_directory is not None:
            path, optional = config.working_directory
            if path == "~":
                path = self.context.home
            host_path = self.host_path(path, "WorkingDirectory")
            if host_path.is_dir():
                cwd = str(host_path)
            elif not optional:
                raise StartError(f"Changing to the requested working directory {path} failed: "
                                 "No such directory")
        return env, cwd

    def host_path(self, path: str, setting: str) -> Path:
        """An absolute unit path as a path on this host (inside the node root, if any)."""
        if self.root is None:
            return Path(path)
        resolved = (self.root / path.lstrip("/")).resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise StartError(f"{setting}={path} resolves to {resolved}, which is outside the "
                             f"node root {self.root}; refusing it")
        return resolved


def base_environment(env: Mapping[str, str] | None) -> dict[str, str]:
    """What every unit starts from: `env` (plus a default PATH), or a few of our own."""
    if env is None:
        base = {"PATH": os.environ.get("PATH") or DEFAULT_PATH}
        base.update({key: os.environ[key] for key in _PASSED_THROUGH if key in os.environ})
        return base
    base = {str(key): str(value) for key, value in env.items()}
    base.setdefault("PATH", DEFAULT_PATH)
    return base


def specifier_context(machine_id: str, hostname: str) -> SpecifierContext:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot_id = handle.read().strip().replace("-", "")
    except OSError:
        boot_id = ""
    try:
        user = pwd.getpwuid(os.getuid())
        names = dict(user=user.pw_name, home=user.pw_dir, shell=user.pw_shell)
    except KeyError:
        names = {}
    return SpecifierContext(machine_id=machine_id, hostname=hostname, boot_id=boot_id,
                            kernel_release=os.uname().release, uid=str(os.getuid()), **names)
