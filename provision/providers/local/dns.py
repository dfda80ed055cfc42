"""DNS SRV discovery, for real, on one host: a network namespace and a dnsmasq.

A dns-srv cluster's nodes run inside a network namespace the tool creates
(`pv-<cluster>`). Its `/etc/netns/<ns>/resolv.conf` (which `ip netns exec`
mounts over /etc/resolv.conf) points at a dnsmasq in the same namespace that
serves the rendered records of `etcd-srv.zone` (`--srv-host`, `--host-record`)
and answers nothing else. That needs root, `ip` and `dnsmasq` (Debian:
dnsmasq-base); without them `requirements_problem` says what is missing.

`zone_records` and `dnsmasq_argv` are pure; the rest touches the host.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from provision.errors import OperationFailed

NETNS_ETC = Path("/etc/netns")


@dataclass(frozen=True)
class Records:
    srv: tuple[tuple[str, str, int, int, int], ...]  # (name, target, port, priority, weight)
    a: tuple[tuple[str, str], ...]  # (host, ip)


def namespace(cluster: str) -> str:
    return f"pv-{cluster}"


def zone_records(text: str) -> Records:
    """SRV and A records of a rendered zone snippet (`name ttl IN type data...` lines)."""
    srv, a = [], []
    for line in text.splitlines():
        line = line.split(";", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if "IN" not in fields:
            continue
        at = fields.index("IN")
        name, kind, data = fields[0].rstrip("."), fields[at + 1].upper(), fields[at + 2:]
        if kind == "SRV" and len(data) == 4:
            priority, weight, port, target = data
            srv.append((name, target.rstrip("."), int(port), int(priority), int(weight)))
        elif kind == "A" and len(data) == 1:
            a.append((name, data[0]))
    return Records(tuple(srv), tuple(a))


def dns_address(network: str, taken: set[str], wanted: str | None) -> str:
    """Where dnsmasq listens: the rendered dns_server if it is in the cluster network and
    free, else the network's highest address no node uses."""
    net = ipaddress.ip_network(network)
    if wanted and ipaddress.ip_address(wanted) in net and wanted not in taken:
        return wanted
    for host in reversed(list(net.hosts())):
        if str(host) not in taken:
            return str(host)
    raise OperationFailed(f"no free address in {network} for the cluster's DNS server")


def dnsmasq_argv(dnsmasq: str, address: str, domain: str, records: Records,
                 pid_file: str) -> tuple[str, ...]:
    argv = [dnsmasq, "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll",
            "--conf-file=/dev/null", f"--pid-file={pid_file}", "--log-facility=-",
            f"--listen-address={address}", "--bind-interfaces", f"--local=/{domain}/"]
    argv += [f"--srv-host={name},{target},{port},{prio},{weight}"
             for name, target, port, prio, weight in records.srv]
    argv += [f"--host-record={host},{ip}" for host, ip in records.a]
    return tuple(argv)


def requirements_problem() -> str | None:
    """What this host lacks for dns-srv local clusters, or None."""
    missing = []
    if os.geteuid() != 0:
        missing.append(f"root (creating a network namespace; you are uid {os.geteuid()})")
    if shutil.which("ip") is None:
        missing.append("the `ip` command (Debian: iproute2)")
    if shutil.which("dnsmasq") is None:
        missing.append("dnsmasq (Debian: apt-get install dnsmasq-base)")
    if not missing:
        return None
    return ("dns-srv discovery runs local nodes in a network namespace with a dnsmasq serving "
            "the SRV records, which needs " + ", ".join(missing) + "; run as root with them "
            "installed, or use static, custom or token discovery")


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)


def exists(ns: str) -> bool:
    return Path("/run/netns", ns).exists()


def create(ns: str, dns_ip: str) -> None:
    """The namespace with loopback up and its resolv.conf (idempotent)."""
    if not exists(ns):
        made = _ip("netns", "add", ns)
        if made.returncode != 0 and not exists(ns):
            raise OperationFailed(f"cannot create network namespace {ns}: "
                                  f"{made.stderr.strip()}")
    up = _ip("-n", ns, "link", "set", "lo", "up")
    if up.returncode != 0:
        raise OperationFailed(f"cannot bring up loopback in {ns}: {up.stderr.strip()}")
    etc = NETNS_ETC / ns
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text(f"nameserver {dns_ip}\n")


def delete(ns: str) -> None:
    if exists(ns):
        _ip("netns", "del", ns)
    shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)


def exec_prefix(ns: str | None) -> list[str]:
    return ["ip", "netns", "exec", ns] if ns else []
