"""What every etcd discovery mode answers, and the records it answers with.

A mode is one `DiscoveryMode` subclass in a module of this package, listed in `MODES`
(`__init__.py`). Model building, rendering, the certificates and the providers ask it;
nobody else compares a mode's name. Everything here is pure: the one network request a
mode may need (a token from a discovery service) and the cache file are handed in by
render's edge (`provision.render.discovery`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from provision.errors import Problem, UserError
from provision.spec.model import Cluster, Node, WriteFile

# Model building's positioned error: (path under the document, message, key=…).
ReportError = Callable[..., None]
DISCOVERY_PATH: tuple[Hashable, ...] = ("etcd", "discovery")
HTTP_URL = re.compile(r"^https?://[^\s/]+(/\S*)?$")


@dataclass(frozen=True)
class Resolved:
    """Discovery facts known only at render time (a requested or generated token URL)."""

    url: str | None = None
    size: int = 0


@dataclass(frozen=True)
class ResolveContext:
    """What resolving may use besides the cluster: the cache beside the output, and the
    render edge's means to make new facts."""

    cached: dict | None  # discovery.json beside the output, if any
    cache_path: str  # for messages
    new_token: bool  # --new-token: never reuse a cached token
    request_token: Callable[[str, int], str]  # (service, size) -> token URL, over the network
    new_id: Callable[[], str]  # a fresh unique id
    now: str  # ISO time, for the record


@dataclass(frozen=True)
class DiscoveryRecord:
    """What the manifest records of discovery: `mode` and `size`, then the fields the
    mode records (`keys`, in the order written)."""

    mode: str
    size: int
    url: str | None = None
    node: str | None = None
    size_key_url: str | None = None
    domain: str | None = None
    dns_server: str | None = None
    zone_file: str | None = None
    keys: tuple[str, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "size": self.size, **{k: getattr(self, k) for k in self.keys}}


RECORD_FIELDS = ("url", "node", "size_key_url", "domain", "dns_server", "zone_file")


@dataclass(frozen=True)
class DnsZone:
    """A DNS server the cluster's nodes must resolve through: the rendered zone file's
    records, for `domain`, preferably at `server`."""

    zone_file: str
    domain: str
    server: str | None = None


@dataclass(frozen=True)
class BootNeeds:
    """What a provider must do besides starting the nodes."""

    # A node whose etcd must answer before the others start, and the cluster size to
    # store under `discovery_url` once it does.
    bootstrap_node: str | None = None
    discovery_url: str | None = None
    size: int = 0
    dns: DnsZone | None = None  # a DNS server serving the cluster's SRV records


class DiscoveryMode:
    """One way etcd members find each other. Subclasses override what differs."""

    name: ClassVar[str]
    # `etcd.discovery` keys (besides `mode`) this mode reads, each with its JSON Schema:
    # the cluster schema's discovery section is made of these.
    keys: ClassVar[Mapping[str, dict]] = {}
    # The manifest's discovery fields (besides mode and size), in the order written.
    recorded: ClassVar[tuple[str, ...]] = ()
    # Whether the nodes need a DNS server serving the cluster's records (`boot_needs().dns`).
    serves_dns: ClassVar[bool] = False

    # -- model building ------------------------------------------------------------------------

    def validate(self, disc: Mapping[str, Any], names: list[str],
                 error: ReportError) -> str | None:
        """Report the section's problems through `error(path, message)`; the node running
        a standalone discovery etcd, if this mode has one."""
        return None

    # -- rendering -----------------------------------------------------------------------------

    def resolve(self, cluster: Cluster, context: ResolveContext) -> tuple[Resolved, dict | None]:
        """The facts a render needs, and the record to cache beside it (None: nothing)."""
        return Resolved(None, len(cluster.members)), None

    def peer_host(self, cluster: Cluster, node: Node) -> str | None:
        """The host a member advertises to its peers; None: its private address."""
        return None

    def etcd2(self, cluster: Cluster, node: Node, resolved: Resolved) -> dict:
        """The etcd2 section's bootstrap keys of a member or proxy."""
        raise NotImplementedError

    def write_files(self, cluster: Cluster) -> list[WriteFile]:
        """Files every node needs for this mode (written before the node's own)."""
        return []

    def rendered_files(self, cluster: Cluster,
                       render: Callable[[str, dict], str]) -> list[tuple[str, str]]:
        """Files beside the user-data: (name, text); `render(template, context)`."""
        return []

    def record(self, cluster: Cluster, resolved: Resolved) -> DiscoveryRecord:
        return DiscoveryRecord(self.name, len(cluster.members), keys=self.recorded,
                               **self._record_fields(cluster, resolved))

    def _record_fields(self, cluster: Cluster, resolved: Resolved) -> dict:
        return {}

    # -- certificates ----------------------------------------------------------------------------

    def dns_names(self, cluster: Cluster, node: Node) -> tuple[str, ...]:
        """DNS names a node's etcd certificates must carry besides its own name."""
        return ()

    # -- providers ---------------------------------------------------------------------------------

    def boot_needs(self, record: DiscoveryRecord) -> BootNeeds:
        return BootNeeds()


def cache_problem(context: ResolveContext, message: str) -> UserError:
    return UserError([Problem(context.cache_path, None, None, message)])


def cache_record(cluster: Cluster, url: str, size: int, now: str) -> dict:
    """What discovery.json keeps of a requested or generated URL."""
    return {
        "cluster": cluster.name,
        "mode": cluster.etcd.discovery.mode,
        "service": cluster.etcd.discovery.service,
        "url": url,
        "size": size,
        "state": "fresh",
        "created_at": now,
    }


def usable_cache(cluster: Cluster, cached: dict | None) -> dict | None:
    """The cached record if it was made for this cluster and mode."""
    if (cached is not None and cached.get("cluster") == cluster.name
            and cached.get("mode") == cluster.etcd.discovery.mode
            and isinstance(cached.get("url"), str)):
        return cached
    return None
