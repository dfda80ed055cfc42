"""Each node's cloud-config as data: the single truth the template renders.

`node_cloud_config` is pure: cluster model + resolved discovery in, a plain
dict out, exactly what the rendered `user-data-N` must parse back to. Key
names follow CoreOS cloud-config's style (dashes under etcd2 and fleet), as
coreos-cloudinit reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

from provision.pki import CA_NAME, NodeTLS, node_file
from provision.spec.discovery import Resolved, mode_of
from provision.spec.model import (
    SUBSTITUTION_PRIVATE,
    SUBSTITUTION_PUBLIC,
    Cluster,
    EtcdRole,
    Node,
    NodeUnit,
    WriteFile,
    dashed,
)
from provision.userdata.substitution import pre_substitute

NETWORK_DROP_IN = "50-network-config.conf"


@dataclass(frozen=True)
class Addresses:
    private: str
    public: str
    peer_host: str


def addresses(cluster: Cluster, node: Node) -> Addresses:
    """The node's addresses as the cloud-config spells them: CoreOS's variables.

    `--substitute` replaces them afterwards, all at once, the way boot does.
    """
    private, public = SUBSTITUTION_PRIVATE, SUBSTITUTION_PUBLIC
    return Addresses(private, public, mode_of(cluster).peer_host(cluster, node) or private)


def member_client_urls(cluster: Cluster) -> list[str]:
    return [f"{cluster.etcd_scheme}://{n.ip}:{cluster.etcd.client_port}"
            for n in cluster.members]


# Mutual TLS: where each certificate lives on the node, the keys that name them.
ETCD_FILE_OWNER = "etcd:etcd"  # etcd2.service runs as user etcd (CoreOS, Debian)


def etcd2_tls_settings() -> dict:
    return {
        "cert-file": node_file("server"), "key-file": node_file("server", key=True),
        "trusted-ca-file": node_file(CA_NAME), "client-cert-auth": True,
        "peer-cert-file": node_file("peer"), "peer-key-file": node_file("peer", key=True),
        "peer-trusted-ca-file": node_file(CA_NAME), "peer-client-cert-auth": True,
    }


def client_tls_settings() -> dict:
    """fleet's (and flannel's) names for the node's client certificate."""
    return {"etcd-cafile": node_file(CA_NAME), "etcd-certfile": node_file("fleetd"),
            "etcd-keyfile": node_file("fleetd", key=True)}


def tls_write_files(tls: NodeTLS) -> list[WriteFile]:
    files = [WriteFile(node_file(CA_NAME), tls.ca_pem, permissions="0644", owner="root")]
    for kind, issued, owner in (("server", tls.server, ETCD_FILE_OWNER),
                                ("peer", tls.peer, ETCD_FILE_OWNER),
                                ("fleetd", tls.fleetd, "root")):
        files.append(WriteFile(node_file(kind), issued.cert_pem, permissions="0600",
                               owner=owner))
        files.append(WriteFile(node_file(kind, key=True), issued.key_pem, permissions="0600",
                               owner=owner))
    return files


def etcd2_section(cluster: Cluster, node: Node, disc: Resolved, addr: Addresses) -> dict:
    etcd = cluster.etcd
    cp, pp = etcd.client_port, etcd.peer_port
    # The discovery etcd only bootstraps the members and holds nothing of fleet's; it
    # stays plain http because etcd's discovery client shows no certificate and trusts
    # only the system's CAs.
    tls = cluster.tls and node.etcd_role is not EtcdRole.DISCOVERY
    scheme = "https" if tls else "http"
    section: dict = {"name": node.name}
    if node.etcd_role is EtcdRole.DISCOVERY:
        section["advertise-client-urls"] = f"http://{addr.public}:{cp}"
        section["listen-client-urls"] = f"http://0.0.0.0:{cp}"
    elif node.etcd_role is EtcdRole.PROXY:
        section["proxy"] = "on"
        section["listen-client-urls"] = f"{scheme}://0.0.0.0:{cp}"
    else:
        section["advertise-client-urls"] = f"{scheme}://{addr.public}:{cp}"
        section["initial-advertise-peer-urls"] = f"{scheme}://{addr.peer_host}:{pp}"
        section["listen-client-urls"] = f"{scheme}://0.0.0.0:{cp}"
        section["listen-peer-urls"] = f"{scheme}://{addr.private}:{pp}"
    if tls:
        section.update(etcd2_tls_settings())

    if node.etcd_role is not EtcdRole.DISCOVERY:
        section.update(mode_of(cluster).etcd2(cluster, node, disc))
    for key, value in etcd.settings + node.etcd2_settings:
        section[dashed(key)] = value
    return section


def fleet_section(cluster: Cluster, node: Node, addr: Addresses) -> dict:
    fleet = cluster.fleet
    public_ip = fleet.public_ip.replace(SUBSTITUTION_PUBLIC, addr.public).replace(
        SUBSTITUTION_PRIVATE, addr.private)
    section: dict = {"public-ip": public_ip}
    if node.metadata:
        section["metadata"] = node.metadata_text
    if fleet.etcd_servers:
        servers = list(fleet.etcd_servers)
    elif node.etcd_role is EtcdRole.DISCOVERY:
        # The discovery etcd is not part of the cluster; fleet must use the members.
        servers = member_client_urls(cluster)
    else:
        # Its own member (or proxy) first, then every other member: fleetd fails over
        # between them, so a node whose etcd dies keeps its fleet (fault suite: with only
        # its own member it lost its machine while fail-static kept its units running).
        scheme = cluster.etcd_scheme
        own = f"{scheme}://{addr.private}:{cluster.etcd.client_port}"
        servers = [own] + [f"{scheme}://{m.ip}:{cluster.etcd.client_port}"
                           for m in cluster.members if m.name != node.name]
    section["etcd-servers"] = ",".join(servers)
    if cluster.tls:
        section.update(client_tls_settings())
    if fleet.etcd_key_prefix:
        section["etcd-key-prefix"] = fleet.etcd_key_prefix
    if fleet.agent_ttl:
        section["agent-ttl"] = fleet.agent_ttl
    if fleet.engine_reconcile_interval is not None:
        section["engine-reconcile-interval"] = fleet.engine_reconcile_interval
    for key, value in node.fleet_settings:
        section[dashed(key)] = value
    return section


