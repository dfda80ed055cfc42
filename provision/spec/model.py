"""The typed cluster model: what a validated cluster definition means.

Every value here is frozen and already checked; renderers and providers read
it and never re-validate. `provision.spec.build` is the only constructor.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property

from fleetd.registry.keys import DEFAULT_PREFIX

DEFAULT_DISCOVERY_SERVICE = "https://discovery.etcd.io"
DEFAULT_FLEET_PREFIX = DEFAULT_PREFIX  # fleetd's own default, spelled once
DEFAULT_FLANNEL_PREFIX = "/coreos.com/network"
SUBSTITUTION_PRIVATE = "$private_ipv4"
SUBSTITUTION_PUBLIC = "$public_ipv4"


class EtcdRole(str, Enum):
    MEMBER = "etcd-member"
    PROXY = "etcd-proxy"
    DISCOVERY = "etcd-discovery"


@dataclass(frozen=True)
class WriteFile:
    path: str
    content: str = ""
    permissions: str | None = None
    owner: str | None = None
    encoding: str | None = None


@dataclass(frozen=True)
class DropIn:
    name: str
    content: str


@dataclass(frozen=True)
class NodeUnit:
    """A unit the node's own init runs (cloud-config `coreos.units`), not a fleet unit."""

    name: str
    command: str | None = None
    enable: bool | None = None
    mask: bool | None = None
    runtime: bool | None = None
    content: str | None = None
    drop_ins: tuple[DropIn, ...] = ()


LXC_BOX = "provision/bookworm"  # the box `provision box build --provider lxc` adds


@dataclass(frozen=True)
class VagrantSettings:
    box: str = "debian/bookworm64"  # provider lxc: LXC_BOX
    box_url: str | None = None
    box_version: str | None = None
    cpus: int = 1
    memory: int = 1024
    gui: bool = False
    # Cluster-wide (not per node): the Vagrant provider the Vagrantfile puts first
    # (None: Vagrant's own choice), and the host bridge lxc machines' veths join.
    provider: str | None = None
    bridge: str = "br0"


@dataclass(frozen=True)
class Node:
    index: int  # 1-based: user-data-<index>
    name: str
    ip: ipaddress.IPv4Address
    etcd_role: EtcdRole
    metadata: tuple[tuple[str, str], ...] = ()
    vagrant: VagrantSettings = field(default_factory=VagrantSettings)
    write_files: tuple[WriteFile, ...] = ()
    node_units: tuple[NodeUnit, ...] = ()
    etcd2_settings: tuple[tuple[str, str | int | bool], ...] = ()
    fleet_settings: tuple[tuple[str, str | int | bool], ...] = ()

    @property
    def user_data_name(self) -> str:
        return f"user-data-{self.index}"

    @property
    def metadata_text(self) -> str:
        """fleet's `k=v,k=v` form."""
        return ",".join(f"{k}={v}" for k, v in self.metadata)


@dataclass(frozen=True)
class Discovery:
    mode: str  # a name in provision.spec.discovery.MODES
    url: str | None = None  # token: given in YAML (else requested and cached)
    service: str = DEFAULT_DISCOVERY_SERVICE
    node: str | None = None  # custom: the node running the standalone discovery etcd
    domain: str | None = None  # dns-srv
    dns_server: str | None = None  # dns-srv
    cluster_token: str = "etcd-cluster"


@dataclass(frozen=True)
class EtcdSpec:
    members: tuple[str, ...]
    discovery: Discovery
    client_port: int = 2379
    peer_port: int = 2380
    settings: tuple[tuple[str, str | int | bool], ...] = ()


@dataclass(frozen=True)
class FlannelSpec:
    interface: str | None
    config_json: str | None  # canonical JSON for /coreos.com/network/config
    etcd_prefix: str = DEFAULT_FLANNEL_PREFIX


@dataclass(frozen=True)
class FleetSpec:
    public_ip: str = SUBSTITUTION_PUBLIC
    agent_ttl: str | None = None
    engine_reconcile_interval: float | None = None
    etcd_servers: tuple[str, ...] = ()
    etcd_key_prefix: str | None = None


@dataclass(frozen=True)
class Sidekick:
    port: int
    check: str = "tcp"
    path: str = "/"
    ttl: int = 30
    interval: float | None = None
    key: str | None = None  # etcd key prefix; default /services/<set>


@dataclass(frozen=True)
class UnitSet:
    """A declared fleet unit, template set or global unit (applied by `provision apply`)."""

    name: str  # e.g. web@.service or hello.service
    content: str
    source: str  # file path or "<inline>" for messages
    instances: tuple[str, ...] = ()  # instance names for templates
    global_: bool = False
    state: str = "launched"
    conflicts: tuple[str, ...] = ()
    machine_of: str | None = None
    machine_id: str | None = None
    metadata: tuple[tuple[str, tuple[str, ...]], ...] = ()
    sidekick: Sidekick | None = None
    max_unavailable: int = 1  # instances replaced at once when the unit file changes

    @property
    def unit_names(self) -> tuple[str, ...]:
        if not self.instances:
            return (self.name,)
        prefix, suffix = self.name.split("@", 1)
        return tuple(f"{prefix}@{i}{suffix}" for i in self.instances)


@dataclass(frozen=True)
class Cluster:
    name: str
    source: str  # path of the cluster file
    provider: str
    network: ipaddress.IPv4Network
    nodes: tuple[Node, ...]
    etcd: EtcdSpec
    fleet: FleetSpec
    flannel: FlannelSpec | None = None
    vagrant: VagrantSettings = field(default_factory=VagrantSettings)
    ssh_authorized_keys: tuple[str, ...] = ()
    units: tuple[UnitSet, ...] = ()
    tls: bool = True  # mutual TLS for etcd (clients and peers)

    @property
    def etcd_scheme(self) -> str:
        return "https" if self.tls else "http"

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    # Cached: renderers ask once per node, and a 1,000-node cluster must not
    # pay a scan of every node for each of them.
    @cached_property
    def members(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.etcd_role is EtcdRole.MEMBER)

    @cached_property
    def discovery_node(self) -> Node | None:
        return next((n for n in self.nodes if n.etcd_role is EtcdRole.DISCOVERY), None)

    @cached_property
    def initial_cluster(self) -> str:
        """etcd's `initial-cluster`: every member's name and peer URL."""
        return ",".join(f"{m.name}={self.etcd_scheme}://{m.ip}:{self.etcd.peer_port}"
                        for m in self.members)


def dashed(key: str) -> str:
    """A passed-through key as the template writes it, in CoreOS cloud-config's dashed
    style (`peer_heartbeat_interval` -> `peer-heartbeat-interval`)."""
    return key.replace("_", "-")
