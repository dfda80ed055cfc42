"""Roll a local cluster's new certificates onto its running nodes, one node at a time.

etcd reads its certificate files again for every new TLS connection, so a node's new
server and peer certificates take effect once they are in place in its node root: no
process restarts, no unit moves. Each node is done only when its etcd serves the new
server certificate (checked by a TLS handshake, against a deadline) before the next one
starts, so at most one node is ever between certificates.
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
from provision.pki import NODE_DIR, ClientFiles
from provision.providers.local import nodes
from provision.providers.local.boot import NodeBoot
from provision.render.manifest import Manifest

POLL_S = 0.1


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


def roll(state_dir: Path, files: ClientFiles, expected: dict[str, int], *,
         timeout: float = 30.0, report: Callable[[str], None] = lambda _: None) -> list[str]:
    """Write each node's certificate files from the (re-rendered) user-data in its node
    root, one node at a time, waiting until its etcd serves the serial `expected[node]`.
    Returns the nodes rolled."""
    boots, _ = _boots(state_dir)
    netns = nodes.netns(state_dir)
    rolled = []
    for boot in boots:
        tls_files = [f for f in boot.files if f.path.startswith(NODE_DIR + "/")]
        for item in tls_files:
            nodes.write_into_root(boot.dirs.root, item)
        # A proxy's gateway passes TLS through: what it serves is a member's certificate.
        if (boot.role == "etcd-member" and boot.etcd_url.startswith("https://")
                and netns is None and boot.name in expected):
            _wait_serving(boot, files, expected[boot.name], timeout)
        rolled.append(boot.name)
        report(f"{boot.name}: new certificates in place")
    return rolled


def _boots(state_dir: Path) -> tuple[list[NodeBoot], Manifest]:
    from provision.providers.local.provider import _plan_boots

    return _plan_boots(state_dir)


def _wait_serving(boot: NodeBoot, files: ClientFiles, serial: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if served_serial(boot.etcd_url, files) == serial:
            return
        time.sleep(POLL_S)
    raise OperationFailed(f"{boot.name}: its etcd did not serve the new certificate within "
                          f"{timeout:g}s (is the node running? `provision status`)")
