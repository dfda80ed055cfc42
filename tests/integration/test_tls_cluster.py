"""A local cluster with mutual TLS (the default), attacked by an unprivileged local user.

The hostile case: a user with no certificate (uid 65534) writes `unit/<hash>` and
`job/pwn.service` into a node's etcd, the way fleet's API would. With TLS every
attempt is refused and the unit never runs; on a `tls: false` cluster the same script
gets its unit run as root (the control: the attack is real). A certificate from another
cluster's CA is refused as well; the admin certificate from `provision env` works.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from provision.providers.local import provider
from tests.support.etcd import wait_for

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
SETPRIV = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as uid 65534")

# Runs as uid 65534: submit a unit through each etcd endpoint, first as plain http (no
# certificate), then over TLS with a CA and client certificate of its own making.
HOSTILE = textwrap.dedent("""
    import json, sys, tempfile
    sys.path[:0] = [{repo!r}, sys.argv[4]]
    from fleetd.job import JobState
    from fleetd.registry.etcd import Etcd, EtcdTLS
    from fleetd.registry.registry import Registry
    from fleetd.unit.unitfile import parse_unit_file

    endpoints, marker, pki_dir = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
    unit = parse_unit_file("[Service]\\nExecStart=/bin/sh -c 'id -u > " + marker
                           + "; exec sleep 600'\\n")
    results = {{}}
    try:
        open(pki_dir + "/admin-key.pem").read()
        results["read admin key"] = "ok"
    except OSError as err:
        results["read admin key"] = type(err).__name__

    def attempt(name, urls, tls=None):
        try:
            etcd = Etcd(urls, timeout=2, tls=tls)
            Registry(etcd).create_job("pwn.service", unit, JobState.LAUNCHED)
            results[name] = "ok"
        except Exception as err:
            results[name] = type(err).__name__ + ": " + str(err)[:200]

    for url in endpoints:
        attempt("plain " + url, [url.replace("https://", "http://")])
    scratch = tempfile.mkdtemp()
    from provision.pki import CertSpec, issue, new_ca
    from cryptography.hazmat.primitives import serialization
    ca, key = new_ca("elsewhere")
    mine = issue(CertSpec("x", "admin@elsewhere"), ca, key)
    files = {{"ca.pem": ca.public_bytes(serialization.Encoding.PEM).decode(),
              "c.pem": mine.cert_pem, "k.pem": mine.key_pem}}
    for name, text in files.items():
        open(scratch + "/" + name, "w").write(text)
    # Trusting any server (its own CA cannot verify the members'), showing its own cert.
    for url in endpoints:
        if url.startswith("https://"):
            attempt("foreign-ca " + url, [url], EtcdTLS(scratch + "/ca.pem",
                    scratch + "/c.pem", scratch + "/k.pem"))
    print(json.dumps(results))
""")


def _libraries_for_anyone() -> str:
    """A copy of the client libraries the hostile script imports, readable by uid 65534:
    this interpreter's own may live where that user cannot go (e.g. under /root)."""
    import fleetd.registry.registry  # noqa: F401 - load what the script will need
    import provision.pki  # noqa: F401

    site = next(p for p in sys.path if p.endswith("site-packages"))
    tops = {Path(f).relative_to(site).parts[0] for m in list(sys.modules.values())
            if (f := getattr(m, "__file__", None)) and f.startswith(site + os.sep)}
    copy = Path(tempfile.mkdtemp(prefix="hostile-libs-"))
    copy.chmod(0o755)
    for top in tops - {"_distutils_hack"}:
        if top.startswith("__editable__"):
            continue
        source = Path(site) / top
        if source.is_dir():
            shutil.copytree(source, copy / top)
        else:
            shutil.copy2(source, copy / top)
    for path in copy.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return str(copy)


