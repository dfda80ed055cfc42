"""fleetd configuration under fleet's own names, from a file, the environment and flags.

Precedence: `--flags` (dashes or underscores) over `FLEET_*` environment
variables over the config file (`key=value` lines, like /etc/fleet/fleet.conf)
over defaults. Every bad value is a `ConfigError` naming where it came from.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetd import argtypes
from fleetd.machine import parse_metadata
from fleetd.registry.keys import DEFAULT_PREFIX

DEFAULT_CONFIG_FILE = "/etc/fleet/fleet.conf"


class ConfigError(Exception):
    """A setting that cannot be used; the message names its source and what to do."""


@dataclass(frozen=True)
class Config:
    etcd_servers: tuple[str, ...] = ("http://127.0.0.1:2379",)
    etcd_key_prefix: str = DEFAULT_PREFIX
    etcd_request_timeout: float = 3.0
    # Mutual TLS to etcd (fleet's names); paths on the node (under root_dir, if any).
    etcd_cafile: str = ""
    etcd_certfile: str = ""
    etcd_keyfile: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    public_ip: str = ""
    agent_ttl: float = 30.0
    engine_reconcile_interval: float = 2.0
    disable_engine: bool = False
    state_dir: Path = Path("/var/lib/fleetd")
    root_dir: Path | None = None  # local clusters: the node directory that stands for `/`
    runner: str = "auto"  # process | systemd | auto (systemd when its system bus answers)
    units_directory: Path = Path("/run/fleet/units")
    journal_root: Path | None = None  # read unit logs under this root (a container's)
    verbosity: int = 0
    api_socket: Path | None = None  # None: <state_dir>/fleet.sock
    api_address: str = ""  # host:port of an extra TCP listener; "" for none
    api_allow_remote: bool = False

    @property
    def api_socket_path(self) -> Path:
        return self.api_socket if self.api_socket is not None else self.state_dir / "fleet.sock"


SETTINGS = {
    "etcd_servers": "comma-separated etcd client URLs",
    "etcd_key_prefix": "etcd key prefix of the fleet keyspace",
    "etcd_request_timeout": "seconds one etcd request may take",
    "etcd_cafile": "CA certificate (PEM) that signed the etcd members' certificates",
    "etcd_certfile": "client certificate (PEM) this fleetd shows etcd",
    "etcd_keyfile": "key (PEM) of etcd_certfile",
    "metadata": "machine metadata, k=v,k=v",
    "public_ip": "IP address this machine announces",
    "agent_ttl": "machine presence TTL (e.g. 30s); a silent machine is gone after it",
    "engine_reconcile_interval": "seconds between full engine passes",
    "disable_engine": "true: never run the engine on this machine",
    "state_dir": "directory for machine-id, unit files and logs",
    "root_dir": "directory that stands for / when resolving unit paths (local clusters)",
    "runner": "systemd (units run by systemd over D-Bus), process (units run as fleetd's "
              "children), or auto: systemd when a system bus with systemd is reachable",
    "units_directory": "where the systemd runner writes unit files (default /run/fleet/units)",
    "journal_root": "systemd runner: read unit logs with journalctl --root DIR (e.g. a "
                    "container's /proc/<pid>/root) instead of this host's journal",
    "verbosity": "0 quiet, 1 info, 2 debug",
    "api_socket": "unix socket of the fleet API (default <state_dir>/fleet.sock)",
    "api_address": "host:port for the fleet API over TCP too (loopback unless "
                   "api_allow_remote)",
    "api_allow_remote": "true: let api_address listen beyond loopback (the API has no "
                        "authentication)",
}


def parse_duration(text: str) -> float:
    return argtypes.duration(text)


def parse_listen_address(text: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (every interface) -> (host, port)."""
    text = text.strip()
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})|([^\s:\[\]]*):([0-9]{1,5})", text)
    if not match:
        raise ValueError(f"{text!r} is not host:port (e.g. 127.0.0.1:49153 or [::1]:49153)")
    host = match[1] if match[1] is not None else match[3]
    port = int(match[2] if match[2] is not None else match[4])
    if port > 65535:
        raise ValueError(f"port {port} is out of range (0-65535)")
    if match[1] is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in {text!r} is not an IPv6 address") from None
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname could resolve anywhere


TLS_SETTINGS = ("etcd_cafile", "etcd_certfile", "etcd_keyfile")


def tls_problem(config: Config) -> str | None:
    """Why the etcd TLS settings cannot work together, or None."""
    given = [name for name in TLS_SETTINGS if getattr(config, name)]
    if given and len(given) < len(TLS_SETTINGS):
        missing = ", ".join(n for n in TLS_SETTINGS if n not in given)
        return f"{', '.join(given)} given without {missing}: mutual TLS needs all three"
    if not given and any(s.startswith("https://") for s in config.etcd_servers):
        return ("https etcd servers need etcd_cafile, etcd_certfile and etcd_keyfile "
                "(etcd asks every client for a certificate)")
    return None


def node_file(config: Config, path: str) -> str:
    """A path as the node sees it, as a path on this host (inside root_dir, if any)."""
    if config.root_dir is None or not path.startswith("/"):
        return path
    return str(Path(config.root_dir) / path.lstrip("/"))


