"""A cluster's certificates: one CA, per node etcd server + peer certificates and a client
certificate for its fleetd, and an admin client certificate for provision, fleetctl and
etcdctl on the host.

`cert_specs` (pure) says which certificates a cluster needs and what each one names;
`ensure` keeps them in the cluster's PKI directory (0700, every file 0600): the CA is
made once and kept, a certificate is reused as long as it still says what its spec says,
was signed by this CA and has more than `RENEW_BEFORE` left, and issued anew otherwise
(or for every node and client certificate with `rotate=True`). So a re-render writes the
same user-data, and a changed node (a new IP) gets a new certificate and nothing else.

Keys are ECDSA P-256: a fraction of a millisecond each, accepted by etcd, gRPC and Go.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provision.spec.discovery import mode_of
from provision.spec.model import Cluster, EtcdRole

PKI_DIR = "pki"
CA_NAME = "ca"
ADMIN_NAME = "admin"
CA_VALIDITY = datetime.timedelta(days=3650)
CERT_VALIDITY = datetime.timedelta(days=365)
RENEW_BEFORE = datetime.timedelta(days=30)  # `status` warns, `ensure` reissues, this close
# Where a node keeps them (CoreOS's place for etcd's certificates).
NODE_DIR = "/etc/ssl/etcd"


@dataclass(frozen=True)
class CertSpec:
    """What one certificate must say."""

    name: str  # file stem in the PKI directory: core-01-server, core-01-fleetd, admin
    common_name: str
    ips: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    server: bool = False  # serverAuth (etcd's client and peer listeners)
    client: bool = True  # clientAuth (fleetd, etcdctl, a member dialling its peers)
    node: str | None = None
    kind: str = "admin"  # server | peer | fleetd | admin


@dataclass(frozen=True)
class Issued:
    spec: CertSpec
    cert_pem: str
    key_pem: str
    not_after: datetime.datetime
    serial: int


@dataclass(frozen=True)
class NodeTLS:
    """One node's share, as PEM text: what its user-data carries."""

    ca_pem: str
    server: Issued
    peer: Issued
    fleetd: Issued


@dataclass(frozen=True)
class ClientFiles:
    """Paths of a client's certificate files on this host."""

    ca_file: str
    cert_file: str
    key_file: str


def node_file(kind: str, key: bool = False) -> str:
    """The path of a node's certificate (or its key) on the node."""
    if kind == CA_NAME:
        return f"{NODE_DIR}/ca.pem"
    return f"{NODE_DIR}/{kind}{'-key' if key else ''}.pem"


def _sans(cluster: Cluster, node) -> tuple[tuple[str, ...], tuple[str, ...]]:
    ips = [str(node.ip), "127.0.0.1"]
    names = [node.name, "localhost"]
    names += mode_of(cluster).dns_names(cluster, node)
    if node.etcd_role is EtcdRole.MEMBER:
        # A proxy node runs an etcd gateway, which passes TLS through to a member: the
        # member answers for the proxy's address too.
        ips += [str(n.ip) for n in cluster.nodes if n.etcd_role is EtcdRole.PROXY]
    return tuple(dict.fromkeys(ips)), tuple(dict.fromkeys(names))


def cert_specs(cluster: Cluster) -> list[CertSpec]:
    """Every certificate of the cluster but the CA (pure)."""
    specs = []
    for node in cluster.nodes:
        ips, names = _sans(cluster, node)
        specs += [
            # clientAuth too: etcd's own gRPC gateway dials the member with this one.
            CertSpec(f"{node.name}-server", f"etcd-server@{node.name}", ips, names,
                     server=True, client=True, node=node.name, kind="server"),
            CertSpec(f"{node.name}-peer", f"etcd-peer@{node.name}", ips, names,
                     server=True, client=True, node=node.name, kind="peer"),
            CertSpec(f"{node.name}-fleetd", f"fleetd@{node.name}", (), (),
                     server=False, client=True, node=node.name, kind="fleetd"),
        ]
    specs.append(CertSpec(ADMIN_NAME, f"admin@{cluster.name}"))
    return specs


class ClusterPKI:
    """The cluster's CA and certificates as kept in `directory`."""

    def __init__(self, directory: Path, ca_cert: x509.Certificate, ca_key,
                 issued: dict[str, Issued]) -> None:
        self.directory = directory
        self.ca_cert = ca_cert
        self.ca_key = ca_key
        self.ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM).decode()
        self.issued = issued

    def node(self, name: str) -> NodeTLS:
        return NodeTLS(self.ca_pem, self.issued[f"{name}-server"], self.issued[f"{name}-peer"],
                       self.issued[f"{name}-fleetd"])

    def client_files(self, name: str = ADMIN_NAME) -> ClientFiles:
        return client_files(self.directory, name)


