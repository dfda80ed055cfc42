"""Real Vagrant, real machines: 3 vagrant-lxc containers booting Debian's systemd, from
the box `provision box build` makes, on a bridge inside a network namespace this test
creates (no uplink: nothing inside can download anything), brought up by a real
`provision up` (the real `vagrant up` with the project's Vagrantfile) of a copy of
clusters/vagrant-lxc.yaml, run inside that namespace; then `provision status / env /
node stop|start / certs rotate / down`, and the host's fleetctl through `--tunnel` and
`fleetctl ssh`.

Each machine is provisioned the way a VirtualBox/libvirt user's debian/bookworm64 machine
is (the box is a plain bookworm box + Vagrant's user): the payload made on the host is
uploaded with the node's user-data and installed offline; the applier then starts etcd2
(Debian's etcd) and fleet (fleetd, systemd runner). Skipped, with the reason, without
root, vagrant + vagrant-lxc, lxc or mmdebstrap (CI installs them).

Wall time (2 cores): box and payload cached, ~7-8 min (up with the units applied
~1.5 min, a node stopped and started ~1.5 min, halt/up ~1 min, provision again ~30 s,
destroy ~20 s, up again after down ~1.5 min); a cold box adds ~75 s.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from provision.cli.root import main as provision_main
from provision.pki import admin_tls, pki_dir
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
    # One state root (the cluster's CA and admin certificate) for the render here and
    # every `provision` the test runs.
    state_root = os.environ.setdefault("PROVISION_STATE", str(place / "state"))
    source = place / f"{name}.yaml"
    source.write_text((CLUSTERS / "vagrant-lxc.yaml").read_text()
                      .replace("\nname: lxc\n", f"\nname: {name}\n"))
    shutil.copytree(CLUSTERS / "units", place / "units")
    # Where `provision up` (run from `place`) renders it too: the namespace needs the
    # manifest's bridge and gateway before anything is up.
    assert provision_main(["render", str(source), "-o", str(place / "out" / name)]) == 0
    manifest = place / "out" / name / "manifest.json"
    home = place / "vagrant.d"
    box = ensure_box("lxc")
    add_box(box, env={"VAGRANT_HOME": str(home)})
    payload = prepare_machines(manifest)
    made = lxc_cluster(place, manifest, REPO / "Vagrantfile", f"pt-{name}", home)
    made.payload_key = payload.key
    made.env["PROVISION_STATE"] = state_root
    made.tls = admin_tls(pki_dir(name, state_root))
    made.source = source
    try:
        started = time.monotonic()
        # A busy 2-core host can take minutes per machine: the deadline is for a wedge.
        made.up = made.provision("up", str(source), "--timeout", "1800", timeout=3600)
        assert made.up.returncode == 0, "\n".join(made.logs)[-6000:]
        print(f"provision up of 3 lxc machines, units applied: "
              f"{time.monotonic() - started:.0f}s")
        yield made
    finally:
        made.teardown()


def nodes(cluster) -> list[dict]:  # LxcCluster
    return json.loads(cluster.manifest.read_text())["nodes"]


def fleetctl_env(cluster) -> dict[str, str]:
    """This process's environment plus what `provision env` exports."""
    done = cluster.provision("env", str(cluster.source))
    assert done.returncode == 0, done.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCTL_")}
    for line in done.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = shlex.split(value)[0] if value else ""
    return env


def fleetctl(cluster, *argv: str, env: dict[str, str] | None = None):
    return cluster.in_netns(shutil.which("fleetctl") or "fleetctl", *argv,
                            env=env or fleetctl_env(cluster), timeout=180)


def units_by_ip(cluster, env: dict[str, str]) -> dict[str, tuple[str, str]]:
    """{unit: (machine ip, active)} as the host's fleetctl sees it through the tunnel."""
    done = fleetctl(cluster, "list-units", "--no-legend", "--fields", "unit,machine,active",
                    env=env)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.strip()]
    return {r[0]: (r[1].partition("/")[2], r[2]) for r in rows if len(r) == 3}


def main_pids(cluster, node: str) -> str:
    return cluster.ssh(node, "systemctl show --property MainPID --value etcd2.service "
                             "fleet.service").stdout.split()


