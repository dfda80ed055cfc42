"""The DNS server of a dns-srv nspawn cluster: a dnsmasq inside the cluster's network
namespace, on an extra address of its bridge, serving the rendered `etcd-srv.zone`.

The machines' user-data points their /etc/resolv.conf at the YAML's `dns_server` (the
zone file's records and the dnsmasq flags are the local provider's, `local/dns.py`), so
each etcd member finds its peers through `_etcd-server(-ssl)._tcp` records without any
packet leaving the namespace. dnsmasq outlives the `provision up` that started it (a
session of its own; its pid file in the cluster's state directory says which process
it is), and `down` stops it before the namespace goes.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from provision.box.netns import NETNS_DIR
from provision.errors import OperationFailed
from provision.providers.local import dns
from provision.render.manifest import Manifest

POLL_S = 0.05
PID_FILE = "dnsmasq.pid"
LOG_FILE = "dnsmasq.log"


def requirements_problem() -> str | None:
    if shutil.which("dnsmasq") is None:
        return ("dns-srv discovery on nspawn machines needs dnsmasq on the host to serve "
                "the SRV records inside the cluster's namespace (Debian: apt-get install "
                "dnsmasq-base); or use static discovery")
    return None


def address_problem(network: ipaddress.IPv4Network, node_ips: set[str], bridge_ip: str,
                    wanted: str | None) -> str | None:
    """Why the YAML's `dns_server` cannot be where the machines find the SRV records."""
    if wanted and (ipaddress.ip_address(wanted) not in network or wanted in node_ips
                   or wanted == bridge_ip or wanted in (str(network.network_address),
                                                        str(network.broadcast_address))):
        return (f"etcd.discovery.dns_server {wanted} must be a free address of network.cidr "
                f"{network} (not a node's, nor the bridge's {bridge_ip}): the cluster's "
                "dnsmasq serves the SRV records there, inside its network namespace; or "
                "leave it out to let provision pick one")
    return None


def address(manifest: Manifest, bridge_ip: str) -> str:
    """Where dnsmasq listens: the rendered `dns_server` (what the machines' resolv.conf
    names), else the network's highest address no machine uses."""
    taken = {n.ip for n in manifest.nodes} | {bridge_ip}
    return dns.dns_address(manifest.network, taken, manifest.etcd.discovery.dns_server)


@dataclass(frozen=True)
class NameServer:
    namespace: str
    bridge: str
    address: str                  # on the bridge, with the network's prefix
    state_dir: Path               # the cluster's: pid file and log
    domain: str
    records: dns.Records

    @property
    def pid_file(self) -> Path:
        return self.state_dir / PID_FILE

    def argv(self) -> list[str]:
        ip = str(ipaddress.IPv4Interface(self.address).ip)
        return ["nsenter", f"--net={NETNS_DIR / self.namespace}", "--",
                *dns.dnsmasq_argv(shutil.which("dnsmasq") or "dnsmasq", ip, self.domain,
                                  self.records, str(self.pid_file))]

    def pid(self) -> int | None:
        """dnsmasq's pid while it is this cluster's dnsmasq (its command line names the
        pid file: a recycled pid never does)."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return None
        return pid if f"--pid-file={self.pid_file}".encode() in cmdline else None

    def start(self, deadline: float) -> bool:
        """The address on the bridge and dnsmasq listening on it (nothing if it runs
        already); True when it was started now."""
        if self.pid() is not None:
            return False
        added = subprocess.run(["ip", "-n", self.namespace, "address", "replace", self.address,
                                "dev", self.bridge], capture_output=True, text=True,
                               stdin=subprocess.DEVNULL, timeout=30, check=False)
        if added.returncode != 0:
            raise OperationFailed(f"cannot put the DNS address {self.address} on "
                                  f"{self.bridge}: {added.stderr.strip()}")
        self.pid_file.unlink(missing_ok=True)
        with open(self.state_dir / LOG_FILE, "ab") as log:
            process = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        # dnsmasq writes its pid file once its sockets are bound: then it answers.
        while self.pid() is None:
            if process.poll() is not None:
                raise OperationFailed(f"dnsmasq exited with status {process.returncode}: "
                                      + _tail(self.state_dir / LOG_FILE))
            if time.monotonic() > deadline:
                self.stop()
                raise OperationFailed("dnsmasq did not start in time: "
                                      + _tail(self.state_dir / LOG_FILE))
            time.sleep(POLL_S)
        return True

    def stop(self, timeout: float = 10) -> None:
        pid = self.pid()
        if pid is not None:
            _terminate(pid, timeout)
        self.pid_file.unlink(missing_ok=True)


def _terminate(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    sig = signal.SIGTERM
    while True:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if _gone(pid):
            return
        if time.monotonic() > deadline:
            sig = signal.SIGKILL
        time.sleep(POLL_S)


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " / ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
