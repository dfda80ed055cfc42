"""static: every member is listed in `initial-cluster`; nothing to look up."""

from __future__ import annotations

from typing import ClassVar

from provision.spec.discovery.base import DiscoveryMode, Resolved
from provision.spec.model import Cluster, EtcdRole, Node

CLUSTER_TOKEN = {"cluster_token": {"type": "string", "minLength": 1}}


class Static(DiscoveryMode):
    name = "static"
    keys: ClassVar = CLUSTER_TOKEN

    def etcd2(self, cluster: Cluster, node: Node, resolved: Resolved) -> dict:
        member = node.etcd_role is EtcdRole.MEMBER
        section: dict = {}
        if member:
            section["initial-cluster-token"] = cluster.etcd.discovery.cluster_token
        section["initial-cluster"] = cluster.initial_cluster
        if member:
            section["initial-cluster-state"] = "new"
        return section


MODE = Static()
