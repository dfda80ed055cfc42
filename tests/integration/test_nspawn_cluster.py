"""`provider: nspawn` end to end: three REAL systemd machines (systemd-nspawn containers
booted from the machine image), each on its own overlay, on a bridge inside a network
namespace `provision up` creates; each machine's user-data applied at boot by the applier,
etcd2 = Debian's etcd, fleet = fleetd with the systemd runner.

One cluster per module (booting is the expensive part); the tests run in file order and
the last one takes it down. Skipped, with the reason, without root, systemd-nspawn or
what the machine image needs (mmdebstrap, a Debian mirror).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from provision.providers.nspawn import layout
from tests.support.etcd import wait_for
from tests.support.nspawn_cluster import booted_cluster, nspawn_problem

pytestmark = pytest.mark.skipif(nspawn_problem() is not None, reason=str(nspawn_problem()))

FAILOVER_S = 90.0


@pytest.fixture(scope="module")
def cluster():
    with booted_cluster() as running:
        yield running


def test_every_machine_runs_systemd_etcd_and_fleet(cluster):
    status = json.loads(cluster.provision("status", cluster.name, "--output", "json").stdout)
    assert status["provider"] == "nspawn"
    assert [(n["name"], n["ip"]) for n in status["nodes"]] == [
        ("core-01", "172.17.8.101"), ("core-02", "172.17.8.102"), ("core-03", "172.17.8.103")]
    for node in status["nodes"]:
        assert node["systemd"] in ("running", "degraded"), node
        assert (node["etcd"], node["fleet"]) == ("healthy", "registered"), node
    # The user-data was applied at boot, by the image's boot unit, in each machine.
    for name in cluster.nodes:
        assert cluster.in_machine(name, "hostname") == name
        assert cluster.in_machine(name, "systemctl", "is-active",
                                  "provision-cloudinit.service") == "active"
        assert "FLEET_RUNNER=systemd" in cluster.in_machine(
            name, "systemctl", "show", "fleet.service", "--property", "Environment")
    # etcd: one cluster of three members, queried from inside the namespace.
    members = cluster.etcdctl("member", "list")
    assert members.stdout.count("started") == 3, members.stdout + members.stderr


def test_fleetctl_lists_the_three_machines(cluster):
    rows = cluster.fleetctl("list-machines", "--no-legend", "--full").splitlines()
    ids = {row.split()[0] for row in rows}
    assert ids == {layout.fleet_machine_id(cluster.name, n) for n in cluster.nodes}
    assert {row.split()[1] for row in rows} == {"172.17.8.101", "172.17.8.102", "172.17.8.103"}


def test_declared_units_run_in_the_machines_own_systemd_and_are_announced(cluster):
    one, two = cluster.where("web@1.service"), cluster.where("web@2.service")
    assert one and two and one != two  # Conflicts=web@*.service
    assert cluster.where("web-announce@1.service") == one
    keys = wait_for(lambda: (k := cluster.etcd_get("/services/web/")) and len(k) == 2 and k,
                    timeout=60, interval=0.5, message="both web instances announced")
    assert keys["/services/web/1"]["ip"] == f"172.17.8.10{one[-1]}"
    assert keys["/services/web/2"]["ip"] == f"172.17.8.10{two[-1]}"


def test_up_and_apply_again_change_nothing(cluster):
    pids = {n: cluster.machine(n).pid1() for n in cluster.nodes}
    jobs = {n: cluster.in_machine(n, "systemctl", "show", "--property", "NInstalledJobs",
                                  "--value") for n in cluster.nodes}
    applied = cluster.provision("apply", str(cluster.path))
    assert applied.returncode == 0, applied.stderr
    assert "applied 0 changes" in applied.stdout
    again = cluster.provision("up", str(cluster.path))
    assert again.returncode == 0, again.stderr
    assert "applied 0 changes" in again.stdout
    assert {n: cluster.machine(n).pid1() for n in cluster.nodes} == pids  # no reboot
    assert {n: cluster.in_machine(n, "systemctl", "show", "--property", "NInstalledJobs",
                                  "--value") for n in cluster.nodes} == jobs


def test_env_sends_fleetctl_through_ssh_with_the_clusters_key_and_host_keys(cluster):
    exports = cluster.exports()
    assert exports["FLEETCTL_TUNNEL"] == "172.17.8.101"
    assert exports["FLEETCTL_ENDPOINT"] == f"unix://{layout.FLEET_API_SOCKET}"
    assert (exports["FLEETCTL_SSH_USERNAME"], exports["FLEETCTL_STRICT_HOST_KEY_CHECKING"]) \
        == ("core", "true")
    key = cluster.state_dir / "ssh" / "id_ed25519"
    assert key.stat().st_mode & 0o777 == 0o600
    # the cluster's key, rendered into every machine's user-data for `core`
    public = key.with_name("id_ed25519.pub").read_text().split()[1]
    for name in cluster.nodes:
        assert public in cluster.in_machine(name, "cat", "/home/core/.ssh/authorized_keys")
    # each machine's host keys, as made before its first boot
    known = Path(exports["FLEETCTL_KNOWN_HOSTS_FILE"]).read_text().splitlines()
    assert sorted({line.split()[0] for line in known}) == [
        "172.17.8.101", "172.17.8.102", "172.17.8.103"]
    # `fleetctl --tunnel <machine>` inside the namespace, and the tunnel of env from the host
    listed = cluster.fleetctl_as_env_says("--tunnel", "172.17.8.102", "list-machines",
                                          "--no-legend", netns=True)
    assert listed.returncode == 0, listed.stderr
    assert sorted(line.split()[1] for line in listed.stdout.splitlines()) == [
        "172.17.8.101", "172.17.8.102", "172.17.8.103"]
    from_host = cluster.fleetctl_as_env_says("list-units", "--no-legend", "--fields", "unit")
    assert from_host.returncode == 0, from_host.stderr
    assert "web@1.service" in from_host.stdout.split()
    # host keys are checked: an empty known-hosts file makes ssh refuse the tunnel
    empty = cluster.base / "empty-known-hosts"
    empty.write_text("")
    refused = cluster.fleetctl_as_env_says("--known-hosts-file", str(empty), "list-machines")
    assert refused.returncode == 1
    assert "through the SSH tunnel to 172.17.8.101" in refused.stderr


def test_fleetctl_ssh_runs_a_command_on_the_machine_running_a_unit(cluster):
    for unit in ("web@1.service", "web@2.service"):
        for netns in (False, True):
            done = cluster.fleetctl_as_env_says("ssh", unit, "hostname", netns=netns)
            assert (done.returncode, done.stdout.strip()) == (0, cluster.where(unit)), \
                done.stderr
    # a machine by its ID prefix, and the remote command's exit status
    machine = layout.fleet_machine_id(cluster.name, "core-03")[:10]
    done = cluster.fleetctl_as_env_says("ssh", machine, "--", "sh", "-c", "hostname; exit 3")
    assert (done.returncode, done.stdout.strip()) == (3, "core-03"), done.stderr


def test_a_killed_machine_loses_its_unit_to_another_and_runs_nothing_twice_on_reboot(cluster):
    victim = cluster.where("web@1.service")
    other = cluster.where("web@2.service")
    free = next(n for n in cluster.nodes if n not in (victim, other))
    cluster.machine(victim).kill()  # a crash: no clean shutdown, fleetd's TTL runs out
    wait_for(lambda: cluster.where("web@1.service") == free, timeout=FAILOVER_S,
             interval=0.5, message=f"web@1 active on {free} after {victim} was killed")
    wait_for(lambda: cluster.etcd_get("/services/web/1").get("/services/web/1", {}).get("ip")
             == f"172.17.8.10{free[-1]}", timeout=60, interval=0.5,
             message="web@1's announcement moved")

    started = cluster.provision("node", "start", victim, "-c", cluster.name, "--timeout", "180",
                                timeout=240)
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == f"{victim}: running"
    # The rebooted machine runs nothing it ran before: web@1 stays where it moved.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert cluster.where("web@1.service") == free
        assert cluster.in_machine(victim, "systemctl", "is-active", "web@1.service") != "active"
        time.sleep(1)


def test_node_stop_powers_a_machine_off_and_its_unit_moves(cluster):
    holder = cluster.where("web@2.service")
    stopped = cluster.provision("node", "stop", holder, "-c", cluster.name)
    assert stopped.returncode == 0, stopped.stderr
    assert not cluster.machine(holder).running()
    status = json.loads(cluster.provision("status", cluster.name, "--output", "json").stdout)
    row = next(n for n in status["nodes"] if n["name"] == holder)
    assert (row["systemd"], row["etcd"]) == ("off", "stopped")
    wait_for(lambda: cluster.where("web@2.service") not in (None, holder), timeout=FAILOVER_S,
             interval=0.5, message=f"web@2 moved off {holder}")


def test_down_purge_leaves_nothing_behind(cluster):
    down = cluster.provision("down", cluster.name, "--purge", timeout=180)
    assert down.returncode == 0, down.stderr
    assert cluster.leftovers() == []
    holds = list(Path(os.environ.get("PROVISION_IMAGE_CACHE", "/var/cache/provision/images"))
                 .glob(f"*/holds/nspawn-{cluster.name}"))
    assert holds == []
