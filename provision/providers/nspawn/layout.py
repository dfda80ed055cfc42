"""What an nspawn cluster's machines are called, where their files go, and how nspawn
is run for them (pure: data in, data out).

Names are host-wide (cgroups, nspawn's machine name, the namespace), so they carry the
cluster's name. nspawn names a machine's host-side veth `vb-<machine>`, hashed when that
is longer than 15 characters; nothing here needs the veth's name (it goes with the
machine's network namespace).
"""

from __future__ import annotations

import hashlib
import ipaddress
import uuid
from dataclasses import dataclass
from pathlib import Path

from provision.machine.seed import seed_files

NAMESPACE_PREFIX = "pvn-"
BRIDGE = "br0"  # inside the cluster's own namespace: no other bridge can be called that
MACHINE_PREFIX = "pvn-"
UUID_NAMESPACE = uuid.UUID("5f0c1a52-6a3e-4f55-9d8e-6e7370617760")
NETWORK_FILE = "/etc/systemd/network/10-provision-host0.network"
HOSTS_FILE = "/etc/hosts"
FLEET_MACHINE_ID_FILE = "/var/lib/fleet/machine-id"
# fleet.service puts it at /var/run/fleet.sock; /var/run is a symlink to /run, which the
# host must not follow through /proc/<pid>/root (it would resolve against its own root).
FLEET_API_SOCKET = "/run/fleet.sock"
NAMESPACE_MAX = 15 + len(NAMESPACE_PREFIX)  # keep `ip netns` names short and readable


def namespace(cluster: str) -> str:
    """The network namespace of a cluster (a long name is shortened with a hash)."""
    name = NAMESPACE_PREFIX + cluster
    if len(name) <= NAMESPACE_MAX:
        return name
    digest = hashlib.sha256(cluster.encode()).hexdigest()[:6]
    return f"{name[:NAMESPACE_MAX - 7]}-{digest}"


def machine_name(cluster: str, node: str) -> str:
    """nspawn's machine name (and our cgroup subtrees' name) for a node."""
    return f"{MACHINE_PREFIX}{cluster}-{node}"


def machine_uuid(cluster: str, node: str) -> uuid.UUID:
    """A stable /etc/machine-id per node: the same machine after every power-off."""
    return uuid.uuid5(UUID_NAMESPACE, f"{cluster}/{node}")


def fleet_machine_id(cluster: str, node: str) -> str:
    """fleet's machine id of a node: its /etc/machine-id, as fleet on CoreOS took it (units
    name their machine with systemd's %m). Seeded into fleet's state directory before the
    first boot, so fleetd does not make one of its own."""
    return machine_uuid(cluster, node).hex


def gateway(network: ipaddress.IPv4Network, taken: set[str]) -> ipaddress.IPv4Interface:
    """The bridge's address: the network's first host unless a node has it, else its last."""
    for host in (network.network_address + 1, network.broadcast_address - 1):
        if str(host) not in taken:
            return ipaddress.IPv4Interface(f"{host}/{network.prefixlen}")
    raise ValueError(f"no free address in {network} for the bridge")


@dataclass(frozen=True)
class MachineSpec:
    cluster: str
    node: str
    ip: str
    network: ipaddress.IPv4Network
    bridge_ip: str

    @property
    def name(self) -> str:
        return machine_name(self.cluster, self.node)

    @property
    def uuid(self) -> uuid.UUID:
        return machine_uuid(self.cluster, self.node)

    @property
    def fleet_id(self) -> str:
        return fleet_machine_id(self.cluster, self.node)


def network_file(spec: MachineSpec) -> str:
    """systemd-networkd's config of the machine's end of the veth (sorts before systemd's
    own DHCP file for host0)."""
    return ("[Match]\nName=host0\n\n[Network]\n"
            f"Address={spec.ip}/{spec.network.prefixlen}\nGateway={spec.bridge_ip}\n"
            "LinkLocalAddressing=no\nIPv6AcceptRA=no\n")


def hosts_file(node: str, peers: list[tuple[str, str]]) -> str:
    """/etc/hosts: localhost, this node's name (sudo resolves it) and the cluster's nodes."""
    lines = ["127.0.0.1\tlocalhost", "::1\t\tlocalhost ip6-localhost ip6-loopback",
             f"127.0.1.1\t{node}"]
    lines += [f"{ip}\t{name}" for name, ip in peers if name != node]
    return "\n".join(lines) + "\n"


def first_boot_files(spec: MachineSpec, peers: list[tuple[str, str]]
                     ) -> dict[str, tuple[bytes, int]]:
    """Files written into the machine's upper directory before its first boot only."""
    return {
        NETWORK_FILE: (network_file(spec).encode(), 0o644),
        HOSTS_FILE: (hosts_file(spec.node, peers).encode(), 0o644),
        FLEET_MACHINE_ID_FILE: (f"{spec.fleet_id}\n".encode(), 0o644),
    }


def every_boot_files(spec: MachineSpec, user_data: str, nameserver: str | None = None
                     ) -> dict[str, tuple[bytes, int]]:
    """Files written before every boot: the user-data the boot unit applies, its addresses,
    and, for a dns-srv cluster, the resolver naming the cluster's DNS server (the image's
    names none; a user-data that writes /etc/resolv.conf names the same one)."""
    files = seed_files(user_data, spec.ip, hostname=spec.node)
    if nameserver is not None:
        files["/etc/resolv.conf"] = (f"nameserver {nameserver}\n".encode(), 0o644)
    return files


def nspawn_argv(spec: MachineSpec, rootfs: Path, upper: Path, netns_path: Path) -> list[str]:
    """systemd-nspawn booting the machine, run inside the cluster's network namespace (so
    the bridge it joins is that namespace's). `ip netns exec` cannot be used: it mounts a
    /sys without /sys/fs/cgroup. machined is not asked (`--register=no --keep-unit`): the
    host's PID 1 need not be systemd."""
    return [
        "nsenter", f"--net={netns_path}", "--",
        "systemd-nspawn", "--quiet", f"--directory={rootfs}", "--read-only",
        f"--overlay={rootfs}:{upper}:/", f"--machine={spec.name}", f"--uuid={spec.uuid}",
        "--boot", "--register=no", "--keep-unit", f"--network-bridge={BRIDGE}",
        "--console=passive", "--link-journal=no", "--resolv-conf=off",
    ]


def overlay_problem(path: Path) -> str | None:
    """nspawn's --overlay splits on ':' and cannot take such a path."""
    if ":" in str(path):
        return f"{path}: the path of a machine's files must not contain ':' (nspawn's --overlay)"
    return None
