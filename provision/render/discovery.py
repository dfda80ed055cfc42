"""Rendering's network and cache edge for etcd discovery.

What a mode resolves is the mode's (`provision.spec.discovery`); this module hands it
the cache (`discovery.json` beside the rendered output, so a token is requested once and
reused on re-render), the token request to a discovery service (`<service>/new?size=N`)
and a fresh id. `mark_spent` records that the cluster which used a cached token was torn
down: tokens are single-use.
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
from provision.spec.discovery import ResolveContext, Resolved, mode_of
from provision.spec.model import Cluster

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
            fetch: Fetch = http_get) -> tuple[Resolved, dict | None]:
    """The discovery facts for a render, and the cache record to store beside it."""
    context = ResolveContext(
        cached=read_cache(out_dir), cache_path=str(out_dir / CACHE_FILE), new_token=new_token,
        request_token=lambda service, size: request_token(service, size, cluster.source,
                                                          fetch),
        new_id=lambda: str(uuid.uuid4()), now=_now())
    return mode_of(cluster).resolve(cluster, context)


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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
