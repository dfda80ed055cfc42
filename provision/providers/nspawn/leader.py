"""Which node's etcd member leads, asked from this process without a helper.

The members listen only inside the cluster's network namespace. A helper process
started there (`ip netns exec … python -m …health`) costs seconds on a busy host (an
interpreter and grpc imported), which `down` would wait on. setns(2) moves only the
calling thread into a network namespace, so each question is asked by a short-lived
thread of this process that has joined it: each member's status (etcd's JSON gateway,
`/v3/maintenance/status`) names the leader and the member itself.
"""

from __future__ import annotations

import ctypes
import json
import ssl
import threading
import urllib.request
from pathlib import Path

CLONE_NEWNET = 0x40000000
TIMEOUT_S = 2.0


def leads(url: str, context: ssl.SSLContext | None, timeout: float = TIMEOUT_S) -> bool:
    """Whether the member at client URL `url` says it is the leader (False if it does not
    answer): its status names the leader, its header itself."""
    request = urllib.request.Request(url.rstrip("/") + "/v3/maintenance/status", data=b"{}",
                                     method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            status = json.loads(response.read(65536))
        return str(status["leader"]) == str(status["header"]["member_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def tls_context(ca_file: str, cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    context.load_cert_chain(cert_file, key_file)
    return context


def leader(namespace: Path, members: dict[str, str], context: ssl.SSLContext | None,
           timeout: float = TIMEOUT_S) -> str | None:
    """The name (a key of `members`: name → client URL) of the member that leads, asked
    inside network namespace `namespace` (its /run/netns path); None when none says so."""
    answers: dict[str, bool] = {}

    def ask(name: str, url: str) -> None:
        try:
            with open(namespace, "rb") as handle:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                    return
        except OSError:
            return
        answers[name] = leads(url, context, timeout)

    # One thread per member, each ending with its question: no thread that joined the
    # namespace is ever reused for anything else.
    threads = [threading.Thread(target=ask, args=item, name=f"etcd-leader-{item[0]}",
                                daemon=True) for item in members.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 5)
    found = [name for name, yes in answers.items() if yes]
    return found[0] if len(found) == 1 else None
