"""The rendered cluster's manifest: what every provider (and the Vagrantfile) knows of it.

Render writes it once (`Manifest.to_json`); providers read it with `Manifest.from_file`,
which checks every field it reads and turns a corrupt, foreign or old manifest into one
clear line. The JSON keys are a contract: the Vagrantfile reads `version`, `source`,
`nodes` (name, hostname, ip, user_data, vagrant) and `vagrant` with Ruby's JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.errors import Problem, UserError
from provision.spec.discovery import MODES, DiscoveryRecord

MANIFEST = "manifest.json"
MANIFEST_VERSION = 2
GENERATOR = "provision"
RENDER_AGAIN = "render it again with `provision render CLUSTER.yaml` (or `provision up`)"


@dataclass(frozen=True)
class NodeVagrant:
    box: str
    box_url: str | None
    box_version: str | None
    cpus: int
    memory: int
    gui: bool
    lxc_container: str


@dataclass(frozen=True)
class ManifestNode:
    index: int
    name: str
    hostname: str
    ip: str
    roles: tuple[str, ...]
    user_data: str  # the file name, beside the manifest
    metadata: tuple[tuple[str, str], ...]
    vagrant: NodeVagrant

    @property
    def etcd_role(self) -> str:
        """etcd-member | etcd-proxy | etcd-discovery."""
        return next((r for r in self.roles if r.startswith("etcd-")), "etcd-member")


@dataclass(frozen=True)
class ManifestEtcd:
    members: tuple[str, ...]
    client_port: int
    peer_port: int
    endpoints: tuple[str, ...]  # every member's client URL
    discovery: DiscoveryRecord


@dataclass(frozen=True)
class LxcSettings:
    bridge: str
    prefix_length: int
    gateway: str | None


@dataclass(frozen=True)
class VagrantCluster:
    provider: str | None
    payload: str  # the payload's file name, beside the manifest
    lxc: LxcSettings


@dataclass(frozen=True)
class Manifest:
    cluster: str
    source: str  # the cluster file, absolute
    provider: str
    network: str
    substituted: bool
    tls: bool
    etcd: ManifestEtcd
    nodes: tuple[ManifestNode, ...]
    units: tuple[str, ...]
    vagrant: VagrantCluster
    # Where it was read from (None: made by render, not read).
    path: Path | None = field(default=None, compare=False)

    @property
    def names(self) -> list[str]:
        return [node.name for node in self.nodes]

    def node(self, name: str) -> ManifestNode:
        return next(n for n in self.nodes if n.name == name)

    def to_dict(self) -> dict:
        etcd = self.etcd
        return {
            "generator": GENERATOR,
            "version": MANIFEST_VERSION,
            "cluster": self.cluster,
            "source": self.source,
            "provider": self.provider,
            "network": self.network,
            "substituted": self.substituted,
            "tls": self.tls,
            "etcd": {
                "members": list(etcd.members),
                "client_port": etcd.client_port,
                "peer_port": etcd.peer_port,
                "endpoints": list(etcd.endpoints),
                "discovery": etcd.discovery.to_dict(),
            },
            "nodes": [
                {
                    "index": node.index,
                    "name": node.name,
                    "hostname": node.hostname,
                    "ip": node.ip,
                    "roles": list(node.roles),
                    "user_data": node.user_data,
                    "metadata": dict(node.metadata),
                    "vagrant": vars(node.vagrant).copy(),
                }
                for node in self.nodes
            ],
            "units": list(self.units),
            "vagrant": {"provider": self.vagrant.provider, "payload": self.vagrant.payload,
                        "lxc": vars(self.vagrant.lxc).copy()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_file(cls, path: Path | str) -> Manifest:
        """The manifest at `path` (a file, or the directory holding it); one UserError
        naming it when it is missing, unreadable, corrupt or of another version."""
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / MANIFEST
        path = path.absolute()
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise _problem(path, "node manifest not found; run `provision render "
                                 "CLUSTER.yaml` first") from None
        except (OSError, UnicodeDecodeError) as err:
            raise _problem(path, f"cannot read the node manifest: {err}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise _problem(path, f"not valid JSON ({err.msg}); {RENDER_AGAIN}",
                           err.lineno, err.colno) from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: Any, path: Path) -> Manifest:
        read = _Reader(path)
        nodes = data.get("nodes") if isinstance(data, dict) else None
        if not isinstance(nodes, list) or not nodes:
            raise _problem(path, f"not a node manifest (no `nodes`); {RENDER_AGAIN}")
        for i, node in enumerate(nodes):
            if not (isinstance(node, dict) and _text(node.get("name"))
                    and _text(node.get("ip"))):
                raise _problem(path, f"nodes[{i}] has no `name` or `ip`; {RENDER_AGAIN}")
        if data.get("generator") != GENERATOR or data.get("version") != MANIFEST_VERSION:
            raise _problem(path, f"manifest version {data.get('version')!r} is not this "
                                 f"provision's ({MANIFEST_VERSION}); {RENDER_AGAIN}")
        etcd = read(data, "etcd", dict)
        vagrant = read(data, "vagrant", dict)
        return cls(
            cluster=read(data, "cluster", str), source=read(data, "source", str),
            provider=read(data, "provider", str), network=read(data, "network", str),
            substituted=read(data, "substituted", bool), tls=read(data, "tls", bool),
            etcd=ManifestEtcd(
                members=tuple(read.items(etcd, "etcd.members", str)),
                client_port=read(etcd, "etcd.client_port", int),
                peer_port=read(etcd, "etcd.peer_port", int),
                endpoints=tuple(read.items(etcd, "etcd.endpoints", str)),
                discovery=_discovery(read, read(etcd, "etcd.discovery", dict))),
            nodes=tuple(_node(read, node, i) for i, node in enumerate(nodes)),
            units=tuple(read.items(data, "units", str)),
            vagrant=VagrantCluster(
                provider=read(vagrant, "vagrant.provider", str, optional=True),
                payload=read(vagrant, "vagrant.payload", str),
                lxc=LxcSettings(**_fields(read, read(vagrant, "vagrant.lxc", dict),
                                          "vagrant.lxc", LXC_FIELDS))),
            path=path)


LXC_FIELDS = {"bridge": (str, False), "prefix_length": (int, False), "gateway": (str, True)}
NODE_VAGRANT_FIELDS = {"box": (str, False), "box_url": (str, True), "box_version": (str, True),
                       "cpus": (int, False), "memory": (int, False), "gui": (bool, False),
                       "lxc_container": (str, False)}


def _node(read: _Reader, node: dict, i: int) -> ManifestNode:
    where = f"nodes[{i}]"
    metadata = read(node, f"{where}.metadata", dict)
    return ManifestNode(
        index=read(node, f"{where}.index", int), name=read(node, f"{where}.name", str),
        hostname=read(node, f"{where}.hostname", str), ip=read(node, f"{where}.ip", str),
        roles=tuple(read.items(node, f"{where}.roles", str)),
        user_data=read(node, f"{where}.user_data", str),
        metadata=tuple((str(k), str(v)) for k, v in metadata.items()),
        vagrant=NodeVagrant(**_fields(read, read(node, f"{where}.vagrant", dict),
                                      f"{where}.vagrant", NODE_VAGRANT_FIELDS)))


def _discovery(read: _Reader, data: dict) -> DiscoveryRecord:
    mode = read(data, "etcd.discovery.mode", str)
    if mode not in MODES:
        raise read.problem("etcd.discovery.mode", f"is {mode!r}, not a discovery mode")
    keys = MODES[mode].recorded
    values = {key: read(data, f"etcd.discovery.{key}", str, optional=True) for key in keys}
    return DiscoveryRecord(mode, read(data, "etcd.discovery.size", int), keys=keys, **values)


def _fields(read: _Reader, data: dict, where: str,
            fields: dict[str, tuple[type, bool]]) -> dict:
    return {key: read(data, f"{where}.{key}", kind, optional=optional)
            for key, (kind, optional) in fields.items()}


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value)


class _Reader:
    """Reads one field, checked: `read(obj, "a.b", int)` is obj["b"], named a.b in errors."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def problem(self, where: str, what: str) -> UserError:
        return _problem(self.path, f"`{where}` {what}; {RENDER_AGAIN}")

    def __call__(self, data: dict, where: str, kind: type, *, optional: bool = False) -> Any:
        value = data.get(where.rpartition(".")[2].partition("[")[0])
        if value is None and optional:
            return None
        # bool is an int to Python; a manifest's integers are never true or false.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.problem(where, "is missing or not " + _KIND_NAMES[kind])
        return value

    def items(self, data: dict, where: str, kind: type) -> list:
        values = self(data, where, list)
        if not all(isinstance(v, kind) for v in values):
            raise self.problem(where, "must list only " + _PLURAL[kind])
        return values


_KIND_NAMES: dict[type, str] = {str: "a string", int: "an integer", bool: "true or false",
                                dict: "an object", list: "a list"}
_PLURAL: dict[type, str] = {str: "strings"}


def _problem(path: Path, message: str, line: int | None = None,
             col: int | None = None) -> UserError:
    return UserError([Problem(str(path), line, col, message)])