def etcd_tls(config: Config):  # EtcdTLS | None (etcd3 imported lazily)
    """The certificates fleetd shows etcd, or None for plain http."""
    if not config.etcd_cafile:
        return None
    from fleetd.registry.etcd import EtcdTLS

    return EtcdTLS(node_file(config, config.etcd_cafile),
                   node_file(config, config.etcd_certfile),
                   node_file(config, config.etcd_keyfile))


def api_address_problem(config: Config) -> str | None:
    """Why `config.api_address` may not be used as it is, or None."""
    if not config.api_address:
        return None
    try:
        host, _ = parse_listen_address(config.api_address)
    except ValueError as err:
        return str(err)
    if config.api_allow_remote or is_loopback(host):
        return None
    where = host or "every interface"
    return (f"{where} is not a loopback address; the fleet API has no authentication, so it "
            "listens on 127.0.0.1 or ::1 unless you also set api_allow_remote=true")


def _bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not true or false")


def _etcd_servers(raw: str) -> tuple[str, ...]:
    servers = tuple(s.strip() for s in raw.split(",") if s.strip())
    if not servers:
        raise ValueError("no etcd server given")
    for server in servers:
        if not re.match(r"^https?://[^\s/]+/?$", server):
            raise ValueError(f"{server!r} is not an http(s)://host:port URL")
    return servers


def _key_prefix(raw: str) -> str:
    if not raw.startswith("/"):
        raise ValueError("must start with /")
    return raw if raw.endswith("/") else raw + "/"


def _agent_ttl(raw: str) -> float:
    value = argtypes.positive_duration(raw)
    if value < 1:
        raise ValueError("must be at least 1s")
    return value


def _api_address(raw: str) -> str:
    if raw.strip():
        parse_listen_address(raw)
    return raw.strip()


def _runner(raw: str) -> str:
    if raw not in ("process", "systemd", "auto"):
        raise ValueError(f"unknown runner {raw!r}; use systemd, process or auto")
    return raw


def _path(raw: str) -> Path:
    return Path(raw).expanduser()


# A setting's text -> its value (ValueError says what is wrong); a setting not listed is text.
_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "etcd_servers": _etcd_servers,
    "etcd_key_prefix": _key_prefix,
    "agent_ttl": _agent_ttl,
    "etcd_request_timeout": argtypes.positive_duration,
    "engine_reconcile_interval": argtypes.positive_duration,
    "metadata": parse_metadata,
    "disable_engine": _bool,
    "api_allow_remote": _bool,
    "api_address": _api_address,
    "state_dir": _path, "root_dir": _path, "api_socket": _path, "units_directory": _path,
    "journal_root": _path,
    "runner": _runner,
    "verbosity": argtypes.non_negative_int,
}


def _convert(name: str, raw: str) -> Any:
    convert = _CONVERTERS.get(name)
    return raw if convert is None else convert(raw)


def read_config_file(path: Path) -> dict[str, tuple[str, str]]:
    """`{setting: (raw value, where)}` from a fleet.conf-style file."""
    found: dict[str, tuple[str, str]] = {}
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file: {err.strerror}") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        key, sep, value = stripped.partition("=")
        if not sep:
            raise ConfigError(f"{path}:{lineno}: expected key=value, got {stripped!r}")
        key = key.strip().replace("-", "_")
        if key not in SETTINGS:
            raise ConfigError(f"{path}:{lineno}: unknown setting {key!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        found[key] = (value, f"{path}:{lineno}")
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argtypes.OneLineParser(prog="fleetd", description="fleet-compatible cluster "
                                     "init system daemon")
    parser.add_argument("--config", help=f"config file (default {DEFAULT_CONFIG_FILE} if it "
                                         "exists)")
    for name, help_text in SETTINGS.items():
        flags = ["--" + name.replace("_", "-")]
        if "_" in name:
            flags.append("--" + name)  # fleet's own spelling works too
        parser.add_argument(*flags, dest=name, default=None, help=help_text)
    return parser


def load_config(argv: Sequence[str], environ: Mapping[str, str]) -> Config:
    args = build_parser().parse_args(list(argv))
    raw: dict[str, tuple[str, str]] = {}
    config_path = args.config or environ.get("FLEET_CONFIG")
    if config_path:
        raw.update(read_config_file(Path(config_path)))
    elif Path(DEFAULT_CONFIG_FILE).exists():
        raw.update(read_config_file(Path(DEFAULT_CONFIG_FILE)))
    for name in SETTINGS:
        env_name = "FLEET_" + name.upper()
        if env_name in environ:
            raw[name] = (environ[env_name], f"${env_name}")
    for name in SETTINGS:
        value = getattr(args, name)
        if value is not None:
            raw[name] = (value, "--" + name.replace("_", "-"))
    values = {}
    for name, (text, where) in raw.items():
        try:
            values[name] = _convert(name, text)
        except ValueError as err:
            raise ConfigError(f"{where}: {name}: {err}") from None
    config = Config(**values)
    problem = tls_problem(config)
    if problem is not None:
        where = next((raw[n][1] for n in (*TLS_SETTINGS, "etcd_servers") if n in raw), "")
        raise ConfigError(f"{where}: {problem}")
    problem = api_address_problem(config)
    if problem is not None:
        raise ConfigError(f"{raw['api_address'][1]}: api_address: {problem}")
    return config
