"""custom: one node of the cluster runs a standalone etcd (v2 API) that the members use
as their discovery service, under a URL made here (a fresh id, cached beside the output;
a spent one is replaced without asking, since making one costs nothing). That etcd must
answer, and hold the cluster's size, before any member starts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from provision.errors import did_you_mean
from provision.spec.discovery.base import (
    DISCOVERY_PATH,
    BootNeeds,
    DiscoveryMode,
    DiscoveryRecord,
    ReportError,
    ResolveContext,
    Resolved,
    cache_record,
    usable_cache,
)
from provision.spec.model import Cluster, Node


class Custom(DiscoveryMode):
    name = "custom"
    keys: ClassVar = {"node": {"type": "string"}}
    recorded = ("url", "node", "size_key_url")

    def validate(self, disc: Mapping[str, Any], names: list[str],
                 error: ReportError) -> str | None:
        node = disc.get("node")
        if node is None:
            error(DISCOVERY_PATH, "custom discovery needs `etcd.discovery.node`: the node "
                                  "that runs the standalone discovery etcd (e.g. core-01)")
        elif node not in names:
            error(DISCOVERY_PATH + ("node",), f"`etcd.discovery.node`: no node is named "
                                              f"`{node}`{did_you_mean(node, names)}")
            return None
        return node

    def resolve(self, cluster: Cluster, context: ResolveContext) -> tuple[Resolved, dict | None]:
        size = len(cluster.members)
        node = cluster.discovery_node
        assert node is not None
        base = f"http://{node.ip}:{cluster.etcd.client_port}/v2/keys/discovery/"
        cached = usable_cache(cluster, context.cached)
        if cached is not None and not context.new_token and cached.get("state") != "spent" \
                and cached.get("size") == size and cached["url"].startswith(base):
            return Resolved(cached["url"], size), cached
        url = base + context.new_id()
        return Resolved(url, size), cache_record(cluster, url, size, context.now)

    def etcd2(self, cluster: Cluster, node: Node, resolved: Resolved) -> dict:
        return {"discovery": resolved.url}

    def _record_fields(self, cluster: Cluster, resolved: Resolved) -> dict:
        return {"url": resolved.url, "node": cluster.etcd.discovery.node,
                "size_key_url": f"{resolved.url}/_config/size"}

    def boot_needs(self, record: DiscoveryRecord) -> BootNeeds:
        return BootNeeds(bootstrap_node=record.node, discovery_url=record.url,
                         size=record.size)


MODE = Custom()
