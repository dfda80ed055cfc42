"""A local cluster per test: a copy of an example on a free 127.x network, its own state
root, and a cleanup that proves no process outlived the test."""

from __future__ import annotations

import os
import random
import shutil
import socket
import ssl
import tempfile
from pathlib import Path

import yaml

from provision.providers.local import control, dns, provider, state

REPO = Path(__file__).resolve().parents[2]
UP_TIMEOUT = 45.0


def survivors(state_dir: Path) -> list[tuple[int, str]]:
    """Every live process whose command line names the state directory."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        cmdline = state.proc_cmdline(int(entry))
        if any(str(state_dir) in arg for arg in cmdline) and state.pid_alive(int(entry)):
            found.append((int(entry), " ".join(cmdline)[:160]))
    return found


def free_network() -> str:
    """A 127.a.b.0/24 network nobody here listens on (checked on the ports we use)."""
    for _ in range(50):
        net = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"
        try:
            for host in (1, 2, 3, 4):
                with socket.socket() as sock:
                    sock.bind((f"{net}.{host}", 2379))
        except OSError:
            continue
        return f"{net}.0/24"
    raise RuntimeError("no free 127.x network found")


class Env:
    """One test's cluster files, state root and cleanup."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="pv", dir="/tmp"))  # short: unix socket paths
        self.state_root = self.base / "s"
        shutil.copytree(REPO / "clusters" / "units", self.base / "units")
        self.names: list[str] = []

    def cluster(self, example: str, **changes) -> tuple[Path, str]:
        data = yaml.safe_load((REPO / "clusters" / example).read_text())
        name = f"{data['name'][:8]}-{random.randrange(16**6):06x}"
        data["name"] = name
        data["network"]["cidr"] = free_network()
        data.update(changes)
        path = self.base / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        self.names.append(name)
        return path, name

    def state_dir(self, name: str) -> Path:
        return provider.cluster_state_dir(name, self.state_root)

    def tls(self, name: str):  # EtcdTLS
        """The cluster's admin certificate, for talking to its etcd from a test."""
        from provision.pki import PKI_DIR, admin_tls

        return admin_tls(self.state_dir(name) / PKI_DIR)

    def ssl_context(self, name: str) -> ssl.SSLContext:
        """urllib's view of the admin certificate (etcd's v2/v3 HTTP endpoints)."""
        tls = self.tls(name)
        context = ssl.create_default_context(cafile=tls.ca_file)
        context.load_cert_chain(tls.cert_file, tls.key_file)
        return context

    def curl_tls(self, name: str) -> list[str]:
        tls = self.tls(name)
        return ["--cacert", tls.ca_file, "--cert", tls.cert_file, "--key", tls.key_file]

    def etcdctl_tls(self, name: str) -> list[str]:
        tls = self.tls(name)
        return [f"--cacert={tls.ca_file}", f"--cert={tls.cert_file}", f"--key={tls.key_file}"]

    def up(self, path: Path, timeout: float = UP_TIMEOUT) -> int:
        return provider.up(path, timeout=timeout, state_root=self.state_root)

    def close(self) -> None:
        leftovers = []
        for name in self.names:
            state_dir = self.state_dir(name)
            if state_dir.exists():
                control.stop_supervisor(state_dir, timeout=30)
            if dns.exists(dns.namespace(name)):
                dns.delete(dns.namespace(name))
            leftovers += survivors(state_dir)
        shutil.rmtree(self.base, ignore_errors=True)
        assert not leftovers, f"processes outlived the test: {leftovers}"

