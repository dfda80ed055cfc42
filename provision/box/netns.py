"""A network namespace holding a cluster's bridge, and commands run inside it the way
LXC needs them.

vagrant-lxc machines live on a bridge inside a namespace of their own, so their private
addresses (e.g. 172.17.8.0/24) exist nowhere on the host's real interfaces. Every
vagrant and lxc command for them must run inside that namespace: LXC's command socket
is an abstract unix socket, which belongs to a network namespace (from outside,
running containers look STOPPED). Neither `ip netns exec` (it mounts a fresh /sys,
without /sys/fs/cgroup: lxc-start "Failed to setup cgroup limits") nor `nsenter --net`
(the host's /sys: lxc-start cannot see the bridge in /sys/class/net) is enough:
`in_namespace()` runs a command with the namespace's own sysfs AND the host's cgroup
mounts, in a private mount namespace, so nothing is left mounted on the host.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from provision.errors import OperationFailed

NETNS_DIR = Path("/run/netns")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# The cgroup LXC's monitor moves itself into, shared by every container and left
# behind (empty) after the last one.
LXC_LEFTOVER_CGROUPS = ("lxc.pivot",)

# $1: an empty directory to park the host's cgroup tree on while /sys is replaced.
_REMOUNT_SYS = (
    'keep=$(mktemp -d /tmp/provision-netns-cgroup.XXXXXX)\n'
    'mount --rbind /sys/fs/cgroup "$keep"\n'
    'mount -t sysfs -o nosuid,nodev,noexec sysfs /sys\n'
    'mount --rbind "$keep" /sys/fs/cgroup\n'
    'umount -l "$keep"\n'
    'rmdir "$keep"\n'
    'exec "$@"\n'
)


def in_namespace(namespace: str, argv: Sequence[str]) -> list[str]:
    """The command line running `argv` inside network namespace `namespace` with that
    namespace's /sys and the host's /sys/fs/cgroup (what lxc-start needs)."""
    return ["nsenter", f"--net={NETNS_DIR / namespace}", "unshare", "--mount",
            "--propagation", "slave", "sh", "-ec", _REMOUNT_SYS, "sh", *argv]


@dataclass(frozen=True)
class BridgeNetwork:
    """Namespace `namespace` with bridge `bridge` carrying `address` (e.g. the cluster
    network's first address with its prefix: 172.17.8.1/24, the machines' gateway)."""

    namespace: str
    bridge: str
    address: ipaddress.IPv4Interface

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.namespace

    def exists(self) -> bool:
        return self.path.exists()

    def create(self) -> None:
        """The namespace (loopback up) and its bridge, up with its address. A namespace
        left half-made by a failure is removed again."""
        if self.exists():
            raise OperationFailed(f"network namespace {self.namespace} exists already; "
                                  f"remove it first (ip netns del {self.namespace})")
        _ip("netns", "add", self.namespace)
        try:
            _ip("-n", self.namespace, "link", "set", "lo", "up")
            _ip("-n", self.namespace, "link", "add", self.bridge, "address",
                bridge_mac(self.namespace), "type", "bridge")
            _ip("-n", self.namespace, "address", "add", str(self.address), "dev", self.bridge)
            _ip("-n", self.namespace, "link", "set", self.bridge, "up")
        except BaseException:
            self.delete()
            raise

    def links(self) -> list[str]:
        """The names of the namespace's network interfaces."""
        out = _ip("-n", self.namespace, "-brief", "link")
        return [line.split()[0].split("@")[0] for line in out.splitlines() if line.strip()]

    def delete(self) -> None:
        """The namespace goes, and every interface in it (the bridge, veths)."""
        if self.exists():
            _ip("netns", "del", self.namespace)


def bridge_mac(namespace: str) -> str:
    """A fixed, locally administered address for the bridge. Left to the kernel, a bridge
    takes its lowest port's address and changes it when that machine's port goes, leaving
    the other machines' ARP entries for the gateway and the DNS address pointing nowhere
    until they expire."""
    digest = hashlib.sha256(namespace.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL, timeout=60)
    if done.returncode != 0:
        raise OperationFailed(f"ip {' '.join(args)} failed (exit {done.returncode}): "
                              f"{done.stderr.strip()}")
    return done.stdout


def sweep_lxc_cgroups(root: Path = CGROUP_ROOT) -> list[Path]:
    """Remove the empty cgroups LXC leaves after its last container; a cgroup still in
    use (another container of this host) is not empty and stays. Returns those removed."""
    removed = []
    for name in LXC_LEFTOVER_CGROUPS:
        for directory in sorted(root.glob(f"*/{name}")):
            for sub in sorted(directory.rglob("*"), reverse=True):
                if sub.is_dir() and _try_rmdir(sub):
                    removed.append(sub)
            if _try_rmdir(directory):
                removed.append(directory)
    return removed


def _try_rmdir(path: Path) -> bool:
    try:
        os.rmdir(path)
        return True
    except OSError:
        return False
