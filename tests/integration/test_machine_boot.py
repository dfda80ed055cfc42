"""A rendered node's user-data applied AT BOOT on a REAL machine: the image's boot unit
(provision-cloudinit.service) runs the applier before etcd2 and fleet, which come up as
CoreOS ran them — a real etcd (Debian's /usr/bin/etcd) and this project's fleetd with the
systemd runner, whose units run in the machine's own systemd.

The machine boots the project's image on an overlay whose upper directory holds, before
the first boot, what a provider puts there: the node's user-data at
/var/lib/provision/user-data and its address in /etc/environment (COREOS_*_IPV4). The
address itself is put on the machine's loopback by a small unit (the machine has a
private network with no other interface). Skipped, with the reason, without root,
systemd-nspawn or mmdebstrap.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from provision.cli.root import main as provision_main
from provision.machine.seed import seed_files
from tests.support.etcd import wait_for
from tests.support.machine import PROVISION, booted, machine_image, machine_problem  # noqa: F401

pytestmark = pytest.mark.skipif(machine_problem() is not None,
                                reason=str(machine_problem()))

IP = "172.17.8.101"
CLUSTER = """\
name: onebox
provider: vagrant
network: {cidr: 172.17.8.0/24, start: 101}
nodes: {count: 1, name_prefix: core}
etcd:
  discovery: {mode: static, cluster_token: onebox-etcd}
flannel: {interface: $public_ipv4, config: {Network: 10.1.0.0/16}}
fleet: {public_ip: $public_ipv4, metadata: {region: test}, agent_ttl: 5s}
ssh_authorized_keys:
  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBootTestKey0000000000000000000000000000 t@t