def _etcd(cluster, *, without: str | None = None) -> list[str]:
    """etcdctl's endpoints (https: TLS by default) and the cluster's admin certificate."""
    endpoints = ",".join(f"https://{n['ip']}:2379" for n in nodes(cluster) if n["ip"] != without)
    tls = cluster.tls
    return ["--endpoints", endpoints, f"--cacert={tls.ca_file}", f"--cert={tls.cert_file}",
            f"--key={tls.key_file}"]


def test_each_machines_etcd_is_debians_and_healthy(cluster):
    health = wait_for(lambda: (out := cluster.in_netns(
        _etcdctl(), *_etcd(cluster), "endpoint", "health")).returncode == 0 and out,
        90, interval=1, message="every etcd member healthy")
    assert health.stdout.count("is healthy") + health.stderr.count("is healthy") == 3
    members = cluster.in_netns(_etcdctl(), *_etcd(cluster), "member", "list").stdout
    for node in nodes(cluster):
        assert f"{node['name']}, https://{node['ip']}:2380, https://{node['ip']}:2379" in members
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


def test_up_returned_once_ready_with_the_declared_units_applied(cluster):
    for node in nodes(cluster):
        assert f"{node['name']}: etcd healthy" in cluster.up.stderr
        assert f"{node['name']}: fleet registered" in cluster.up.stderr
    rows = cluster.ssh("core-01", "sudo fleetctl list-units --no-legend --fields "
                                  "unit,active").stdout.split("\n")
    active = {r.split()[0] for r in rows if r.strip() and r.split()[1] == "active"}
    assert {"web@1.service", "web@2.service", "web-announce@1.service",
            "web-announce@2.service"} <= active
    announced = wait_for(lambda: (out := cluster.in_netns(
        _etcdctl(), *_etcd(cluster), "get", "--prefix", "/services/web/",
        "--keys-only")).stdout.split() == ["/services/web/1", "/services/web/2"] and out,
        60, interval=1, message="both web instances announced")
    assert announced.returncode == 0


