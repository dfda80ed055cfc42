"""Replacing a member that lost its data: etcd's remove + re-add, and the flags to join with.

    python -m provision.providers.local.membership ENDPOINTS NAME PEER_URL   (in a namespace)

etcd's documented procedure for a member whose data directory is gone: remove
it from the cluster through a healthy member, add it back (a new member ID), and
start it with an empty data directory, `--initial-cluster` set to the cluster's
members as they now are and `--initial-cluster-state=existing`. Starting it
under its old ID with empty data instead (what a plain restart does) hands raft
a follower that has forgotten what it acknowledged.

`replace_member` does the remove + add and returns the member list to join with;
`join_argv` (pure) rewrites the node's etcd command line accordingly. The
membership calls run here, or through this module inside the cluster's network
namespace (dns-srv clusters), where the members listen.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

CALL_TIMEOUT_S = 5.0
RETRY_S = 30.0
RETRY_PAUSE_S = 0.5
# Flags of the first bootstrap that a member joining an existing cluster must not carry.
BOOTSTRAP_FLAGS = ("--initial-cluster=", "--initial-cluster-state=", "--discovery=",
                   "--discovery-srv=", "--discovery-srv-name=", "--discovery-fallback=",
                   "--discovery-proxy=")


class MembershipError(Exception):
    """The cluster could not remove or add the member (no quorum, no member answers)."""


@dataclass(frozen=True)
class Replaced:
    removed: str | None  # the old member ID (hex), None when it was not a member any more
    added: str  # the new member ID (hex)
    initial_cluster: str  # name=peer-url,… of every member after the add


def join_argv(argv: tuple[str, ...], initial_cluster: str) -> tuple[str, ...]:
    """The etcd command line of a member re-added to a running cluster (pure): bootstrap
    flags (static list, discovery URL or SRV domain) replaced by the members as they are
    now and `--initial-cluster-state=existing`."""
    kept = [arg for arg in argv if not arg.startswith(BOOTSTRAP_FLAGS)]
    return (*kept, f"--initial-cluster={initial_cluster}", "--initial-cluster-state=existing")


def replace_member(endpoints: list[str], name: str, peer_url: str,
                   names_by_peer: dict[str, str], timeout: float = RETRY_S,
                   tls: tuple[str, str, str] | None = None) -> Replaced:
    """Remove the member called `name` (or advertising `peer_url`) and add `peer_url` back,
    through the first of `endpoints` that answers.

    etcd refuses a membership change while its leader has not been connected to a quorum
    for a few seconds ("unhealthy cluster", as right after the cluster starts): that is
    retried until `timeout`; each try starts again from the member list, so a removal that
    already happened is not repeated.
    """
    deadline = time.monotonic() + timeout
    removed: list[str] = []  # by an earlier try
    while True:
        errors = []
        for endpoint in endpoints:
            try:
                return _replace_through(endpoint, name, peer_url, names_by_peer, removed, tls)
            except Exception as err:  # next member, or one line for the user
                errors.append(f"{endpoint}: {_reason(err)}")
        if time.monotonic() > deadline:
            raise MembershipError("; ".join(errors))
        time.sleep(RETRY_PAUSE_S)


def _replace_through(endpoint: str, name: str, peer_url: str, names_by_peer: dict[str, str],
                     removed: list[str], tls: tuple[str, str, str] | None = None) -> Replaced:
    import etcd3

    parts = urlsplit(endpoint)
    files = {}
    if tls is not None and parts.scheme == "https":  # (CA, certificate, key)
        files = {"ca_cert": tls[0], "cert_cert": tls[1], "cert_key": tls[2]}
    client = etcd3.client(host=parts.hostname, port=parts.port or 2379, timeout=CALL_TIMEOUT_S,
                          **files)
    try:
        return _replace(client, list(client.members), name, peer_url, names_by_peer, removed)
    finally:
        client.close()


def _replace(client, members: list, name: str, peer_url: str,  # etcd3 types
             names_by_peer: dict[str, str], removed: list[str]) -> Replaced:
    old = next((m for m in members if m.name == name or peer_url in m.peer_urls), None)
    if old is not None:
        client.remove_member(old.id)
        if not removed:
            removed.append(f"{old.id:x}")
    added = client.add_member([peer_url])
    pairs = []
    for member in client.members:
        urls = list(member.peer_urls)
        if not urls:
            continue
        member_name = name if member.id == added.id else (
            member.name or names_by_peer.get(urls[0], ""))
        pairs += [f"{member_name}={url}" for url in urls]
    return Replaced(removed[0] if removed else None, f"{added.id:x}", ",".join(pairs))


def _reason(err: BaseException) -> str:
    """etcd's own words (the gRPC details under python-etcd3's exception), else the error."""
    for candidate in (err, err.__cause__, err.__context__):
        details = getattr(candidate, "details", None)
        if callable(details) and details():
            return str(details())
    return str(err) or type(err).__name__


def replace_member_in(exec_prefix: list[str], env: dict[str, str], endpoints: list[str],
                      name: str, peer_url: str, names_by_peer: dict[str, str],
                      tls: tuple[str, str, str] | None = None) -> Replaced:
    """`replace_member`, here or (with an `ip netns exec` prefix) inside a namespace."""
    if not exec_prefix:
        return replace_member(endpoints, name, peer_url, names_by_peer, tls=tls)
    result = subprocess.run(
        [*exec_prefix, sys.executable, "-m", __name__, ",".join(endpoints), name, peer_url,
         json.dumps(names_by_peer), *(tls or ())], capture_output=True, text=True, env=env,
        timeout=60, stdin=subprocess.DEVNULL)
    try:
        answer = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise MembershipError(result.stderr.strip().splitlines()[-1] if result.stderr.strip()
                              else f"exit status {result.returncode}") from None
    if "error" in answer:
        raise MembershipError(answer["error"])
    return Replaced(answer["removed"], answer["added"], answer["initial_cluster"])


def _main(argv: list[str]) -> int:
    endpoints, name, peer_url, names, *files = argv
    tls = (files[0], files[1], files[2]) if len(files) == 3 else None
    try:
        done = replace_member([e for e in endpoints.split(",") if e], name, peer_url,
                              json.loads(names), tls=tls)
    except MembershipError as err:
        print(json.dumps({"error": str(err)}))
        return 1
    print(json.dumps({"removed": done.removed, "added": done.added,
                      "initial_cluster": done.initial_cluster}))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