def client_files(directory: Path, name: str = ADMIN_NAME) -> ClientFiles:
    return ClientFiles(str(directory / f"{CA_NAME}.pem"), str(directory / f"{name}.pem"),
                       str(directory / f"{name}-key.pem"))


def admin_tls(directory: Path):  # fleetd.registry.etcd.EtcdTLS
    """The admin certificate as the etcd client takes it."""
    from fleetd.registry.etcd import EtcdTLS

    files = client_files(Path(directory))
    return EtcdTLS(files.ca_file, files.cert_file, files.key_file)


def cluster_client_tls(cluster: Cluster, state_root: str | Path | None = None
                       ):  # EtcdTLS | None
    """The admin certificate `provision` talks to the cluster's etcd with (None without TLS);
    RegistryUnavailable when the cluster has none here."""
    if not cluster.tls:
        return None
    directory = pki_dir(cluster.name, state_root)
    files = client_files(directory)
    missing = [f for f in (files.ca_file, files.cert_file, files.key_file)
               if not Path(f).is_file()]
    if missing:
        # Like an etcd that does not answer: the cluster was never brought up from here.
        from fleetd.registry.etcd import RegistryUnavailable

        raise RegistryUnavailable(f"no admin certificate for cluster {cluster.name} "
                                  f"({missing[0]} is missing; `provision up` makes it, or set "
                                  "$PROVISION_STATE to where the cluster's state is)")
    return admin_tls(directory)


def pki_dir(cluster_name: str, state_root: str | Path | None = None) -> Path:
    """Where a cluster's PKI lives by default: beside the rest of its state."""
    from provision.files import cluster_state_dir

    return cluster_state_dir(cluster_name, state_root) / PKI_DIR


def for_cluster(cluster: Cluster, directory: str | Path | None = None,
                state_root: str | Path | None = None) -> ClusterPKI | None:
    """The PKI a render of `cluster` uses (made or completed), None without TLS."""
    if not cluster.tls:
        return None
    return ensure(directory if directory is not None else pki_dir(cluster.name, state_root),
                  cluster)


# -- issuing ----------------------------------------------------------------------------------

def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def new_ca(cluster_name: str, now: datetime.datetime | None = None
           ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    now = now or _now()
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster_name} cluster CA"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "provision")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def issue(spec: CertSpec, ca_cert: x509.Certificate, ca_key,
          now: datetime.datetime | None = None,
          validity: datetime.timedelta = CERT_VALIDITY) -> Issued:
    now = now or _now()
    key = _new_key()
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if spec.server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if spec.client else [])
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                           spec.common_name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + validity)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True,
                                            content_commitment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    sans = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in spec.ips] + [
        x509.DNSName(name) for name in spec.dns_names]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Issued(spec, cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key),
                  _not_after(cert), cert.serial_number)


def _not_after(cert: x509.Certificate) -> datetime.datetime:
    aware = getattr(cert, "not_valid_after_utc", None)  # cryptography >= 42
    return aware if aware is not None else cert.not_valid_after.replace(
        tzinfo=datetime.timezone.utc)


# -- reading back -------------------------------------------------------------------------------