def test_status_shows_vagrant_state_etcd_fleet_machine_and_units(cluster):
    done = cluster.provision("status", str(cluster.source), "--output", "json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["nodes"]
    assert [(r["name"], r["ip"], r["state"], r["vm_provider"], r["etcd"]) for r in rows] == [
        (n["name"], n["ip"], "running", "lxc", "healthy") for n in nodes(cluster)]
    assert all(len(r["machine"]) == 32 for r in rows)
    # web@1, web@2, their sidekicks and the hello unit of an earlier test: 5 active
    assert sum(int(r["units"].split("/")[0]) for r in rows) == 5
    table = cluster.provision("status", str(cluster.source))
    assert table.stdout.splitlines()[0].split() == [
        "NODE", "IP", "STATE", "VM", "PROVIDER", "ETCD", "MACHINE", "UNITS"]


def test_env_gives_etcdctl_the_members_and_fleetctl_an_ssh_tunnel(cluster):
    env = fleetctl_env(cluster)
    assert env["FLEETCTL_TUNNEL"] == "172.17.8.101"
    assert env["FLEETCTL_ENDPOINT"] == "unix:///var/run/fleet.sock"  # no TCP API anywhere
    assert env["FLEETCTL_SSH_USERNAME"] == "vagrant"
    assert env["FLEETCTL_STRICT_HOST_KEY_CHECKING"] == "true"
    assert Path(env["FLEETCTL_KNOWN_HOSTS_FILE"]).read_text().count("172.17.8.10") >= 3
    health = cluster.in_netns(_etcdctl(), "endpoint", "health", env=env)
    assert (health.stdout + health.stderr).count("is healthy") == 3, health
    listed = fleetctl(cluster, "list-machines", "--no-legend", env=env)
    assert listed.returncode == 0, listed.stderr
    assert sorted(line.split()[1] for line in listed.stdout.splitlines()) == [
        "172.17.8.101", "172.17.8.102", "172.17.8.103"]
    # The host keys are checked: with an empty known-hosts file ssh refuses the tunnel.
    empty = cluster.directory / "empty-known-hosts"
    empty.write_text("")
    refused = fleetctl(cluster, "--known-hosts-file", str(empty), "list-machines", env=env)
    assert refused.returncode == 1
    assert "through the SSH tunnel to 172.17.8.101" in refused.stderr


def test_fleetctl_ssh_runs_a_command_on_the_machine_running_a_unit(cluster):
    env = fleetctl_env(cluster)
    where = units_by_ip(cluster, env)
    for unit in ("web@1.service", "web@2.service"):
        expected = next(n["hostname"] for n in nodes(cluster) if n["ip"] == where[unit][0])
        done = fleetctl(cluster, "ssh", unit, "hostname", env=env)
        assert (done.returncode, done.stdout.strip()) == (0, expected), done.stderr
    # status is read from the API of the machine running the unit, relayed from it
    status = fleetctl(cluster, "status", "web@2.service", env=env)
    assert status.returncode == 0, status.stderr
    assert "web@2.service" in status.stdout and "active" in status.stdout
    # through the tunnel (core-01) to core-03, and the remote command's exit status
    done = fleetctl(cluster, "ssh", "vagrant-hello", "--", "exit", "3", env=env)
    assert done.returncode == 3, done.stderr


def test_node_stop_moves_web1_and_its_key_and_node_start_brings_the_machine_back(cluster):
    env = fleetctl_env(cluster)
    ip = units_by_ip(cluster, env)["web@1.service"][0]
    node = next(n["name"] for n in nodes(cluster) if n["ip"] == ip)
    if node == "core-01":  # the tunnel's machine: go through another one
        env["FLEETCTL_TUNNEL"] = "172.17.8.102"
    stopped = cluster.provision("node", "stop", node, "-c", str(cluster.source))
    assert stopped.returncode == 0, stopped.stderr
    try:
        _moved_away_from(cluster, env, ip, node)
    finally:  # the later tests of the module want every machine running
        started = cluster.provision("node", "start", node, "-c", str(cluster.source))
    assert started.returncode == 0, started.stderr
    assert f"{node}: fleet registered" in started.stderr


def _moved_away_from(cluster, env: dict[str, str], ip: str, node: str) -> None:
    # Until its lease ends, the stopped machine's last report of web@1 (active) may still be
    # listed; its machine is no longer, so that row has no IP: not a move.
    moved = wait_for(lambda: (u := units_by_ip(cluster, env).get("web@1.service"))
                     and u[0] not in (ip, "") and u[1] == "active" and u, 120, interval=2,
                     message="web@1 active on another machine")

    def announced_at() -> str | None:
        return cluster.in_netns(_etcdctl(), *_etcd(cluster, without=ip), "get",
                                "/services/web/1", "--print-value-only").stdout.strip() or None

    value = json.loads(wait_for(announced_at, 60, interval=1, message="web/1 announced"))
    assert value["unit"] == "web@1.service"

    def machine_at(ip: str) -> str | None:
        listed = fleetctl(cluster, "list-machines", "--no-legend", "-l", env=env).stdout
        return next((row[0] for row in map(str.split, listed.splitlines())
                     if len(row) > 1 and row[1] == ip), None)

    moved_machine = wait_for(lambda: machine_at(moved[0]), 60, interval=2,
                             message=f"the machine at {moved[0]} listed")
    wait_for(lambda: json.loads(announced_at() or "{}").get("machine") == moved_machine,
             60, interval=1, message="web/1 announced by its new machine")
    status = json.loads(cluster.provision("status", str(cluster.source), "--output",
                                          "json").stdout)["nodes"]
    assert next(r for r in status if r["name"] == node)["state"] == "stopped"


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


def test_certs_rotate_provisions_each_machine_in_turn_and_refuses_the_old_certificates(
        cluster):
    """`provision certs rotate` of the running machines: each is provisioned again in
    turn (new certificates, no unit restarted: fleetd and the units keep their
    processes), then the revocation list, then each etcd restarts alone; the admin
    certificate from before is refused afterwards, and what `up` kept beside the
    manifest (payload, SSH files) is still there."""
    name = json.loads(cluster.manifest.read_text())["cluster"]
    pki = pki_dir(name, cluster.env["PROVISION_STATE"])
    old = cluster.directory / "old-admin"
    old.mkdir()
    for file in ("ca.pem", "admin.pem", "admin-key.pem"):
        shutil.copy2(pki / file, old / file)
    env = fleetctl_env(cluster)
    web_ip = units_by_ip(cluster, env)["web@1.service"][0]
    web = next(n["name"] for n in nodes(cluster) if n["ip"] == web_ip)

    def web_pid() -> str:
        return cluster.ssh(web, "systemctl show --property MainPID --value "
                                "web@1.service").stdout.strip()

    before = {n["name"]: main_pids(cluster, n["name"]) for n in nodes(cluster)}
    pid = web_pid()
    assert pid not in ("", "0")

    rotated = cluster.provision("certs", "rotate", str(cluster.source), "--timeout", "300",
                                timeout=2400)
    assert rotated.returncode == 0, rotated.stdout[-4000:] + rotated.stderr[-4000:]
    assert "rolled onto 3 running nodes one at a time" in rotated.stdout
    names = [n["name"] for n in nodes(cluster)]
    steps = [line for line in rotated.stderr.splitlines()
             if line.endswith(("certificates in place", "etcd restarted, serving"))
             or line.startswith("revocation list published")]
    assert steps == ([f"{n}: new certificates in place" for n in names]
                     + ["revocation list published to 3 nodes"]
                     + [f"{n}: etcd restarted, serving" for n in names])

    for node in names:
        etcd_pid, fleet_pid = main_pids(cluster, node)
        assert fleet_pid == before[node][1]  # fleetd took its new certificate itself
        assert etcd_pid != before[node][0]
        served = cluster.ssh(node, "sudo cat /etc/ssl/etcd/server.pem").stdout.strip()
        assert served == (pki / f"{node}-server.pem").read_text().strip()
    assert units_by_ip(cluster, env)["web@1.service"] == (web_ip, "active")
    assert web_pid() == pid
    # The admin certificate from before is refused; the new one works.
    refused = cluster.in_netns(_etcdctl(), "--endpoints", "https://172.17.8.101:2379",
                               f"--cacert={old / 'ca.pem'}", f"--cert={old / 'admin.pem'}",
                               f"--key={old / 'admin-key.pem'}", "--command-timeout=5s",
                               "get", "x", env={**os.environ, "ETCDCTL_API": "3"})
    assert refused.returncode != 0
    assert cluster.in_netns(_etcdctl(), *_etcd(cluster), "get", "x").returncode == 0
    # fleetd registered with its new certificate; fleetctl still goes through the SSH
    # files `up` wrote beside the manifest (a render replaces that directory).
    listed = fleetctl(cluster, "list-machines", "--no-legend", env=fleetctl_env(cluster))
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == 3
    manifest = json.loads(cluster.manifest.read_text())
    assert (cluster.manifest.parent / manifest["vagrant"]["payload"]).is_file()


def _down_leaves_nothing(cluster) -> None:
    started = time.monotonic()
    down = cluster.provision("down", str(cluster.source))
    assert down.returncode == 0, down.stderr
    print(f"provision down of 3 lxc machines: {time.monotonic() - started:.0f}s")
    assert cluster.leftovers() == {"containers": [], "lxc dirs": [], "links": []}
    assert not list((cluster.directory / ".vagrant" / "machines").glob("*/lxc/id"))
    payloads = [p for c in cluster.containers
                for p in Path("/sys/fs/cgroup").glob(f"*/lxc.payload.{c}")]
    assert payloads == []


def test_destroy_leaves_no_container_veth_or_directory(cluster):
    _down_leaves_nothing(cluster)


def test_a_second_up_after_down_brings_the_cluster_back_and_down_again_leaves_nothing(
        cluster):
    """The same cluster file up again: new machines (new host keys: known_hosts is read
    again), every etcd healthy, 3 fleet machines, the declared units applied again."""
    started = time.monotonic()
    again = cluster.provision("up", str(cluster.source), "--timeout", "1800", timeout=3600)
    assert again.returncode == 0, "\n".join(cluster.logs)[-6000:]
    print(f"second provision up of 3 lxc machines: {time.monotonic() - started:.0f}s")
    for node in nodes(cluster):
        assert f"{node['name']}: etcd healthy" in again.stderr
        assert f"{node['name']}: fleet registered" in again.stderr
    cluster.ssh_config = None  # new machines, new keys
    env = fleetctl_env(cluster)
    listed = fleetctl(cluster, "list-machines", "--no-legend", env=env)
    assert listed.returncode == 0, listed.stderr
    assert sorted(line.split()[1] for line in listed.stdout.splitlines()) == [
        "172.17.8.101", "172.17.8.102", "172.17.8.103"]
    wait_for(lambda: {u for u, (_ip, active) in units_by_ip(cluster, env).items()
                      if active == "active"} >= {"web@1.service", "web@2.service"},
             120, interval=2, message="web@1 and web@2 active again")
    _down_leaves_nothing(cluster)
    cluster.network.delete()
    assert not cluster.network.exists()
