"""token: members meet under a discovery service's token URL (discovery.etcd.io's kind).

The URL is given in the YAML, or requested once from `service` (`<service>/new?size=N`)
and cached beside the rendered output. Tokens are single-use: once the cluster that used
one is torn down, rendering refuses to reuse it unless told to get a new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from provision.spec.discovery.base import (
    DISCOVERY_PATH,
    HTTP_URL,
    DiscoveryMode,
    ReportError,
    ResolveContext,
    Resolved,
    cache_problem,
    cache_record,
    usable_cache,
)
from provision.spec.model import Cluster, Node


def check_urls(disc: Mapping[str, Any], keys: tuple[str, ...], error: ReportError) -> None:
    for key in keys:
        if key in disc and not HTTP_URL.match(disc[key]):
            error(DISCOVERY_PATH + (key,), f"`etcd.discovery.{key}` must be an http(s) URL, "
                                           f"got {disc[key]!r}")


class Token(DiscoveryMode):
    name = "token"
    keys: ClassVar = {"url": {"type": "string"}, "service": {"type": "string"}}
    recorded = ("url",)

    def validate(self, disc: Mapping[str, Any], names: list[str],
                 error: ReportError) -> str | None:
        check_urls(disc, ("url", "service"), error)
        return None

    def resolve(self, cluster: Cluster, context: ResolveContext) -> tuple[Resolved, dict | None]:
        disc = cluster.etcd.discovery
        size = len(cluster.members)
        if disc.url:
            return Resolved(disc.url, size), None
        cached = usable_cache(cluster, context.cached)
        if cached is not None and not context.new_token:
            if cached.get("state") == "spent":
                raise cache_problem(context, f"discovery token {cached['url']} was used by a "
                                             "cluster that has been torn down; tokens are "
                                             "single-use, so re-run with --new-token to "
                                             "request a fresh one")
            if cached.get("size") != size:
                raise cache_problem(context, f"the cached discovery token was made for "
                                             f"{cached.get('size')} etcd members, but the "
                                             f"cluster now has {size}; re-run with --new-token")
            if cached.get("service") == disc.service:
                return Resolved(cached["url"], size), cached
        url = context.request_token(disc.service, size)
        return Resolved(url, size), cache_record(cluster, url, size, context.now)

    def etcd2(self, cluster: Cluster, node: Node, resolved: Resolved) -> dict:
        return {"discovery": resolved.url}

    def _record_fields(self, cluster: Cluster, resolved: Resolved) -> dict:
        return {"url": resolved.url}


MODE = Token()