def says(cert: x509.Certificate, spec: CertSpec) -> bool:
    """Whether a certificate names what `spec` asks for (subject, addresses, usages)."""
    try:
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    except IndexError:
        return False
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
        names = set(sans.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        ips, names = set(), set()
    try:
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = set()
    wanted = ({ExtendedKeyUsageOID.SERVER_AUTH} if spec.server else set()) | (
        {ExtendedKeyUsageOID.CLIENT_AUTH} if spec.client else set())
    return (cn == spec.common_name and ips == set(spec.ips) and names == set(spec.dns_names)
            and usages == wanted)


def issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """Whether `cert` names `ca_cert`'s key as its issuer's (the authority key identifier:
    no signature check, which costs 10x more and is what a TLS peer does anyway)."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return signed_by(cert, ca_cert)
    return aki.key_identifier == ski.digest and cert.issuer == ca_cert.subject


def signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        ca_cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes,
                                    ec.ECDSA(cert.signature_hash_algorithm))
    except (InvalidSignature, TypeError, ValueError):
        return False
    return cert.issuer == ca_cert.subject


def _read(directory: Path, name: str) -> tuple[x509.Certificate, str, str] | None:
    try:
        cert_pem = (directory / f"{name}.pem").read_text()
        key_pem = (directory / f"{name}-key.pem").read_text()
        return x509.load_pem_x509_certificate(cert_pem.encode()), cert_pem, key_pem
    except (OSError, ValueError):
        return None


def _write(directory: Path, name: str, cert_pem: str, key_pem: str) -> None:
    from provision.files import write_atomic

    # The key first: a certificate on disk always has its key beside it.
    write_atomic(directory / f"{name}-key.pem", key_pem, mode=0o600, fsync=True)
    write_atomic(directory / f"{name}.pem", cert_pem, mode=0o600, fsync=True)


def _secure_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)


def load_ca(directory: Path):  # (certificate, key) | None
    found = _read(directory, CA_NAME)
    if found is None:
        return None
    cert, _cert_pem, key_pem = found
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    return cert, key


def ensure(directory: str | Path, cluster: Cluster, *, rotate: bool = False,
           now: datetime.datetime | None = None) -> ClusterPKI:
    """The cluster's PKI in `directory`, made or completed as needed (see the module)."""
    directory = Path(directory)
    now = now or _now()
    _secure_dir(directory)
    ca = load_ca(directory)
    if ca is None or _not_after(ca[0]) - now < RENEW_BEFORE:
        ca = new_ca(cluster.name, now)
        ca_cert, ca_key = ca
        _write(directory, CA_NAME, ca_cert.public_bytes(serialization.Encoding.PEM).decode(),
               _key_pem(ca_key))
    ca_cert, ca_key = ca
    issued: dict[str, Issued] = {}
    new: list[Issued] = []
    for spec in cert_specs(cluster):
        found = None if rotate else _read(directory, spec.name)
        if found is not None:
            cert, cert_pem, key_pem = found
            if (says(cert, spec) and issued_by(cert, ca_cert)
                    and _not_after(cert) - now >= RENEW_BEFORE):
                issued[spec.name] = Issued(spec, cert_pem, key_pem, _not_after(cert),
                                           cert.serial_number)
                continue
        issued[spec.name] = issue(spec, ca_cert, ca_key, now)
        new.append(issued[spec.name])
    # fsync releases the GIL and concurrent fsyncs share journal commits: a 1,000-node
    # cluster's 3,000 certificates are written in a fraction of the time one by one takes.
    with ThreadPoolExecutor(max_workers=16) as pool:
        for future in [pool.submit(_write, directory, i.spec.name, i.cert_pem, i.key_pem)
                       for i in new]:
            future.result()
    return ClusterPKI(directory, ca_cert, ca_key, issued)


@dataclass(frozen=True)
class CertInfo:
    name: str
    subject: str
    not_after: datetime.datetime
    serial: int
    sans: tuple[str, ...]


def inventory(directory: str | Path) -> list[CertInfo]:
    """Every certificate in a PKI directory, the CA first (for `certs show`)."""
    directory = Path(directory)
    names = sorted(p.name[:-4] for p in directory.glob("*.pem") if not p.name.endswith(
        "-key.pem"))
    names.sort(key=lambda n: (n != CA_NAME, n != ADMIN_NAME, n))
    out = []
    for name in names:
        found = _read(directory, name)
        if found is None:
            continue
        cert = found[0]
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            sans = tuple([str(v) for v in san.get_values_for_type(x509.IPAddress)]
                         + list(san.get_values_for_type(x509.DNSName)))
        except x509.ExtensionNotFound:
            sans = ()
        out.append(CertInfo(name, cert.subject.rfc4514_string(), _not_after(cert),
                            cert.serial_number, sans))
    return out


def expiring(infos: Iterable[CertInfo], now: datetime.datetime | None = None,
             within: datetime.timedelta = RENEW_BEFORE) -> list[CertInfo]:
    now = now or _now()
    return [i for i in infos if i.not_after - now < within]


def expiry_warnings(name: str) -> list[str]:
    """`warning: …` lines for certificates of the cluster that expire within 30 days."""
    directory = pki_dir(name)
    if not directory.is_dir():
        return []
    now = datetime.datetime.now(datetime.timezone.utc)
    soon = expiring(inventory(directory), now)
    if not soon:
        return []
    first = min(soon, key=lambda i: i.not_after)
    verb = "expired" if first.not_after <= now else "expires"
    return [f"warning: {len(soon)} certificate{'s' if len(soon) > 1 else ''} of {name} "
            f"{'expire' if len(soon) > 1 else verb} within 30 days (first: {first.name}, "
            f"{first.not_after:%Y-%m-%d}); run `provision certs rotate {name}`"]
