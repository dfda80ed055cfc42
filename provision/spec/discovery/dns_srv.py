"""dns-srv: members find each other through `_etcd-server(-ssl)._tcp.<domain>` SRV
records; each advertises `<node>.<domain>` to its peers, so its certificates name it.
The records are rendered beside the user-data (`etcd-srv.zone`) for a DNS server to
serve; `dns_server` becomes every node's resolver."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from provision.spec.discovery.base import (
    DISCOVERY_PATH,
    BootNeeds,
    DiscoveryMode,
    DiscoveryRecord,
    DnsZone,
    ReportError,
    Resolved,
)
from provision.spec.discovery.static import CLUSTER_TOKEN
from provision.spec.model import Cluster, EtcdRole, Node, WriteFile

ZONE_FILE = "etcd-srv.zone"
ZONE_TEMPLATE = "etcd-srv.zone.j2"
_DOMAIN = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                     r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$")


class DnsSrv(DiscoveryMode):
    name = "dns-srv"
    keys: ClassVar = {"domain": {"type": "string"}, "dns_server": {"type": "string"},
                      **CLUSTER_TOKEN}
    recorded = ("domain", "dns_server", "zone_file")
    serves_dns = True

    def validate(self, disc: Mapping[str, Any], names: list[str],
                 error: ReportError) -> str | None:
        domain = disc.get("domain")
        if not domain:
            error(DISCOVERY_PATH, "dns-srv discovery needs `etcd.discovery.domain`: the DNS "
                                  "domain holding the _etcd-server._tcp SRV records")
        elif not _DOMAIN.match(domain):
            error(DISCOVERY_PATH + ("domain",), f"`etcd.discovery.domain`: {domain!r} is not "
                                                "a DNS domain name")
        if "dns_server" in disc:
            try:
                ipaddress.ip_address(disc["dns_server"])
            except ValueError:
                error(DISCOVERY_PATH + ("dns_server",), "`etcd.discovery.dns_server` must be "
                                                        "the IP address of the DNS server")
        return None

    def peer_host(self, cluster: Cluster, node: Node) -> str | None:
        return f"{node.name}.{cluster.etcd.discovery.domain}"

    def etcd2(self, cluster: Cluster, node: Node, resolved: Resolved) -> dict:
        section: dict = {"discovery-srv": cluster.etcd.discovery.domain}
        if node.etcd_role is EtcdRole.MEMBER:
            section["initial-cluster-token"] = cluster.etcd.discovery.cluster_token
            section["initial-cluster-state"] = "new"
        return section

    def write_files(self, cluster: Cluster) -> list[WriteFile]:
        server = cluster.etcd.discovery.dns_server
        if not server:
            return []
        return [WriteFile("/etc/resolv.conf", f"nameserver {server}\n", permissions="0644",
                          owner="root")]

    def rendered_files(self, cluster: Cluster,
                       render: Callable[[str, dict], str]) -> list[tuple[str, str]]:
        return [(ZONE_FILE, render(ZONE_TEMPLATE, zone_context(cluster)))]

    def _record_fields(self, cluster: Cluster, resolved: Resolved) -> dict:
        disc = cluster.etcd.discovery
        return {"domain": disc.domain, "dns_server": disc.dns_server, "zone_file": ZONE_FILE}

    def dns_names(self, cluster: Cluster, node: Node) -> tuple[str, ...]:
        domain = cluster.etcd.discovery.domain
        return (f"{node.name}.{domain}",) if domain else ()

    def boot_needs(self, record: DiscoveryRecord) -> BootNeeds:
        assert record.zone_file is not None and record.domain is not None
        return BootNeeds(dns=DnsZone(record.zone_file, record.domain, record.dns_server))


def zone_context(cluster: Cluster) -> dict:
    """What the zone template names: the members, their ports, the SRV records' suffix."""
    return {"cluster": cluster, "domain": cluster.etcd.discovery.domain,
            "members": cluster.members, "ssl": "-ssl" if cluster.tls else "",
            "peer_port": cluster.etcd.peer_port, "client_port": cluster.etcd.client_port}


MODE = DnsSrv()
