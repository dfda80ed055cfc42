"""Cluster model → the files of a rendered cluster (pure: text in memory).

`render_cluster` returns every file's name, text and mode; `provision.render.output`
writes them atomically. Layout and wording of the cloud-configs live in the
Jinja2 templates under `templates/`; values come from
`provision.render.cloudconfig`, which the tests compare the output against.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2

from provision.pki import ClusterPKI
from provision.render.cloudconfig import member_client_urls, node_cloud_config
from provision.render.manifest import (
    MANIFEST,
    LxcSettings,
    Manifest,
    ManifestEtcd,
    ManifestNode,
    NodeVagrant,
    VagrantCluster,
)
from provision.spec.discovery import Resolved, mode_of
from provision.spec.model import Cluster, EtcdRole
from provision.yamltext import block, scalar

# Beside the manifest: what every Vagrant machine installs (provision/box/payload.py).
VAGRANT_PAYLOAD = "vagrant-payload.tar"


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


def render_cluster(cluster: Cluster, disc: Resolved, *, substitute: bool = False,
                   pki: ClusterPKI | None = None) -> list[RenderedFile]:
    """Every file of the rendered cluster: user-data-N, the manifest, the discovery mode's
    own (dns-srv: the zone snippet). `pki`: the cluster's certificates
    (`provision.pki.ensure`), needed with TLS."""
    cloud_config = _template("cloud-config.yaml.j2")
    files = []
    for node in cluster.nodes:
        tls = pki.node(node.name) if cluster.tls and pki is not None else None
        config = node_cloud_config(cluster, node, disc, substitute, tls)
        text = cloud_config.render(cluster=cluster, node=node, config=config)
        files.append(RenderedFile(node.user_data_name, text, 0o600))
    files += [RenderedFile(name, text) for name, text in mode_of(cluster).rendered_files(
        cluster, lambda template, context: _template(template).render(**context))]
    # 0600: a discovery token in it lets anyone join nodes to the cluster.
    files.append(RenderedFile(MANIFEST, manifest(cluster, disc, substitute).to_json(), 0o600))
    return files


def manifest(cluster: Cluster, disc: Resolved, substitute: bool) -> Manifest:
    """What the Vagrantfile and the providers need to know about the cluster and each node."""
    etcd = cluster.etcd
    return Manifest(
        cluster=cluster.name,
        source=str(Path(cluster.source).resolve()),
        provider=cluster.provider,
        network=str(cluster.network),
        substituted=substitute,
        tls=cluster.tls,
        etcd=ManifestEtcd(
            members=etcd.members, client_port=etcd.client_port, peer_port=etcd.peer_port,
            endpoints=tuple(member_client_urls(cluster)),
            discovery=mode_of(cluster).record(cluster, disc)),
        nodes=tuple(
            ManifestNode(
                index=node.index, name=node.name, hostname=node.name, ip=str(node.ip),
                roles=tuple(node_roles(node.etcd_role)), user_data=node.user_data_name,
                metadata=node.metadata,
                vagrant=NodeVagrant(
                    box=node.vagrant.box, box_url=node.vagrant.box_url,
                    box_version=node.vagrant.box_version, cpus=node.vagrant.cpus,
                    memory=node.vagrant.memory, gui=node.vagrant.gui,
                    lxc_container=lxc_container_name(cluster, node.name)))
            for node in cluster.nodes),
        units=tuple(name for unit_set in cluster.units for name in unit_set.unit_names),
        vagrant=vagrant_settings(cluster),
    )


def lxc_container_name(cluster: Cluster, node: str) -> str:
    """The LXC container of a node: names are host-wide, so the cluster's name is in it."""
    return f"{cluster.name}-{node}"


def vagrant_settings(cluster: Cluster) -> VagrantCluster:
    """Cluster-wide settings of the Vagrantfile: the provider to put first, the payload's
    file (beside the manifest) and, for lxc, the bridge the machines' veths join, the
    prefix length of their addresses and the gateway (the network's first address, the
    bridge's own, unless a node has it)."""
    network = cluster.network
    first = network.network_address + 1
    gateway = None if any(n.ip == first for n in cluster.nodes) else str(first)
    return VagrantCluster(cluster.vagrant.provider, VAGRANT_PAYLOAD,
                          LxcSettings(cluster.vagrant.bridge, network.prefixlen, gateway))
