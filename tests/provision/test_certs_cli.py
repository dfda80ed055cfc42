"""`provision certs show|rotate` and the expiry warning, on rendered clusters (no etcd)."""

from __future__ import annotations

import datetime

import yaml

from provision import pki
from provision.pki import expiry_warnings
from provision.spec.build import load_cluster
from tests.conftest import CLUSTERS


def _render(run_cli, tmp_path):
    out = tmp_path / "out" / "local"
    assert run_cli("render", str(CLUSTERS / "local.yaml"), "-o", str(out)).code == 0
    return out


def test_show_lists_every_certificate_with_its_expiry(run_cli, tmp_path):
    _render(run_cli, tmp_path)
    result = run_cli("certs", "show", str(CLUSTERS / "local.yaml"))
    assert result.code == 0
    lines = result.out.splitlines()
    assert lines[0] == f"local: certificates in {pki.pki_dir('local')}"
    assert lines[1].split()[:4] == ["CERTIFICATE", "SUBJECT", "EXPIRES", "DAYS"]
    rows = [line.split()[0] for line in lines[2:]]
    assert rows[:2] == ["ca", "admin"] and len(rows) == 11
    server = next(line for line in lines if line.startswith("core-02-server"))
    assert "365" in server and "127.77.0.2" in server and "renew" not in server
    assert expiry_warnings("local") == []


def test_a_certificate_close_to_expiry_is_flagged_and_warned_about(run_cli, tmp_path):
    _render(run_cli, tmp_path)
    directory = pki.pki_dir("local")
    cluster, _ = load_cluster(CLUSTERS / "local.yaml")
    made = pki.ensure(directory, cluster)
    soon = pki.issue(made.issued["core-03-peer"].spec, made.ca_cert, made.ca_key,
                     validity=datetime.timedelta(days=12))
    (directory / "core-03-peer.pem").write_text(soon.cert_pem)
    shown = run_cli("certs", "show", "local").out
    assert "(renew!)" in next(line for line in shown.splitlines()
                              if line.startswith("core-03-peer"))
    [warning] = expiry_warnings("local")
    assert warning.startswith("warning: 1 certificate of local expires within 30 days "
                              "(first: core-03-peer, ")
    assert warning.endswith("run `provision certs rotate local`")


def test_rotate_reissues_from_the_same_ca_and_renders_again(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `out/local` is where a Vagrant cluster was rendered
    out = _render(run_cli, tmp_path)
    before = {p.name: p.read_text() for p in out.glob("user-data-*")}
    old = {i.name: i.serial for i in pki.inventory(pki.pki_dir("local"))}
    result = run_cli("certs", "rotate", str(CLUSTERS / "local.yaml"))
    assert result.code == 0, result.err
    assert "10 certificates issued anew from the same CA, in the rendered user-data" in result.out
    new = {i.name: i.serial for i in pki.inventory(pki.pki_dir("local"))}
    assert new["ca"] == old["ca"]
    assert all(new[n] != old[n] for n in old if n != "ca")
    after = {p.name: p.read_text() for p in out.glob("user-data-*")}
    assert after != before
    files = {f["path"]: f["content"] for f in yaml.safe_load(after["user-data-1"])["write_files"]}
    assert files["/etc/ssl/etcd/server.pem"] == (
        pki.pki_dir("local") / "core-01-server.pem").read_text()


def test_rotate_and_show_refuse_a_cluster_without_tls(run_cli, cluster_file):
    path = cluster_file("name: plain\ntls: false\nnodes: {count: 1}\n")
    rotate = run_cli("certs", "rotate", str(path))
    assert rotate.code == 2 and "tls: false" in rotate.err
    show = run_cli("certs", "show", str(path))
    assert show.code == 2 and "has no certificates" in show.err
