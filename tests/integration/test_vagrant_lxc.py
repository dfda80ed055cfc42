"""Real Vagrant, real machines: 3 vagrant-lxc containers booting Debian's systemd, from
the box `provision box build` makes, on a bridge inside a network namespace this test
creates (no uplink: nothing inside can download anything), brought up by the real
`vagrant up` with the project's Vagrantfile and a cluster rendered from a copy of
clusters/vagrant-lxc.yaml.

Each machine is provisioned the way a VirtualBox/libvirt user's debian/bookworm64 machine
is (the box is a plain bookworm box + Vagrant's user): the payload made on the host is
uploaded with the node's user-data and installed offline; the applier then starts etcd2
(Debian's etcd) and fleet (fleetd, systemd runner). Skipped, with the reason, without
root, vagrant + vagrant-lxc, lxc or mmdebstrap (CI installs them).

Wall time (2 cores): box and payload cached, ~2-3 min (up ~1 min, provision again
~30 s, destroy ~20 s); a cold box adds ~75 s.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from provision.cli import main as provision_main
from tests.conftest import CLUSTERS, REPO
from tests.support.etcd import wait_for
from tests.support.vagrant_lxc import lxc_cluster, vagrant_lxc_problem

pytestmark = pytest.mark.skipif(vagrant_lxc_problem() is not None,
                                reason=str(vagrant_lxc_problem()))

HELLO = """\
[Unit]
Description=hello from fleet
[Service]
ExecStart=/bin/sleep infinity
[X-Fleet]
MachineMetadata=disk=ssd
"""


def _etcdctl() -> str:
    etcd = shutil.which("etcd")
    beside = Path(etcd).parent / "etcdctl" if etcd else None
    return str(beside) if beside and beside.exists() else shutil.which("etcdctl") or "etcdctl"


@pytest.fixture(scope="module")
def cluster():
    from provision.box.build import add_box, ensure_box
    from provision.box.payload import prepare_machines

    place = Path(tempfile.mkdtemp(prefix="pt-vagrant-lxc-"))
    name = f"vt{os.getpid() % 100000}"  # LXC container names are host-wide
    source = place / f"{name}.yaml"
    source.write_text((CLUSTERS / "vagrant-lxc.yaml").read_text()
                      .replace("\nname: lxc\n", f"\nname: {name}\n"))
    shutil.copytree(CLUSTERS / "units", place / "units")
    assert provision_main(["render", str(source), "-o", str(place / "out")]) == 0
    manifest = place / "out" / "manifest.json"
    home = place / "vagrant.d"
    box = ensure_box("lxc")
    add_box(box, env={"VAGRANT_HOME": str(home)})
    payload = prepare_machines(manifest)
    made = lxc_cluster(place, manifest, REPO / "Vagrantfile", f"pt-{name}", home)
    made.payload_key = payload.key
    try:
        started = time.monotonic()
        # No --provider: the manifest's provider (lxc) is the first the Vagrantfile lists.
        made.vagrant("up")
        print(f"vagrant up of 3 lxc machines: {time.monotonic() - started:.0f}s")
        yield made
    finally:
        made.teardown()


def nodes(cluster) -> list[dict]:  # noqa: ANN001 - LxcCluster
    return json.loads(cluster.manifest.read_text())["nodes"]


def main_pids(cluster, node: str) -> str:  # noqa: ANN001
    return cluster.ssh(node, "systemctl show --property MainPID --value etcd2.service "
                             "fleet.service").stdout.split()


def test_each_machines_etcd_is_debians_and_healthy(cluster):
    endpoints = ",".join(f"http://{n['ip']}:2379" for n in nodes(cluster))
    health = wait_for(lambda: (out := cluster.in_netns(
        _etcdctl(), "--endpoints", endpoints, "endpoint", "health")).returncode == 0 and out,
        90, interval=1, message="every etcd member healthy")
    assert health.stdout.count("is healthy") + health.stderr.count("is healthy") == 3
    members = cluster.in_netns(_etcdctl(), "--endpoints", endpoints, "member", "list").stdout
    for node in nodes(cluster):
        assert f"{node['name']}, http://{node['ip']}:2380, http://{node['ip']}:2379" in members
        exe = cluster.ssh(node["name"], "sudo readlink /proc/$(systemctl show --property "
                                        "MainPID --value etcd2.service)/exe").stdout.strip()
        assert exe == "/usr/bin/etcd"


def test_machines_were_provisioned_without_a_way_out(cluster):
    # The namespace has no default route: the machines' gateway (the bridge) leads nowhere.
    assert cluster.in_netns("ip", "route", "show", "default").stdout.strip() == ""
    got = cluster.ssh("core-01", "cat /opt/provision/.payload; sudo ls /var/lib/provision; "
                                 "systemctl is-enabled provision-cloudinit.service; "
                                 "systemctl is-enabled etcd.service || true")
    # The payload the host prepared, installed; the boot unit will apply the user-data
    # at every boot; Debian's own etcd.service (and its etcd2 alias) stays off.
    assert got.stdout.split() == [cluster.payload_key, "user-data", "enabled", "disabled"], \
        got


def test_three_fleet_machines_registered_with_the_systemd_runner(cluster):
    def listed() -> list[list[str]]:
        out = cluster.ssh("core-01", "sudo fleetctl list-machines --no-legend").stdout
        rows = [line.split() for line in out.splitlines() if line.strip()]
        return rows if len(rows) == 3 else []

    rows = wait_for(listed, 90, interval=1, message="3 fleet machines")
    assert sorted((r[1], r[2]) for r in rows) == [
        ("172.17.8.101", "provider=lxc"), ("172.17.8.102", "provider=lxc"),
        ("172.17.8.103", "disk=ssd,provider=lxc")]
    for node in nodes(cluster):
        environment = cluster.ssh(node["name"], "systemctl show --property Environment "
                                                "fleet.service").stdout
        assert "FLEET_RUNNER=systemd" in environment


def test_fleetctl_in_a_machine_starts_a_unit_in_its_machines_systemd(cluster):
    started = cluster.ssh("core-01", f"printf '{HELLO}' > /tmp/vagrant-hello.service && "
                                     "cd /tmp && sudo fleetctl start vagrant-hello.service",
                          timeout=180)
    assert started.returncode == 0, started.stderr
    assert "launched on" in started.stdout + started.stderr
    # disk=ssd: core-03, by its own systemd (not as fleetd's child).
    wait_for(lambda: cluster.ssh("core-03", "systemctl is-active vagrant-hello.service")
             .stdout.strip() == "active", 60, interval=1, message="hello active on core-03")
    assert cluster.ssh("core-03", "systemctl show --property ControlGroup --value "
                                  "vagrant-hello.service").stdout.strip() == \
        "/system.slice/vagrant-hello.service"


def test_provisioning_again_changes_nothing(cluster):
    before = {n["name"]: main_pids(cluster, n["name"]) for n in nodes(cluster)}
    again = cluster.vagrant("provision")
    assert again.stdout.count("/var/lib/provision/user-data: nothing to change") == 3
    assert "installing" not in again.stdout
    assert {n["name"]: main_pids(cluster, n["name"]) for n in nodes(cluster)} == before


def test_a_machine_halted_and_up_again_comes_back_from_its_boot_unit(cluster):
    """Provisioners do not run again; the boot unit applies the user-data at boot (its
    etcd2/fleet units live in /run) and the machine rejoins etcd and fleet."""
    container = next(n["vagrant"]["lxc_container"] for n in nodes(cluster)
                     if n["name"] == "core-02")
    cluster.vagrant("halt", "core-02")
    assert cluster.in_netns("lxc-info", "-n", container, "-sH").stdout.strip() == "STOPPED"
    up = cluster.vagrant("up", "core-02")
    assert "Running provisioner" not in up.stdout
    got = cluster.ssh("core-02", "systemctl is-active provision-cloudinit.service "
                                 "etcd2.service fleet.service").stdout.split()
    assert got == ["active", "active", "active"]
    wait_for(lambda: "172.17.8.102" in cluster.ssh(
        "core-01", "sudo fleetctl list-machines --no-legend").stdout, 90, interval=1,
        message="core-02 registered again")


def test_destroy_leaves_no_container_veth_or_directory(cluster):
    started = time.monotonic()
    cluster.vagrant("destroy", "-f")
    print(f"vagrant destroy -f of 3 lxc machines: {time.monotonic() - started:.0f}s")
    assert cluster.leftovers() == {"containers": [], "lxc dirs": [], "links": []}
    assert not list((cluster.directory / ".vagrant" / "machines").glob("*/lxc/id"))
    payloads = [p for c in cluster.containers
                for p in Path("/sys/fs/cgroup").glob(f"*/lxc.payload.{c}")]
    assert payloads == []
    cluster.network.delete()
    assert not cluster.network.exists()
