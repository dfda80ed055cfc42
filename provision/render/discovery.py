"""Resolve the etcd discovery URL a render needs, and remember it.

- `token` without a URL in the YAML: ask `<service>/new?size=N` once; the
  answer is cached in `discovery.json` beside the rendered output and reused on
  re-render. Tokens are single-use: once the cluster that used one is torn
  down (`mark_spent`), rendering refuses to reuse it unless told `new_token`.
- `custom`: a UUID made here, cached the same way; a spent one is replaced
  without asking, since making one costs nothing.
- `static` and `dns-srv` need nothing.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from provision.errors import Problem, UserError
from provision.files import write_atomic
from provision.render.cloudconfig import ResolvedDiscovery
from provision.spec.model import Cluster, DiscoveryMode

CACHE_FILE = "discovery.json"
_TOKEN_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]+)?(/[A-Za-z0-9._~%/-]*)?$")
REQUEST_TIMEOUT_S = 10.0

Fetch = Callable[[str, float], str]


def http_get(url: str, timeout: float) -> str:
    request = urllib.request.Request(url, headers={"User-Agent": "provision"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read(4096).decode("utf-8", errors="replace")


def read_cache(out_dir: Path) -> dict | None:
    try:
        record = json.loads((out_dir / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def mark_spent(out_dir: Path) -> bool:
    """Record that the cluster which used the cached token was torn down."""
    record = read_cache(out_dir)
    if record is None:
        return False
    record["state"] = "spent"
    record["spent_at"] = _now()
    write_atomic(out_dir / CACHE_FILE, json.dumps(record, indent=2) + "\n", 0o600)
    return True


def resolve(cluster: Cluster, out_dir: Path, *, new_token: bool = False,
            fetch: Fetch = http_get) -> tuple[ResolvedDiscovery, dict | None]:
    """The discovery facts for a render, and the cache record to store beside it."""
    disc = cluster.etcd.discovery
    size = len(cluster.members)
    if disc.mode is DiscoveryMode.TOKEN and disc.url:
        return ResolvedDiscovery(disc.url, size), None
    if disc.mode not in (DiscoveryMode.TOKEN, DiscoveryMode.CUSTOM):
        return ResolvedDiscovery(None, size), None

    cached = read_cache(out_dir)
    usable = (cached is not None and cached.get("cluster") == cluster.name
              and cached.get("mode") == disc.mode.value and isinstance(cached.get("url"), str))
    if disc.mode is DiscoveryMode.CUSTOM:
        node = cluster.discovery_node
        assert node is not None
        base = f"http://{node.ip}:{cluster.etcd.client_port}/v2/keys/discovery/"
        if usable and not new_token and cached.get("state") != "spent" \
                and cached.get("size") == size and cached["url"].startswith(base):
            return ResolvedDiscovery(cached["url"], size), cached
        url = base + str(uuid.uuid4())
        return ResolvedDiscovery(url, size), _record(cluster, url, size)

    if usable and not new_token:
        if cached.get("state") == "spent":
            raise UserError([Problem(str(out_dir / CACHE_FILE), None, None,
                                     f"discovery token {cached['url']} was used by a cluster "
                                     "that has been torn down; tokens are single-use, so "
                                     "re-run with --new-token to request a fresh one")])
        if cached.get("size") != size:
            raise UserError([Problem(str(out_dir / CACHE_FILE), None, None,
                                     f"the cached discovery token was made for "
                                     f"{cached.get('size')} etcd members, but the cluster now "
                                     f"has {size}; re-run with --new-token")])
        if cached.get("service") == disc.service:
            return ResolvedDiscovery(cached["url"], size), cached
    url = request_token(disc.service, size, cluster.source, fetch)
    return ResolvedDiscovery(url, size), _record(cluster, url, size)


def request_token(service: str, size: int, source: str, fetch: Fetch = http_get) -> str:
    request_url = f"{service}/new?size={size}"
    advice = ("check the network, or write a token URL in `etcd.discovery.url`")
    try:
        body = fetch(request_url, REQUEST_TIMEOUT_S)
    except urllib.error.HTTPError as err:
        raise UserError([Problem(source, None, None, f"discovery service {service} answered "
                                                     f"HTTP {err.code} to {request_url}; "
                                                     f"{advice}")]) from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise UserError([Problem(source, None, None, f"cannot reach discovery service "
                                                     f"{service}: {reason}; {advice}")]) from None
    token_url = body.strip()
    if not _TOKEN_URL.match(token_url) or len(token_url) > 512:
        shown = token_url[:60] + ("..." if len(token_url) > 60 else "")
        raise UserError([Problem(source, None, None, f"discovery service {service} answered "
                                                     f"{shown!r}, which is not a token URL; "
                                                     f"{advice}")])
    return token_url


def _record(cluster: Cluster, url: str, size: int) -> dict:
    return {
        "cluster": cluster.name,
        "mode": cluster.etcd.discovery.mode.value,
        "service": cluster.etcd.discovery.service,
        "url": url,
        "size": size,
        "state": "fresh",
        "created_at": _now(),
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