def _hostile(endpoints: list[str], marker: Path, pki_dir: Path) -> dict[str, str]:
    script = HOSTILE.format(repo=str(REPO))
    libraries = _libraries_for_anyone()
    try:
        result = subprocess.run([*SETPRIV, sys.executable, "-c", script, ",".join(endpoints),
                                 str(marker), str(pki_dir), libraries],
                                capture_output=True, text=True, timeout=120, cwd="/",
                                env={"PATH": os.environ["PATH"], "HOME": "/nonexistent"})
    finally:
        shutil.rmtree(libraries, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _admin_etcdctl(env, name: str, *args: str) -> subprocess.CompletedProcess:
    """etcdctl as the README's tour runs it: after `eval "$(provision env NAME)"`."""
    shell = (f'eval "$({sys.executable} -m provision.cli env {name})" && '
             f'etcdctl --command-timeout=5s {" ".join(args)}')
    return subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PROVISION_STATE": str(env.state_root)})


def test_a_local_user_without_the_clusters_keys_runs_nothing(env):
    path, name = env.cluster("local.yaml", units=[])
    assert env.up(path) == 0
    state_dir = env.state_dir(name)
    os.chmod(env.base, 0o755)  # let uid 65534 reach the state (the PKI itself stays 0700)
    os.chmod(env.state_root, 0o755)
    os.chmod(state_dir, 0o755)
    marker = env.base / "pwned"
    endpoints = [f"https://{row['ip']}:2379" for row in provider.status(
        name, state_root=env.state_root)]

    results = _hostile(endpoints, marker, state_dir / "pki")

    assert results.pop("read admin key") == "PermissionError"
    assert len(results) == 2 * len(endpoints)
    refused = {k: v for k, v in results.items() if v.startswith("RegistryUnavailable")}
    assert refused == results, results
    # Nothing was written: the admin certificate reads fleet's keys, and sees no pwn.
    listed = _admin_etcdctl(env, name, "get", "--prefix", "--keys-only", "/_coreos.com/fleet/")
    assert listed.returncode == 0, listed.stderr
    keys = [k for k in listed.stdout.split() if k]
    assert sum("/machine/" in k for k in keys) == 3  # the admin certificate works
    assert not [k for k in keys if "pwn" in k or "/unit/" in k]
    assert not marker.exists()
    # Every node's etcd asks for a certificate: a plain client is turned away from each.
    plain = _admin_etcdctl(env, name, "--endpoints", endpoints[1].replace("https", "http"),
                           "--cacert=", "--cert=", "--key=", "get", "x")
    assert plain.returncode != 0


def test_the_same_attack_on_a_tls_false_cluster_runs_as_root(env):
    """The control: without TLS the hostile user's unit runs (why TLS is the default)."""
    path, name = env.cluster("local.yaml", units=[], tls=False)
    assert env.up(path) == 0
    state_dir = env.state_dir(name)
    for directory in (env.base, env.state_root, state_dir):
        os.chmod(directory, 0o755)
    marker = env.base / "pwned"
    endpoints = [f"http://{row['ip']}:2379" for row in provider.status(
        name, state_root=env.state_root)]
    results = _hostile(endpoints[:1], marker, state_dir / "pki")
    assert results[f"plain {endpoints[0]}"] == "ok"
    wait_for(lambda: marker.exists() and marker.read_text().strip() != "", timeout=30)
    assert marker.read_text().strip() == "0"  # root


def _copy_client(files, directory: Path):  # ClientFiles -> EtcdTLS
    from fleetd.registry.etcd import EtcdTLS

    directory.mkdir()
    for source in (files.ca_file, files.cert_file, files.key_file):
        shutil.copy2(source, directory / Path(source).name)
    return EtcdTLS(*(str(directory / Path(f).name)
                     for f in (files.ca_file, files.cert_file, files.key_file)))


def _admin_works(tls, url: str) -> bool:
    from fleetd.registry.etcd import Etcd, RegistryUnavailable

    etcd = Etcd([url], timeout=2, tls=tls)
    try:
        etcd.get("/probe")
        return True
    except RegistryUnavailable:
        return False
    finally:
        etcd.close()


def test_rotate_rolls_new_certificates_onto_a_running_cluster_without_a_restart(env):
    """New certificates everywhere, the old ones refused afterwards; no unit restarts and
    fleetd keeps working: only each member's etcd is restarted (one at a time), to end the
    connections made with the old certificates."""
    from fleetd.registry.etcd import Etcd
    from fleetd.registry.registry import Registry
    from provision import pki
    from provision.providers.local.rotate import served_serial

    path, name = env.cluster("local.yaml")
    up = subprocess.run([sys.executable, "-m", "provision.cli", "up", str(path)],
                        capture_output=True, text=True, timeout=180, cwd=env.base,
                        env={**os.environ, "PROVISION_STATE": str(env.state_root)})
    assert up.returncode == 0, up.stderr
    rows = provider.status(name, state_root=env.state_root)
    urls = [f"https://{row['ip']}:2379" for row in rows]
    pids = {row["name"]: row["pids"] for row in rows}
    directory = env.state_dir(name) / "pki"
    files = pki.client_files(directory)
    old_admin = _copy_client(files, env.base / "old-admin")
    assert _admin_works(old_admin, urls[0])
    before = {row["name"]: served_serial(f"https://{row['ip']}:2379", files) for row in rows}
    etcd = Etcd(urls, timeout=3, tls=env.tls(name))
    try:
        registry = Registry(etcd)
        units = sorted((s.name, s.machine) for s in registry.states()
                       if s.status.active == "active")
        assert len(units) == 4  # web@1-2 and their sidekicks

        rotated = subprocess.run(
            [sys.executable, "-m", "provision.cli", "certs", "rotate", name],
            capture_output=True, text=True, timeout=180,
            env={**os.environ, "PROVISION_STATE": str(env.state_root)})
        assert rotated.returncode == 0, rotated.stderr
        assert "rolled onto 3 running nodes one at a time" in rotated.stdout
        assert rotated.stderr.splitlines() == [
            "core-01: new certificates in place", "core-02: new certificates in place",
            "core-03: new certificates in place", "revocation list published to 3 nodes",
            "core-01: etcd restarted, serving", "core-02: etcd restarted, serving",
            "core-03: etcd restarted, serving"]

        issued = {i.name: i.serial for i in pki.inventory(directory)}
        for row in rows:  # each etcd serves its new certificate
            served = served_serial(f"https://{row['ip']}:2379", pki.client_files(directory))
            assert served == issued[f"{row['name']}-server"] != before[row["name"]]
        # The old admin certificate is refused by every member; the new one works.
        assert [_admin_works(old_admin, url) for url in urls] == [False] * 3
        assert all(_admin_works(env.tls(name), url) for url in urls)
        retired = pki.revoked_serials((directory / "crl.pem").read_text())
        assert before["core-02"] in retired
        after_rows = provider.status(name, state_root=env.state_root)
        for row in after_rows:  # only etcd was restarted
            now = dict(row["pids"])
            assert now.pop("etcd2.service") != pids[row["name"]]["etcd2.service"]
            assert now == {u: p for u, p in pids[row["name"]].items() if u != "etcd2.service"}
        assert all(r["etcd"] == "healthy" and r["fleet"] == "registered" for r in after_rows)
        # The units stayed where they were, each on one machine: nothing restarted or moved.
        assert sorted((s.name, s.machine) for s in registry.states()
                      if s.status.active == "active") == units
    finally:
        etcd.close()
    # fleetd works on with its new certificate: a new unit is scheduled and runs.
    started = subprocess.run(
        ["bash", "-c", f'eval "$({sys.executable} -m provision.cli env {name})" && '
         f"{sys.executable} -m fleetd.fleetctl.main start --no-block web@3.service"],
        capture_output=True, text=True, timeout=60, cwd=env.base / "units",
        env={**os.environ, "PROVISION_STATE": str(env.state_root)})
    assert started.returncode == 0, started.stderr
    etcd = Etcd(urls, timeout=3, tls=env.tls(name))
    try:
        wait_for(lambda: any(s.name == "web@3.service" and s.status.active == "active"
                             for s in Registry(etcd).states()), 60,
                 message="web@3.service active")
    finally:
        etcd.close()
    # A node started afterwards boots from the re-rendered user-data: the new certificates.
    node_cert = env.state_dir(name) / "nodes" / "core-02" / "root" / "etc" / "ssl" / "etcd"
    assert (node_cert / "server.pem").read_text() == (directory / "core-02-server.pem").read_text()
    assert (node_cert / "crl.pem").read_text() == (directory / "crl.pem").read_text()
