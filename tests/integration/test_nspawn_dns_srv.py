"""`provider: nspawn` with DNS SRV discovery: three REAL machines whose etcd members know
nothing of each other but a domain; they find their peers through `_etcd-server-ssl._tcp`
records that a dnsmasq serves inside the cluster's network namespace (on the YAML's
dns_server, which the machines' resolv.conf names).

One cluster for the module; the tests run in file order and the last ones take it down
(`down` first, whose journals show how each etcd stopped, then `down --purge`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from provision.providers.nspawn import layout, nameserver
from tests.support.etcd import wait_for
from tests.support.nspawn_cluster import NspawnCluster, booted_cluster, nspawn_problem

pytestmark = pytest.mark.skipif(nspawn_problem() is not None, reason=str(nspawn_problem()))

DOMAIN = "nspawn.test"
DNS_SERVER = "172.17.8.53"


@pytest.fixture(scope="module")
def cluster():
    with booted_cluster({"mode": "dns-srv", "domain": DOMAIN,
                         "dns_server": DNS_SERVER}) as running:
        yield running


def test_members_found_each_other_through_the_srv_records(cluster):
    for name in cluster.nodes:
        environment = cluster.in_machine(name, "systemctl", "show", "etcd2.service",
                                         "--property", "Environment")
        assert f"ETCD_DISCOVERY_SRV={DOMAIN}" in environment
        assert "ETCD_INITIAL_CLUSTER=" not in environment  # no peer list: only the domain
        # The machine's resolver is the cluster's DNS server, inside the namespace.
        assert cluster.in_machine(name, "cat", "/etc/resolv.conf") == f"nameserver {DNS_SERVER}"
        assert_resolves(cluster, name, f"core-03.{DOMAIN}", "172.17.8.103")
    members = cluster.etcdctl("member", "list")
    assert members.stdout.count("started") == 3, members.stdout + members.stderr
    for peer in ("core-01", "core-02", "core-03"):  # peers advertised by their SRV names
        assert f"https://{peer}.{DOMAIN}:2380" in members.stdout


def test_status_fleet_and_units_of_a_dns_srv_cluster(cluster):
    status = json.loads(cluster.provision("status", cluster.name, "--output", "json").stdout)
    assert [(n["etcd"], n["fleet"]) for n in status["nodes"]] == [("healthy", "registered")] * 3
    rows = cluster.fleetctl("list-machines", "--no-legend", "--full").splitlines()
    assert {row.split()[0] for row in rows} == {
        layout.fleet_machine_id(cluster.name, n) for n in cluster.nodes}
    one, two = cluster.where("web@1.service"), cluster.where("web@2.service")
    assert one and two and one != two


def assert_resolves(cluster: NspawnCluster, node: str, host: str, ip: str) -> None:
    """The machine's resolver answers `host` with `ip`. One UDP query of a busy machine may
    go unanswered within glibc's timeout, so the lookup is retried for a while; every
    failed attempt is shown if it never answers."""
    attempts: list[tuple[int, str, float]] = []

    def resolved() -> bool:
        started = time.monotonic()
        done = cluster.machine(node).run("getent", "hosts", host)
        attempts.append((done.returncode, done.stderr.strip(), time.monotonic() - started))
        return done.stdout.split()[:1] == [ip]

    try:
        wait_for(resolved, 60, interval=0.5, message=f"{node} resolving {host}")
    except TimeoutError as err:
        log = cluster.state_dir / nameserver.LOG_FILE
        raise AssertionError(f"{err}; attempts (status, stderr, seconds): {attempts}; "
                             f"dnsmasq log: {log.read_text(errors='replace')[-2000:]}"
                             ) from None


def _main_pid(cluster: NspawnCluster, node: str, unit: str) -> str:
    return cluster.in_machine(node, "systemctl", "show", "--property", "MainPID", "--value",
                              unit)


def test_rotate_reapplies_each_machine_and_refuses_the_old_certificates(cluster):
    """`provision certs rotate` of running machines: each applies its new user-data in
    turn, fleetd and the units keep their processes, each etcd restarts alone, and the
    admin certificate from before is refused afterwards."""
    from provision.pki import pki_dir

    pki = pki_dir(cluster.name, cluster.state_root)
    old = cluster.base / "old-admin"
    old.mkdir()
    for name in ("ca.pem", "admin.pem", "admin-key.pem"):
        shutil.copy2(pki / name, old / name)
    web = wait_for(lambda: cluster.where("web@1.service"), 60, interval=0.5,
                   message="web@1 active")
    before = {n: {u: _main_pid(cluster, n, u) for u in ("fleet.service", "etcd2.service")}
              for n in cluster.nodes}
    web_pid = _main_pid(cluster, web, "web@1.service")

    rotated = cluster.provision("certs", "rotate", cluster.name, "--timeout", "120",
                                timeout=600)
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    assert "rolled onto 3 running nodes one at a time" in rotated.stdout
    assert rotated.stderr.splitlines()[-3:] == [
        f"{n}: etcd restarted, serving" for n in cluster.nodes]

    for node in cluster.nodes:
        pids = {u: _main_pid(cluster, node, u) for u in ("fleet.service", "etcd2.service")}
        assert pids["fleet.service"] == before[node]["fleet.service"]  # fleetd went on
        assert pids["etcd2.service"] != before[node]["etcd2.service"]
        assert (cluster.in_machine(node, "cat", "/etc/ssl/etcd/server.pem")
                == (pki / f"{node}-server.pem").read_text().strip())
    assert cluster.where("web@1.service") == web
    assert _main_pid(cluster, web, "web@1.service") == web_pid
    # The admin certificate from before is refused; the new one works.
    refused = subprocess.run(
        ["ip", "netns", "exec", cluster.namespace, shutil.which("etcdctl") or "etcdctl",
         "--endpoints", "https://172.17.8.101:2379", f"--cacert={old / 'ca.pem'}",
         f"--cert={old / 'admin.pem'}", f"--key={old / 'admin-key.pem'}",
         "--command-timeout=5s", "get", "x"],
        capture_output=True, text=True, timeout=30, env={**cluster.env, "ETCDCTL_API": "3"})
    assert refused.returncode != 0
    assert cluster.etcdctl("get", "x").returncode == 0
    # fleetd works with its new certificate: the machines are still listed.
    rows = cluster.fleetctl("list-machines", "--no-legend").splitlines()
    assert len(rows) == 3


def test_down_stops_every_etcd_without_a_leadership_hand_over(cluster):
    """Members stopping together: a leader handing over to a peer that is stopping too
    would wait etcd's request timeout out (7 s of `down`). (The journal since `down`:
    rotation's restarts, one member at a time, hand leadership over as they should.)"""
    since = f"@{int(time.time()) - 1}"
    down = cluster.provision("down", cluster.name)
    assert down.returncode == 0, down.stderr
    assert down.stdout.strip() == f"{cluster.name}: 3 machines powered off"
    for name in cluster.nodes:
        journal = (cluster.machine(name).upper / "var/log/journal"
                   / layout.machine_uuid(cluster.name, name).hex)
        log = subprocess.run(["journalctl", "--directory", str(journal), "--boot", "0",
                              "--unit", "etcd2.service", "--since", since, "--output", "cat",
                              "--no-pager"],
                             capture_output=True, text=True, timeout=60).stdout
        assert "received terminated signal" in log, (name, log[-2000:])
        assert "starts leadership transfer" not in log, (name, log[-2000:])
        assert "leadership transfer starting" not in log, (name, log[-2000:])  # etcd 3.5
    assert cluster.leftovers() == [str(cluster.state_dir)]  # no dnsmasq, no namespace


def test_down_purge_leaves_nothing_behind(cluster):
    down = cluster.provision("down", cluster.name, "--purge", timeout=180)
    assert down.returncode == 0, down.stderr
    assert cluster.leftovers() == []
