"""`provider: nspawn` with DNS SRV discovery: three REAL machines whose etcd members know
nothing of each other but a domain; they find their peers through `_etcd-server-ssl._tcp`
records that a dnsmasq serves inside the cluster's network namespace (on the YAML's
dns_server, which the machines' resolv.conf names).

One cluster for the module; the tests run in file order and the last ones take it down
(`down` first, whose journals show how each etcd stopped, then `down --purge`).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from provision.providers.nspawn import layout
from tests.support.nspawn_cluster import booted_cluster, nspawn_problem

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
        assert cluster.in_machine(name, "getent", "hosts", f"core-03.{DOMAIN}").split()[:1] \
            == ["172.17.8.103"]
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


def test_down_stops_every_etcd_without_a_leadership_hand_over(cluster):
    """Members stopping together: a leader handing over to a peer that is stopping too
    would wait etcd's request timeout out (7 s of `down`)."""
    down = cluster.provision("down", cluster.name)
    assert down.returncode == 0, down.stderr
    assert down.stdout.strip() == f"{cluster.name}: 3 machines powered off"
    for name in cluster.nodes:
        journal = (cluster.machine(name).upper / "var/log/journal"
                   / layout.machine_uuid(cluster.name, name).hex)
        log = subprocess.run(["journalctl", "--directory", str(journal), "--boot", "0",
                              "--unit", "etcd2.service", "--output", "cat", "--no-pager"],
                             capture_output=True, text=True, timeout=60).stdout
        assert "received terminated signal" in log, (name, log[-2000:])
        assert "starts leadership transfer" not in log, (name, log[-2000:])
        assert "leadership transfer starting" not in log, (name, log[-2000:])  # etcd 3.5
    assert cluster.leftovers() == [str(cluster.state_dir)]  # no dnsmasq, no namespace


def test_down_purge_leaves_nothing_behind(cluster):
    down = cluster.provision("down", cluster.name, "--purge", timeout=180)
    assert down.returncode == 0, down.stderr
    assert cluster.leftovers() == []