"""
ADDRESS_UNIT = f"""\
[Unit]
Description=the node's address (tests: the machine has no other interface)
DefaultDependencies=no
Before=provision-cloudinit.service network.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/ip address add {IP}/32 dev lo
[Install]
WantedBy=multi-user.target
"""
HELLO = "[Unit]\nDescription=hello from fleet\n[Service]\nExecStart=/bin/sleep infinity\n"


# etcd asks every client for a certificate: the node's own (its fleetd's), as root.
TLS_FLAGS = {"3": ["--cacert", "/etc/ssl/etcd/ca.pem", "--cert", "/etc/ssl/etcd/fleetd.pem",
                   "--key", "/etc/ssl/etcd/fleetd-key.pem"],
             "2": ["--ca-file", "/etc/ssl/etcd/ca.pem", "--cert-file", "/etc/ssl/etcd/fleetd.pem",
                   "--key-file", "/etc/ssl/etcd/fleetd-key.pem"]}


def etcdctl(machine, *args: str, api: str = "3"):  # Machine
    return machine.run("env", f"ETCDCTL_API={api}", "etcdctl", *TLS_FLAGS[api],
                       "--endpoints", f"https://{IP}:2379", *args, check=False)


@pytest.fixture(scope="module")
def machine(machine_image, tmp_path_factory):  # noqa: F811 - the fixture imported above
    rendered = tmp_path_factory.mktemp("onebox")
    (rendered / "onebox.yaml").write_text(CLUSTER)
    assert provision_main(["render", str(rendered / "onebox.yaml"), "-o",
                           str(rendered / "out")]) == 0
    # nspawn puts its overlay work directory beside the upper one: both in one place.
    place = Path(tempfile.mkdtemp(prefix="pt-machine-"))
    upper = place / "upper"
    try:
        # What a provider writes before the first boot.
        user_data = (rendered / "out" / "user-data-1").read_text()
        for path, (content, mode) in seed_files(user_data, IP).items():
            target = upper / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            target.chmod(mode)
        units = upper / "etc/systemd/system"
        (units / "multi-user.target.wants").mkdir(parents=True)
        (units / "test-address.service").write_text(ADDRESS_UNIT)
        (units / "multi-user.target.wants/test-address.service").symlink_to(
            "../test-address.service")
        with booted(machine_image, upper=upper) as made:
            yield made
    finally:
        shutil.rmtree(place, ignore_errors=True)


def test_the_boot_unit_applied_the_user_data_before_etcd2_and_fleet(machine):
    assert machine.unit("provision-cloudinit.service", "Result") == "success"
    assert machine.out("hostname") == "core-01"
    log = machine.out("journalctl", "--boot", "--no-pager", "--output", "cat",
                      "--unit", "provision-cloudinit.service")
    assert "etcd2.service: start (not running)" in log
    assert "warning: flanneld is not installed on this machine" in log
    started = {u: int(machine.unit(u, "ExecMainStartTimestampMonotonic"))
               for u in ("etcd2.service", "fleet.service")}
    applied = int(machine.unit("provision-cloudinit.service",
                               "ActiveEnterTimestampMonotonic"))
    assert all(applied <= at for at in started.values()), (applied, started)


def test_etcd2_is_debians_etcd_and_healthy(machine):
    wait_for(lambda: "is healthy" in etcdctl(machine, "endpoint", "health").stdout +
             etcdctl(machine, "endpoint", "health").stderr, 60, message="etcd healthy")
    pid = machine.unit("etcd2.service", "MainPID")
    assert machine.out("readlink", f"/proc/{pid}/exe") == "/usr/bin/etcd"
    assert machine.stat(f"/proc/{pid}", "%U") == "etcd"
    members = etcdctl(machine, "member", "list").stdout
    assert f"core-01, https://{IP}:2380, https://{IP}:2379" in members
    # etcd's keys are its own (it runs as etcd), fleetd's root's; none readable by others.
    assert machine.stat("/etc/ssl/etcd/server-key.pem", "%U %a") == "etcd 600"
    assert machine.stat("/etc/ssl/etcd/fleetd-key.pem", "%U %a") == "root 600"
    plain = machine.run("env", "ETCDCTL_API=3", "etcdctl", "--endpoints", f"https://{IP}:2379",
                        "--cacert", "/etc/ssl/etcd/ca.pem", "--command-timeout=3s", "get", "x",
                        check=False)
    assert plain.returncode != 0  # no client certificate: refused
    assert "ETCD_INITIAL_CLUSTER_TOKEN=onebox-etcd" in machine.out(
        "cat", "/run/systemd/system/etcd2.service.d/20-cloudinit.conf")


def test_flannel_network_config_reached_etcd(machine):
    wait_for(lambda: etcdctl(machine, "get", "/coreos.com/network/config", api="2").stdout
             .strip() == '{"Network": "10.1.0.0/16"}', 60, message="flannel config in etcd")
    assert machine.out("systemctl", "is-active", "flanneld.service") == "active"


def test_fleetd_registered_with_the_systemd_runner(machine):
    def machines() -> str:
        return machine.run("fleetctl", "list-machines", "--no-legend", check=False).stdout
    listed = wait_for(lambda: IP in machines() and machines(), 60,
                      message="fleet machine registered")
    assert listed.split()[1:] == [IP, "region=test"]
    assert "FLEET_RUNNER=systemd" in machine.unit("fleet.service", "Environment")
    machine.write("/root/boot-hello.service", HELLO, mode=0o644)
    started = machine.run("sh", "-c", "cd /root && fleetctl start boot-hello.service",
                          check=False, timeout=120)
    assert started.returncode == 0, started.stderr
    # Run by the machine's own systemd, not as fleetd's child.
    wait_for(lambda: machine.run("systemctl", "is-active", "boot-hello.service",
                                 check=False).stdout.strip() == "active", 30,
             message="boot-hello active in systemd")
    assert machine.unit("boot-hello.service", "ControlGroup") == \
        "/system.slice/boot-hello.service"


def test_applying_the_boot_user_data_again_changes_nothing(machine):
    pids = {u: machine.unit(u, "MainPID") for u in ("etcd2.service", "fleet.service")}
    jobs = machine.jobs()
    again = machine.run(PROVISION, "cloudinit", "--from-file", "/var/lib/provision/user-data",
                        check=False, timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "/var/lib/provision/user-data: nothing to change"
    assert {u: machine.unit(u, "MainPID") for u in pids} == pids
    assert machine.jobs() == jobs