def flannel_section(cluster: Cluster, node: Node, addr: Addresses) -> dict | None:
    flannel = cluster.flannel
    if flannel is None:
        return None
    section: dict = {}
    if flannel.interface:
        section["interface"] = flannel.interface.replace(SUBSTITUTION_PUBLIC, addr.public).replace(
            SUBSTITUTION_PRIVATE, addr.private)
    if node.etcd_role is EtcdRole.DISCOVERY:
        section["etcd-endpoints"] = ",".join(member_client_urls(cluster))
    elif cluster.tls:  # flannel's default endpoint is plain http on 127.0.0.1
        section["etcd-endpoints"] = f"https://{addr.private}:{cluster.etcd.client_port}"
    if cluster.tls:
        section.update(client_tls_settings())
    if flannel.etcd_prefix != "/coreos.com/network":
        section["etcd-prefix"] = flannel.etcd_prefix
    return section


def network_config_command(cluster: Cluster) -> str | None:
    """The drop-in line that stores flannel's network config in etcd, quoted for systemd."""
    flannel = cluster.flannel
    if flannel is None or flannel.config_json is None:
        return None
    # systemd unquotes Exec lines itself; inside single quotes it honours
    # backslash escapes, so escaping \ and ' keeps any JSON value intact.
    quoted = flannel.config_json.replace("\\", "\\\\").replace("'", "\\'")
    return f"ExecStartPre=/usr/bin/etcdctl set {flannel.etcd_prefix}/config '{quoted}'"


def _unit_dict(unit: NodeUnit) -> dict:
    entry: dict = {"name": unit.name}
    for key in ("command", "enable", "mask", "runtime", "content"):
        value = getattr(unit, key)
        if value is not None:
            entry[key] = value
    if unit.drop_ins:
        entry["drop-ins"] = [{"name": d.name, "content": d.content} for d in unit.drop_ins]
    return entry


def system_units(cluster: Cluster) -> list[NodeUnit]:
    from provision.spec.model import DropIn

    units = [NodeUnit("etcd2.service", command="start"), NodeUnit("fleet.service", command="start")]
    if cluster.flannel is not None:
        command = network_config_command(cluster)
        drop_ins = (DropIn(NETWORK_DROP_IN, f"[Service]\n{command}\n"),) if command else ()
        units.append(NodeUnit("flanneld.service", command="start", drop_ins=drop_ins))
    return units


def _merge_units(system: list[NodeUnit], declared: tuple[NodeUnit, ...]) -> list[NodeUnit]:
    """Declared node units follow the system ones; one with a system unit's name replaces it."""
    units = list(system)
    for unit in declared:
        same = next((i for i, u in enumerate(units) if u.name == unit.name), None)
        if same is None:
            units.append(unit)
        else:
            units[same] = unit
    return units


def _file_dict(wf: WriteFile) -> dict:
    entry: dict = {"path": wf.path}
    for key in ("permissions", "owner", "encoding"):
        value = getattr(wf, key)
        if value is not None:
            entry[key] = value
    entry["content"] = wf.content
    return entry


def node_write_files(cluster: Cluster, node: Node, tls: NodeTLS | None = None
                     ) -> list[WriteFile]:
    files = mode_of(cluster).write_files(cluster)
    if tls is not None:
        files += tls_write_files(tls)
    return files + list(node.write_files)


def node_cloud_config(cluster: Cluster, node: Node, disc: Resolved,
                      substitute: bool = False, tls: NodeTLS | None = None) -> dict:
    """`tls`: the node's certificates, required when the cluster uses TLS."""
    if cluster.tls and tls is None:
        raise ValueError(f"cluster {cluster.name} uses TLS: rendering {node.name} needs its "
                         "certificates (provision.pki.ensure)")
    addr = addresses(cluster, node)
    coreos: dict = {
        "etcd2": etcd2_section(cluster, node, disc, addr),
        "fleet": fleet_section(cluster, node, addr),
    }
    flannel = flannel_section(cluster, node, addr)
    if flannel is not None:
        coreos["flannel"] = flannel
    coreos["units"] = [_unit_dict(u) for u in _merge_units(system_units(cluster), node.node_units)]
    config: dict = {"hostname": node.name}
    if cluster.ssh_authorized_keys:
        config["ssh_authorized_keys"] = list(cluster.ssh_authorized_keys)
    config["coreos"] = coreos
    files = node_write_files(cluster, node, tls if cluster.tls else None)
    if files:
        config["write_files"] = [_file_dict(f) for f in files]
    if substitute:
        # coreos-cloudinit substitutes the variables anywhere in the user-data, file and
        # unit contents included; --substitute does it ahead of boot, keeping what boot
        # keeps literal (an escaped `\$private_ipv4`) escaped for boot to unescape.
        values = {SUBSTITUTION_PRIVATE: str(node.ip), SUBSTITUTION_PUBLIC: str(node.ip)}
        config = _substituted(config, values)
    return config


def _substituted(value: object, values: dict[str, str]) -> object:
    if isinstance(value, str):
        return pre_substitute(value, values)
    if isinstance(value, dict):
        return {k: _substituted(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_substituted(v, values) for v in value]
    return value
