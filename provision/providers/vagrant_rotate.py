"""Roll a Vagrant cluster's new certificates onto its running machines, then retire the old.

The same three steps as the local and nspawn providers, each machine reached through
Vagrant:

1. Certificates, one machine at a time: its user-data is rendered again (with the new
   certificates) and `vagrant provision NODE` uploads and applies it. The applier
   changes only what differs: certificate files are no unit's files, so no unit
   restarts; etcd reads its certificate files at every TLS handshake and fleetd follows
   its own. A machine is done once its etcd serves the new server certificate (its
   serial, in a TLS handshake) and its fleetd is still registered; only then the next.
2. The revocation list, once every machine has its new certificates (`publish`, then
   the user-data rendered again and provisioned onto each machine in turn). etcd checks
   it at every new handshake from then on.
3. Connections made before stay up through a revocation list change, so each member's
   etcd2.service restarts alone (`vagrant ssh NODE`), the next only once it serves
   again (a read through it with the admin certificate): afterwards no connection made
   with a retired certificate is left. fleetd and the node's units keep running.

Each machine must be running or not created (`vagrant up` provisions it with the
user-data rendered then): a machine that is halted keeps its stored user-data and would
boot with certificates that are revoked by then.
The I/O is behind `Machines` (Vagrant) and `Probes` (TLS handshakes and etcd reads from
this host), so the order of things is tested without machines.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from provision.errors import OperationFailed

POLL_S = 0.5
RESTART_ETCD = "sudo systemctl restart etcd2.service"
RUNNING = "running"
NOT_CREATED = "not_created"


class Machines(Protocol):
    def provision(self, node: str) -> None:
        """Upload and apply the node's user-data as rendered now."""

    def restart_etcd(self, node: str) -> None:
        """Restart the node's etcd2.service."""


@dataclass(frozen=True)
class Probes:
    """What this host sees of a machine, without Vagrant."""

    served_serial: Callable[[str], int | None]  # node's client URL -> its certificate's serial
    registered: Callable[[], set[str] | None]   # addresses of fleet's machines (None: no answer)
    serves: Callable[[str], bool]               # a read through the node's client URL works


@dataclass(frozen=True)
class RotatedNode:
    name: str
    url: str        # its etcd's client URL
    ip: str         # the address its fleetd registers with
    member: bool    # an etcd member (a proxy passes a member's certificate through)


def not_running_problem(cluster: str, states: Sequence[tuple[str, str]],
                        given: str | None = None) -> str | None:
    """Why the machines, as (node, Vagrant state), cannot take new certificates now (one
    line), or None: each one runs or is not created (`vagrant up` will provision it with
    the user-data rendered then). `given`: the cluster as the user named it."""
    stopped = [(node, state) for node, state in states if state not in (RUNNING, NOT_CREATED)]
    if not stopped:
        return None
    listed = ", ".join(f"{node} is {state}" for node, state in stopped)
    return (f"{cluster}: {listed} (vagrant status): a machine takes new certificates only "
            f"while it runs; start it (`provision node start {stopped[0][0]} -c "
            f"{given or cluster}`) "
            f"and rotate again (no certificate was issued)")


def roll(nodes: Sequence[RotatedNode], machines: Machines, probes: Probes, *,
         expected: dict[str, int], render: Callable[[], None], publish: Callable[[], None],
         timeout: float, report: Callable[[str], None] = lambda _line: None) -> int:
    """The three steps of the module over `nodes` (all running); `render` writes the
    user-data as the PKI is now, `publish` signs the revocation list. Returns how many
    machines were rolled."""
    render()
    for node in nodes:
        machines.provision(node.name)
        if node.member and node.name in expected:
            _wait(lambda n=node: probes.served_serial(n.url) == expected[n.name], timeout,
                  f"{node.name}: its etcd does not serve its new certificate {timeout:g}s "
                  f"after `vagrant provision {node.name}` (`vagrant ssh {node.name} -c "
                  "'journalctl -u etcd2'`)")
        _wait(lambda n=node: n.ip in (probes.registered() or set()), timeout,
              f"{node.name}: its fleetd is no longer registered {timeout:g}s after taking its "
              f"new certificate (`vagrant ssh {node.name} -c 'journalctl -u fleet'`)")
        report(f"{node.name}: new certificates in place")
    publish()
    render()
    for node in nodes:
        machines.provision(node.name)
    report(f"revocation list published to {len(nodes)} nodes")
    for node in nodes:
        if not node.member:
            continue
        machines.restart_etcd(node.name)
        _wait(lambda n=node: probes.serves(n.url), timeout,
              f"{node.name}: its etcd does not serve again {timeout:g}s after its restart "
              f"(`vagrant ssh {node.name} -c 'journalctl -u etcd2'`)")
        report(f"{node.name}: etcd restarted, serving")
    return len(nodes)


def _wait(done: Callable[[], bool], timeout: float, failure: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise OperationFailed(failure)
        time.sleep(POLL_S)


def render_keeping(render: Callable[[Path], None], directory: Path,
                   names: Sequence[str]) -> None:
    """`render(directory)` (which replaces the directory) keeping the files `names` that
    live beside the rendered ones (hard links: the payload is large)."""
    import os
    import shutil
    import tempfile

    kept = Path(tempfile.mkdtemp(prefix=f".{directory.name}.keep-", dir=directory.parent))
    try:
        for name in names:
            if (directory / name).is_file():
                os.link(directory / name, kept / name)
        render(directory)
        for name in names:
            if (kept / name).is_file() and not (directory / name).exists():
                os.link(kept / name, directory / name)
    finally:
        shutil.rmtree(kept, ignore_errors=True)

