"""Roll a local cluster's new certificates onto its running nodes, then retire the old ones.

1. Certificates, one node at a time. etcd reads its certificate files again for every new
   TLS connection, so a node's new server and peer certificates take effect once they are
   in place in its node root; fleetd and the announcers take up their new client
   certificate by themselves (fleetd.registry.etcd follows the files). A node is done once
   its etcd serves the new server certificate (a TLS handshake, against a deadline), so at
   most one node is ever between certificates. No process restarts, no unit moves.
2. The revocation list, once every node has its new certificates (`publish`: the CA signs
   the list of retired serials and the user-data is rendered again): into every node root.
   Each member's etcd checks it at every new handshake from then on.
3. Connections made before stay up through a CRL change, so each member's etcd is
   restarted alone, one at a time, the next only once it serves again (a linearizable
   read through it): afterwards no connection made with a retired certificate is left.
   fleetd, the node's units and the other members keep running; fleetd reconnects (with
   its new certificate: an old one is refused now).
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509

from provision.errors import OperationFailed
from provision.pki import NODE_DIR, ClientFiles, node_file
from provision.providers.local import control, nodes, state
from provision.providers.local.boot import NodeBoot

POLL_S = 0.1
CRL_PATH = node_file("crl")


def served_serial(url: str, files: ClientFiles, timeout: float = 2.0) -> int | None:
    """The serial of the certificate the etcd at `url` shows a client now, or None."""
    parts = urlsplit(url)
    context = ssl.create_default_context(cafile=files.ca_file)
    context.load_cert_chain(files.cert_file, files.key_file)
    try:
        with socket.create_connection((parts.hostname, parts.port or 2379), timeout) as raw, \
                context.wrap_socket(raw, server_hostname=parts.hostname) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    return x509.load_der_x509_certificate(der).serial_number if der else None


def roll(state_dir: Path, files: ClientFiles, expected: dict[str, int],
         plan: Callable[[], list[NodeBoot]], *, publish: Callable[[], None] = lambda: None,
         timeout: float = 30.0, report: Callable[[str], None] = lambda _: None) -> list[str]:
    """Write each node's certificate files from the (re-rendered) user-data in its node
    root, one node at a time, waiting until its etcd serves the serial `expected[node]`;
    then `publish` the revocation list, copy it to every node and restart each member's
    etcd in turn (see the module). `plan`: the nodes' boot plans from the user-data as it
    is rendered now. Returns the nodes rolled."""
    boots = plan()
    netns = nodes.netns(state_dir)
    rolled = []
    for boot in boots:
        for item in boot.files:
            if item.path.startswith(NODE_DIR + "/") and item.path != CRL_PATH:
                nodes.write_into_root(boot.dirs.root, item)
        # A proxy's gateway passes TLS through: what it serves is a member's certificate.
        if (boot.role == "etcd-member" and boot.etcd_url.startswith("https://")
                and netns is None and boot.name in expected):
            _wait_serving(boot, files, expected[boot.name], timeout)
        rolled.append(boot.name)
        report(f"{boot.name}: new certificates in place")
    publish()
    boots = plan()  # the user-data rendered again: with the published list
    for boot in boots:
        for item in boot.files:
            if item.path == CRL_PATH:
                nodes.write_into_root(boot.dirs.root, item)
    report(f"revocation list published to {len(boots)} nodes")
    members = [b for b in boots if b.role == "etcd-member"
               and b.etcd_url.startswith("https://")]
    if members:
        _restart_members(state_dir, members, timeout, report)
    return rolled


def _restart_members(state_dir: Path, members: list[NodeBoot], timeout: float,
                     report: Callable[[str], None]) -> None:
    from provision.providers.local.waiter import prober_for

    manifest = nodes.read_manifest(state_dir / state.RENDERED)
    prober = prober_for(state_dir, manifest, members)
    try:
        for boot in members:
            status = control.read_status(state_dir) or {}
            if (status.get("nodes") or {}).get(boot.name, {}).get("state") != "running":
                continue  # a stopped member starts with the new files anyway
            generation, count = control.restart_etcd(state_dir, boot.name)
            deadline = time.monotonic() + timeout
            while True:
                status = control.read_status(state_dir, generation) or {}
                done = int((status.get("nodes") or {}).get(boot.name, {})
                           .get("etcd_restarts") or 0) >= count
                if done and prober.etcd([boot.etcd_url]) == [True]:
                    break
                if time.monotonic() > deadline:
                    raise OperationFailed(
                        f"{boot.name}: its etcd did not serve again within {timeout:g}s after "
                        "its restart (`provision status`; its log: "
                        f"{boot.dirs.unit_log('etcd2.service')})")
                time.sleep(POLL_S)
            report(f"{boot.name}: etcd restarted, serving")
    finally:
        prober.close()


def _wait_serving(boot: NodeBoot, files: ClientFiles, serial: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if served_serial(boot.etcd_url, files) == serial:
            return
        time.sleep(POLL_S)
    raise OperationFailed(f"{boot.name}: its etcd did not serve the new certificate within "
                          f"{timeout:g}s (is the node running? `provision status`)")
