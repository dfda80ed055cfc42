"""Mutual TLS in the rendered cluster: the CA and certificates `provision` keeps, and what
each node's user-data says about them (tables; no etcd)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from provision import pki
from provision.spec.build import load_cluster
from provision.userdata import validate_user_data
from tests.conftest import CLUSTERS

LARGE = CLUSTERS / "large.yaml"
TLS_FILES = {
    "/etc/ssl/etcd/ca.pem": ("0644", "root"),
    "/etc/ssl/etcd/server.pem": ("0600", "etcd:etcd"),
    "/etc/ssl/etcd/server-key.pem": ("0600", "etcd:etcd"),
    "/etc/ssl/etcd/peer.pem": ("0600", "etcd:etcd"),
    "/etc/ssl/etcd/peer-key.pem": ("0600", "etcd:etcd"),
    "/etc/ssl/etcd/fleetd.pem": ("0600", "root"),
    "/etc/ssl/etcd/fleetd-key.pem": ("0600", "root"),
    "/etc/ssl/etcd/crl.pem": ("0644", "root"),
}
CRL_DROP_IN = "/etc/systemd/system/etcd2.service.d/30-crl.conf"


def _cert(issued: pki.Issued) -> x509.Certificate:
    return x509.load_pem_x509_certificate(issued.cert_pem.encode())


def _sans(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(
        san.get_values_for_type(x509.DNSName))


def _usages(cert: x509.Certificate) -> set:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


# -- which certificates, naming what -----------------------------------------------------------

SPEC_ROWS = [
    pytest.param("etcd-1-server", {"172.17.8.101", "127.0.0.1", "etcd-1", "localhost",
                                   *(f"172.17.8.{i}" for i in range(104, 111))},
                 (True, True), id="member-server-answers-for-the-proxies-it-serves-through"),
    pytest.param("etcd-1-peer", {"172.17.8.101", "127.0.0.1", "etcd-1", "localhost",
                                 *(f"172.17.8.{i}" for i in range(104, 111))},
                 (True, True), id="member-peer"),
    pytest.param("worker-1-server", {"172.17.8.104", "127.0.0.1", "worker-1", "localhost"},
                 (True, True), id="proxy-server-only-its-own"),
    pytest.param("worker-1-fleetd", set(), (False, True), id="fleetd-client-only"),
    pytest.param("admin", set(), (False, True), id="admin-client-only"),
]


@pytest.mark.parametrize(("name", "sans", "usages"), SPEC_ROWS)
def test_cert_specs(name, sans, usages):
    cluster, _ = load_cluster(LARGE)
    spec = {s.name: s for s in pki.cert_specs(cluster)}[name]
    assert set(spec.ips) | set(spec.dns_names) == sans
    assert (spec.server, spec.client) == usages


def test_dns_srv_members_are_named_by_their_srv_target():
    cluster, _ = load_cluster(CLUSTERS / "dns-srv.yaml")
    spec = {s.name: s for s in pki.cert_specs(cluster)}["coreos-02-peer"]
    assert "coreos-02.testdomain.com" in spec.dns_names


def test_every_node_gets_three_certificates_and_there_is_one_admin():
    cluster, _ = load_cluster(LARGE)
    specs = pki.cert_specs(cluster)
    assert len(specs) == 3 * len(cluster.nodes) + 1
    assert len({s.name for s in specs}) == len(specs)


# -- kept, reused, reissued ---------------------------------------------------------------------

def test_pki_directory_and_files_are_private(tmp_path):
    cluster, _ = load_cluster(CLUSTERS / "local.yaml")
    made = pki.ensure(tmp_path / "pki", cluster)
    assert stat.S_IMODE(os.stat(made.directory).st_mode) == 0o700
    files = list(made.directory.iterdir())
    # cert + key of every node cert, admin and the CA; the (empty) revocation list
    assert len(files) == 2 * (3 * 3 + 2) + 1
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o600}


def test_certificates_are_signed_by_the_cluster_ca_and_say_what_they_are(tmp_path):
    cluster, _ = load_cluster(CLUSTERS / "local.yaml")
    made = pki.ensure(tmp_path / "pki", cluster)
    server = _cert(made.issued["core-02-server"])
    assert pki.signed_by(server, made.ca_cert)
    assert {"127.77.0.2", "core-02"} <= _sans(server)
    assert _usages(server) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert _usages(_cert(made.issued["core-02-fleetd"])) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    life = made.issued["admin"].not_after - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(days=364) < life <= pki.CERT_VALIDITY


def _serials(made: pki.ClusterPKI) -> dict[str, int]:
    return {name: issued.serial for name, issued in made.issued.items()}


def test_re_ensuring_reuses_everything(tmp_path):
    cluster, _ = load_cluster(CLUSTERS / "local.yaml")
    first = pki.ensure(tmp_path / "pki", cluster)
    again = pki.ensure(tmp_path / "pki", cluster)
    assert _serials(again) == _serials(first)
    assert again.ca_pem == first.ca_pem


def test_a_node_with_a_new_address_gets_new_certificates_and_nobody_else(tmp_path,
                                                                           cluster_file):
    path = cluster_file("name: moved\nnetwork: {cidr: 127.77.0.0/24}\nnodes: {count: 2}\n")
    before = pki.ensure(tmp_path / "pki", load_cluster(path)[0])
    path.write_text("name: moved\nnetwork: {cidr: 127.77.0.0/24}\nnodes:\n"
                    "  count: 2\n  overrides: {core-02: {ip: 127.77.0.9}}\n")
    after = pki.ensure(tmp_path / "pki", load_cluster(path)[0])
    changed = {n for n in before.issued if before.issued[n].serial != after.issued[n].serial}
    assert changed == {"core-02-server", "core-02-peer"}
    assert "127.77.0.9" in _sans(_cert(after.issued["core-02-server"]))


def test_rotate_issues_every_certificate_anew_from_the_same_ca(tmp_path):
    cluster, _ = load_cluster(CLUSTERS / "local.yaml")
    first = pki.ensure(tmp_path / "pki", cluster)
    rotated = pki.ensure(tmp_path / "pki", cluster, rotate=True)
    assert rotated.ca_pem == first.ca_pem
    assert all(rotated.issued[n].serial != first.issued[n].serial for n in first.issued)


def test_rotated_out_certificates_are_revoked_only_once_the_crl_is_published(tmp_path):
    cluster, _ = load_cluster(CLUSTERS / "local.yaml")
    directory = tmp_path / "pki"
    first = pki.ensure(directory, cluster)
    empty = first.crl_pem
    assert pki.revoked_serials(empty) == set()
    rotated = pki.ensure(directory, cluster, rotate=True)
    old = {i.serial for i in first.issued.values()}
    assert set(pki.retired(directory)) == old
    # Not yet published: the nodes still get the list they have, byte for byte.
    assert rotated.crl_pem == empty and rotated.node("core-01").crl_pem == empty
    published = pki.publish_crl(directory)
    assert pki.revoked_serials(published) == old
    crl = x509.load_pem_x509_crl(published.encode())
    assert crl.is_signature_valid(first.ca_cert.public_key())
    assert pki.ensure(directory, cluster).node("core-02").crl_pem == published
    # A second rotation retires the second generation as well; re-ensuring retires nothing.
    third = pki.ensure(directory, cluster, rotate=True)
    assert set(pki.retired(directory)) == old | {i.serial for i in rotated.issued.values()}
    pki.ensure(directory, cluster)
    assert not set(pki.retired(directory)) & {i.serial for i in third.issued.values()}
    # Expired certificates need no revoking: they drop off the list.
    later = datetime.datetime.now(datetime.timezone.utc) + pki.CERT_VALIDITY * 2
    assert pki.retired(directory, later) == {}


def test_a_certificate_close_to_expiry_or_from_another_ca_is_reissued(tmp_path):
    cluster, _ = load_cluster(CLUSTERS / "local.yaml")
    directory = tmp_path / "pki"
    first = pki.ensure(directory, cluster)
    soon = pki.issue(first.issued["core-01-server"].spec, first.ca_cert, first.ca_key,
                     validity=datetime.timedelta(days=20))
    other_ca = pki.new_ca("other")
    foreign = pki.issue(first.issued["core-02-server"].spec, *other_ca)
    for name, issued in (("core-01-server", soon), ("core-02-server", foreign)):
        (directory / f"{name}.pem").write_text(issued.cert_pem)
        (directory / f"{name}-key.pem").write_text(issued.key_pem)
    again = pki.ensure(directory, cluster)
    assert again.issued["core-01-server"].serial not in (soon.serial,
                                                         first.issued["core-01-server"].serial)
    assert again.issued["core-02-server"].serial != foreign.serial
    assert pki.signed_by(_cert(again.issued["core-02-server"]), first.ca_cert)
    assert [i.name for i in pki.expiring(pki.inventory(directory))] == []


def test_inventory_lists_the_ca_first_then_admin_then_nodes(tmp_path):
    cluster, _ = load_cluster(CLUSTERS / "local.yaml")
    pki.ensure(tmp_path / "pki", cluster)
    names = [i.name for i in pki.inventory(tmp_path / "pki")]
    assert names[:3] == ["ca", "admin", "core-01-fleetd"]
    assert len(names) == 11


# -- the rendered user-data -------------------------------------------------------------------

def _render(run_cli, tmp_path, example: str, *extra: str) -> dict[str, dict]:
    out = tmp_path / "out"
    assert run_cli("render", str(CLUSTERS / example), "-o", str(out), *extra).code == 0
    return {p.name: yaml.safe_load(p.read_text()) for p in out.glob("user-data-*")}


ETCD2_TLS = {
    "cert-file": "/etc/ssl/etcd/server.pem", "key-file": "/etc/ssl/etcd/server-key.pem",
    "trusted-ca-file": "/etc/ssl/etcd/ca.pem", "client-cert-auth": True,
    "peer-cert-file": "/etc/ssl/etcd/peer.pem", "peer-key-file": "/etc/ssl/etcd/peer-key.pem",
    "peer-trusted-ca-file": "/etc/ssl/etcd/ca.pem", "peer-client-cert-auth": True,
}
FLEET_TLS = {"etcd-cafile": "/etc/ssl/etcd/ca.pem", "etcd-certfile": "/etc/ssl/etcd/fleetd.pem",
             "etcd-keyfile": "/etc/ssl/etcd/fleetd-key.pem"}

NODE_ROWS = [
    pytest.param("large.yaml", "user-data-1", True, "https://", id="member"),
    pytest.param("large.yaml", "user-data-4", True, "https://", id="proxy"),
    pytest.param("custom-etcd.yaml", "user-data-2", True, "https://", id="custom-member"),
    # The discovery etcd bootstraps over plain http (etcd's discovery client shows no
    # certificate); its fleetd still talks TLS to the members.
    pytest.param("custom-etcd.yaml", "user-data-1", False, "http://", id="custom-discovery"),
    pytest.param("token.yaml", "user-data-1", True, "https://", id="token-member"),
    pytest.param("dns-srv.yaml", "user-data-1", True, "https://", id="dns-srv-member"),
]


@pytest.mark.parametrize(("example", "node", "etcd_tls", "listen"), NODE_ROWS)
def test_each_role_gets_tls_keys_https_urls_and_its_files(run_cli, tmp_path, example, node,
                                                          etcd_tls, listen):
    config = _render(run_cli, tmp_path, example)[node]
    etcd2, fleet = config["coreos"]["etcd2"], config["coreos"]["fleet"]
    assert etcd2["listen-client-urls"].startswith(listen)
    if etcd_tls:
        assert {k: etcd2.get(k) for k in ETCD2_TLS} == ETCD2_TLS
    else:
        assert not set(ETCD2_TLS) & set(etcd2)
    assert {k: fleet.get(k) for k in FLEET_TLS} == FLEET_TLS
    assert all(url.startswith("https://") for url in fleet["etcd-servers"].split(","))
    files = {f["path"]: (f["permissions"], f["owner"]) for f in config["write_files"]
             if f["path"].startswith("/etc/ssl/etcd/")}
    assert files == TLS_FILES
    # A member checks clients and peers against the revocation list (a drop-in: cloudinit's
    # etcd2 section has no key for it); a gateway and the plain discovery etcd do not.
    drop_ins = [f["content"] for f in config["write_files"] if f["path"] == CRL_DROP_IN]
    if etcd_tls and "proxy" not in etcd2:
        assert drop_ins == ["[Service]\nEnvironment=ETCD_CLIENT_CRL_FILE=/etc/ssl/etcd/crl.pem\n"
                            "Environment=ETCD_PEER_CRL_FILE=/etc/ssl/etcd/crl.pem\n"]
    else:
        assert drop_ins == []


@pytest.mark.parametrize("example", ["local.yaml", "large.yaml", "custom-etcd.yaml",
                                     "dns-srv.yaml", "token.yaml", "vagrant.yaml"])
def test_tls_user_data_passes_coreos_cloudinits_validator_without_a_finding(run_cli, tmp_path,
                                                                             example):
    out = tmp_path / "out"
    assert run_cli("render", str(CLUSTERS / example), "-o", str(out)).code == 0
    for path in out.glob("user-data-*"):
        assert validate_user_data(path.read_text(), str(path)) == []


def test_rendering_again_writes_the_same_user_data(run_cli, tmp_path):
    out = tmp_path / "out"
    assert run_cli("render", str(CLUSTERS / "local.yaml"), "-o", str(out)).code == 0
    first = {p.name: p.read_text() for p in out.glob("user-data-*")}
    assert run_cli("render", str(CLUSTERS / "local.yaml"), "-o", str(out)).code == 0
    assert {p.name: p.read_text() for p in out.glob("user-data-*")} == first


def test_keys_stay_out_of_the_output_directory_unless_asked(run_cli, tmp_path):
    out = tmp_path / "out"
    assert run_cli("render", str(CLUSTERS / "local.yaml"), "-o", str(out)).code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json", "user-data-1", "user-data-2", "user-data-3"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o600}
    assert (pki.pki_dir("local") / "ca-key.pem").is_file()
    asked = tmp_path / "mine"
    assert run_cli("render", str(CLUSTERS / "local.yaml"), "-o", str(out),
                   "--pki-dir", str(asked)).code == 0
    assert (asked / "ca-key.pem").is_file()


def test_the_user_data_carries_the_nodes_own_certificates(run_cli, tmp_path):
    configs = _render(run_cli, tmp_path, "local.yaml")
    made = pki.ensure(pki.pki_dir("local"), load_cluster(CLUSTERS / "local.yaml")[0])
    files = {f["path"]: f["content"] for f in configs["user-data-2"]["write_files"]}
    assert files["/etc/ssl/etcd/server.pem"] == made.issued["core-02-server"].cert_pem
    assert files["/etc/ssl/etcd/fleetd-key.pem"] == made.issued["core-02-fleetd"].key_pem
    assert files["/etc/ssl/etcd/ca.pem"] == made.ca_pem
    assert "admin" not in str(configs)  # the admin certificate stays on the host
    assert ipaddress.ip_address("127.77.0.2") in [
        ip for ip in _cert(made.issued["core-02-server"]).extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)]


def test_tls_false_renders_plain_http_and_is_warned_about_once(run_cli, cluster_file, tmp_path):
    path = cluster_file("name: plain\ntls: false\nnodes: {count: 2}\n")
    result = run_cli("validate", str(path))
    assert result.code == 0
    assert result.err.count("tls: false") == 1
    assert "anyone" in result.err and f"{path}:2:" in result.err
    out = tmp_path / "out"
    assert run_cli("render", str(path), "-o", str(out)).code == 0
    config = yaml.safe_load((out / "user-data-1").read_text())
    assert config["coreos"]["etcd2"]["listen-client-urls"].startswith("http://")
    assert not set(ETCD2_TLS) & set(config["coreos"]["etcd2"])
    assert "write_files" not in config
    assert not pki.pki_dir("plain").exists()


def test_tls_must_be_a_boolean(run_cli, cluster_file):
    result = run_cli("validate", str(cluster_file("name: x\ntls: maybe\nnodes: {count: 1}\n")))
    assert result.code == 2
    assert "must be true" in result.err
