"""SSH into an nspawn cluster's machines, for fleetctl's `--tunnel` and `fleetctl ssh`.

Each cluster gets its own key (`<state>/ssh/id_ed25519`, 0600), made at its first `up`
and rendered into the user-data's `ssh_authorized_keys` (the `core` user, with
passwordless sudo: the tunnel reaches the root-only fleet API socket through `sudo -n`),
as coreos-vagrant's boxes carried Vagrant's key. The machines' host keys are made on
the host before their first boot, so `known_hosts` lists them exactly: fleetctl checks
them strictly. `config` (an ssh_config: the key, user core, each machine under its name
and address) reaches the machines through `proxy`, which opens the TCP connection inside
the cluster's network namespace: ssh to a machine works from the host's shell and from
inside the namespace alike.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from provision.files import write_atomic

SSH_DIR = "ssh"
KEY = "id_ed25519"
CONFIG = "config"
KNOWN_HOSTS = "known_hosts"
PROXY = "proxy"
USER = "core"

# Runs in the namespace: copies stdin to a TCP connection to argv[1]:argv[2] and the
# connection's answer to stdout (ssh's ProxyCommand). No single quotes: it sits in '…'.
_TCP_RELAY = (
    "import os,socket,sys,threading\n"
    "s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=15)\n"
    "s.settimeout(None)\n"
    "def up():\n"
    " while (b:=os.read(0,65536)):s.sendall(b)\n"
    " s.shutdown(socket.SHUT_WR)\n"
    "threading.Thread(target=up,daemon=True).start()\n"
    "while (b:=s.recv(65536)):os.write(1,b)\n"
)


def ssh_dir(state_dir: Path) -> Path:
    return state_dir / SSH_DIR


def ensure_key(state_dir: Path, cluster: str) -> str | None:
    """The cluster's public key (made once, kept until `down --purge`); None without
    ssh-keygen (the machines then take no key: fleetctl reaches them by socket only)."""
    directory = ssh_dir(state_dir)
    key = directory / KEY
    if not key.is_file():
        if shutil.which("ssh-keygen") is None:
            return None
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        staged = directory / f".{KEY}.new"
        for old in (staged, staged.with_name(staged.name + ".pub")):
            old.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                        f"provision-nspawn-{cluster}", "-f", str(staged)],
                       check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
        staged.chmod(0o600)
        staged.with_name(staged.name + ".pub").rename(key.with_name(KEY + ".pub"))
        staged.rename(key)
    return key.with_name(KEY + ".pub").read_text().strip()


def config_text(key: Path, proxy: Path, nodes: Iterable[tuple[str, str]]) -> str:
    """An ssh_config for the cluster's machines ((name, ip) each)."""
    lines = ["# provision: this nspawn cluster's machines, reached inside its network "
             "namespace"]
    for name, ip in nodes:
        lines += [f"Host {name} {ip}", f"  HostName {ip}", f"  User {USER}",
                  f'  IdentityFile "{key}"', "  IdentitiesOnly yes",
                  f'  ProxyCommand "{proxy}" %h %p', ""]
    return "\n".join(lines)


def known_hosts_text(host_keys: Iterable[tuple[str, str]]) -> str:
    """known_hosts lines of (ip, public key line `type base64 [comment]`) pairs."""
    lines = []
    for ip, public in host_keys:
        parts = public.split()
        if len(parts) >= 2:
            lines.append(f"{ip} {parts[0]} {parts[1]}")
    return "\n".join(lines) + "\n"


def proxy_text(namespace_path: Path, python: str) -> str:
    return ("#!/bin/sh\n# ssh's ProxyCommand: a TCP connection to HOST PORT inside the "
            "cluster's network namespace\n"
            f"exec nsenter --net={shlex.quote(str(namespace_path))} -- "
            f"{shlex.quote(python)} -c '{_TCP_RELAY}' \"$1\" \"$2\"\n")


def write_access_files(state_dir: Path, namespace_path: Path, python: str,
                       nodes: Iterable[tuple[str, str, Path]]) -> bool:
    """config, known_hosts and proxy beside the key, for nodes (name, ip, overlay upper
    dir holding /etc/ssh's host keys); False when the cluster has no key."""
    directory = ssh_dir(state_dir)
    key = directory / KEY
    if not key.is_file():
        return False
    nodes = list(nodes)
    proxy = directory / PROXY
    write_atomic(proxy, proxy_text(namespace_path, python), mode=0o700)
    write_atomic(directory / CONFIG, config_text(key, proxy, [(n, ip) for n, ip, _ in nodes]))
    host_keys = [(ip, pub.read_text()) for _n, ip, upper in nodes
                 for pub in sorted((upper / "etc/ssh").glob("ssh_host_*_key.pub"))]
    write_atomic(directory / KNOWN_HOSTS, known_hosts_text(host_keys))
    return True
