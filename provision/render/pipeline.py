"""Cluster model → the files of a rendered cluster (pure: text in memory).

`render_cluster` returns every file's name, text and mode; `provision.render.output`
writes them atomically. Layout and wording of the cloud-configs live in the
Jinja2 templates under `templates/`; values come from
`provision.render.cloudconfig`, which the tests compare the output against.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2

from provision.pki import ClusterPKI
from provision.render.cloudconfig import (
    ResolvedDiscovery,
    member_client_urls,
    node_cloud_config,
)
from provision.spec.model import Cluster, DiscoveryMode, EtcdRole
from provision.yamltext import block, scalar

MANIFEST = "manifest.json"
ZONE_FILE = "etcd-srv.zone"
MANIFEST_VERSION = 2
# Beside the manifest: what every Vagrant machine installs (provision/box/payload.py).
VAGRANT_PAYLOAD = "vagrant-payload.tar"
GENERATOR = "provision"


@dataclass(frozen=True)
class RenderedFile:
    name: str
    text: str
    mode: int = 0o644


def templates_dir() -> Path:
    override = os.environ.get("PROVISION_TEMPLATES")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "templates"


@lru_cache(maxsize=4)
def _environment(directory: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["scalar"] = scalar
    env.filters["block"] = block
    return env


def _template(name: str) -> jinja2.Template:
    return _environment(str(templates_dir())).get_template(name)


def node_roles(role: EtcdRole) -> list[str]:
    return [role.value, "fleet"]


def render_cluster(cluster: Cluster, disc: ResolvedDiscovery, *, substitute: bool = False,
                   pki: ClusterPKI | None = None) -> list[RenderedFile]:
    """Every file of the rendered cluster: user-data-N, the manifest, the zone snippet.
    `pki`: the cluster's certificates (`provision.pki.ensure`), needed with TLS."""
    cloud_config = _template("cloud-config.yaml.j2")
    files = []
    for node in cluster.nodes:
        tls = pki.node(node.name) if cluster.tls and pki is not None else None
        config = node_cloud_config(cluster, node, disc, substitute, tls)
        text = cloud_config.render(cluster=cluster, node=node, config=config)
        files.append(RenderedFile(node.user_data_name, text, 0o600))
    if cluster.etcd.discovery.mode is DiscoveryMode.DNS_SRV:
        files.append(RenderedFile(ZONE_FILE, render_zone(cluster)))
    # 0600: a discovery token in it lets anyone join nodes to the cluster.
    files.append(RenderedFile(MANIFEST, json.dumps(manifest(cluster, disc, substitute),
                                                   indent=2) + "\n", 0o600))
    return files


def render_zone(cluster: Cluster) -> str:
    return _template("etcd-srv.zone.j2").render(
        cluster=cluster, domain=cluster.etcd.discovery.domain, members=cluster.members,
        ssl="-ssl" if cluster.tls else "",
        peer_port=cluster.etcd.peer_port, client_port=cluster.etcd.client_port)


def manifest(cluster: Cluster, disc: ResolvedDiscovery, substitute: bool) -> dict:
    """What the Vagrantfile and the local provider need to know about each node."""
    etcd = cluster.etcd
    discovery: dict = {"mode": etcd.discovery.mode.value, "size": len(cluster.members)}
    if etcd.discovery.mode in (DiscoveryMode.TOKEN, DiscoveryMode.CUSTOM):
        discovery["url"] = disc.url
    if etcd.discovery.mode is DiscoveryMode.CUSTOM:
        discovery["node"] = etcd.discovery.node
        discovery["size_key_url"] = f"{disc.url}/_config/size"
    if etcd.discovery.mode is DiscoveryMode.DNS_SRV:
        discovery["domain"] = etcd.discovery.domain
        discovery["dns_server"] = etcd.discovery.dns_server
        discovery["zone_file"] = ZONE_FILE
    return {
        "generator": GENERATOR,
        "version": MANIFEST_VERSION,
        "cluster": cluster.name,
        "source": str(Path(cluster.source).resolve()),
        "provider": cluster.provider,
        "network": str(cluster.network),
        "substituted": substitute,
        "tls": cluster.tls,
        "etcd": {
            "members": list(etcd.members),
            "client_port": etcd.client_port,
            "peer_port": etcd.peer_port,
            "endpoints": member_client_urls(cluster),
            "discovery": discovery,
        },
        "nodes": [
            {
                "index": node.index,
                "name": node.name,
                "hostname": node.name,
                "ip": str(node.ip),
                "roles": node_roles(node.etcd_role),
                "user_data": node.user_data_name,
                "metadata": dict(node.metadata),
                "vagrant": {
                    "box": node.vagrant.box,
                    "box_url": node.vagrant.box_url,
                    "box_version": node.vagrant.box_version,
                    "cpus": node.vagrant.cpus,
                    "memory": node.vagrant.memory,
                    "gui": node.vagrant.gui,
                    "lxc_container": lxc_container_name(cluster, node.name),
                },
            }
            for node in cluster.nodes
        ],
        "units": [name for unit_set in cluster.units for name in unit_set.unit_names],
        "vagrant": vagrant_settings(cluster),
    }


def lxc_container_name(cluster: Cluster, node: str) -> str:
    """The LXC container of a node: names are host-wide, so the cluster's name is in it."""
    return f"{cluster.name}-{node}"


def vagrant_settings(cluster: Cluster) -> dict:
    """Cluster-wide settings of the Vagrantfile: the provider to put first, the payload's
    file (beside the manifest) and, for lxc, the bridge the machines' veths join, the
    prefix length of their addresses and the gateway (the network's first address, the
    bridge's own, unless a node has it)."""
    network = cluster.network
    first = network.network_address + 1
    gateway = None if any(n.ip == first for n in cluster.nodes) else str(first)
    return {"provider": cluster.vagrant.provider, "payload": VAGRANT_PAYLOAD,
            "lxc": {"bridge": cluster.vagrant.bridge, "prefix_length": network.prefixlen,
                    "gateway": gateway}}
