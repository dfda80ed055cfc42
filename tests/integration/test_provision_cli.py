"""`provision up / status / env / node / down` as a user types them: the console script,
a real local cluster on a free loopback network, and the error lines for bad requests.
Vagrant through the same CLI against the fake `vagrant` (tests/support/fake_vagrant.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from provision.cli import apply as apply_cli
from provision.cli.root import main
from provision.providers import vagrant_lifecycle
from provision.providers.vagrant import VagrantProvider
from provision.providers.vagrant_cluster import NodeHealth
from tests.conftest import CLUSTERS
from tests.support import fake_vagrant
from tests.support.etcd import wait_for
from tests.support.localenv import (
    REPO,
    UP_TIMEOUT,
    Env,
)


def provision(env: Env, *argv: str) -> subprocess.CompletedProcess:
    exe = shutil.which("provision")
    command = [exe] if exe else [sys.executable, "-m", "provision.cli"]
    return subprocess.run([*command, *argv], capture_output=True, text=True, timeout=120,
                          cwd=env.base, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PROVISION_STATE": str(env.state_root),
                               "PYTHONPATH": str(REPO)})


def fleetctl(endpoint: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleetd.fleetctl.main", *argv],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "FLEETCTL_ENDPOINT": endpoint,
                               "PYTHONPATH": str(REPO)})


def table(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


def test_up_status_env_node_stop_start_and_down_from_the_command_line(env):
    path, name = env.cluster("local.yaml")
    up = provision(env, "up", str(path), "--timeout", str(UP_TIMEOUT))
    assert up.returncode == 0, up.stderr
    assert f"{name} is up: 3 nodes healthy" in up.stderr

    # No cluster named: the one just brought up.
    status = provision(env, "status")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].startswith("etcd: ") and "version 3." in lines[0]
    assert table("\n".join(lines[1:]))[0] == ["NODE", "IP", "ROLE", "STATE", "ETCD", "MACHINE",
                                              "FLEET", "UNITS"]
    rows = table("\n".join(lines[2:]))
    assert [r[0] for r in rows] == ["core-01", "core-02", "core-03"]
    assert all(r[3:5] == ["running", "healthy"] and r[6] == "registered" for r in rows)

    data = json.loads(provision(env, "status", name, "--output", "json").stdout)
    assert data["cluster"] == name and data["provider"] == "local"
    assert data["etcd_binary"]["version"].startswith("3.")
    assert [n["fleet"] for n in data["nodes"]] == ["registered"] * 3

    exports = dict(line.removeprefix("export ").split("=", 1)
                   for line in provision(env, "env").stdout.splitlines()
                   if line.startswith("export "))
    machines = fleetctl(exports["FLEETCTL_ENDPOINT"], "list-machines", "--no-legend")
    assert machines.returncode == 0, machines.stderr
    assert len(table(machines.stdout)) == 3

    stopped = provision(env, "node", "stop", "core-02")
    assert stopped.returncode == 0, stopped.stderr
    # The other two nodes still answer, whichever etcd endpoint status happens to try first.
    after = {n["name"]: n for n in json.loads(
        provision(env, "status", "--output", "json").stdout)["nodes"]}
    assert after["core-02"]["state"] == "stopped"
    assert [after[n]["etcd"] for n in ("core-01", "core-03")] == ["healthy", "healthy"]
    assert [after[n]["fleet"] for n in ("core-01", "core-03")] == ["registered"] * 2
    wait_for(lambda: len(table(fleetctl(exports["FLEETCTL_ENDPOINT"], "list-machines",
                                        "--no-legend").stdout)) == 2,
             15, message="core-02's machine leaves after the agent TTL")

    started = provision(env, "node", "start", "core-02", "--cluster", name)
    assert started.returncode == 0, started.stderr
    assert len(table(fleetctl(exports["FLEETCTL_ENDPOINT"], "list-machines",
                              "--no-legend").stdout)) == 3

    # Its own deadline below the subprocess timeout: a failure then says what it waited for.
    again = provision(env, "up", str(path), "--timeout", "60")
    assert again.returncode == 0, again.stderr  # idempotent

    down = provision(env, "down", "--purge")
    assert down.returncode == 0, down.stderr
    assert f"{name}: stopped; state removed" in down.stdout
    assert not env.state_dir(name).exists()


@pytest.mark.parametrize("argv,expected", [
    (["status", "no-such-cluster"], "no local cluster named 'no-such-cluster'"),
    (["down", "no-such-cluster"], "no local cluster named 'no-such-cluster'"),
    (["up", "local"], "`provision up` needs the cluster's YAML file"),
    (["node", "stop", "core-01"], "name a cluster"),
    (["env"], "name a cluster"),
    (["up", "missing.yaml"], "missing.yaml"),
])
def test_bad_requests_end_in_one_line_and_status_2(env, argv, expected):
    result = provision(env, *argv)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not env.state_root.exists() or not any(env.state_root.iterdir())


def test_unknown_node_names_the_nodes(env):
    path, name = env.cluster("local.yaml")
    assert provision(env, "up", str(path), "--timeout", str(UP_TIMEOUT)).returncode == 0
    result = provision(env, "node", "stop", "core-2")
    assert result.returncode == 2
    assert "has no node 'core-2'" in result.stderr and "core-02" in result.stderr
    assert provision(env, "down", name).returncode == 0


# -- vagrant through the CLI --------------------------------------------------------------

@pytest.fixture
def fake(tmp_path, monkeypatch):
    fake = fake_vagrant.use_for_the_cli(tmp_path, monkeypatch)
    # What needs real machines (the payload, etcd and fleet on them, their SSH) is the
    # real vagrant-lxc test's (tests/integration/test_vagrant_lxc.py); here: what the CLI
    # asks of Vagrant, in which order.
    fake.ready = []
    monkeypatch.setattr(VagrantProvider, "prepare", lambda self, manifest, say: None)
    monkeypatch.setattr(vagrant_lifecycle, "wait_ready",
                        lambda access, timeout, report: fake.ready.append(access.nodes))
    monkeypatch.setattr(vagrant_lifecycle, "write_access_files", lambda provider, manifest: None)
    monkeypatch.setattr(apply_cli, "apply_after_up", lambda *args, **kwargs: 0)
    monkeypatch.setattr(vagrant_lifecycle, "node_rows", lambda access, up: [
        NodeHealth("healthy" if u else "-", "ab" * 16 if u else "", "1/1")
        for u in up])
    return fake


def test_vagrant_up_status_env_down_through_the_cli(fake, capsys, tmp_path):
    cluster = str(CLUSTERS / "vagrant.yaml")
    assert main(["up", cluster]) == 0  # provider: vagrant in the YAML
    assert (tmp_path / "out" / "vagrant" / "user-data-1").is_file()
    assert fake.argvs() == [["up", f"core-0{i}"] for i in (1, 2, 3)]
    assert fake.ready == [tuple((f"core-0{i}", f"172.17.8.10{i}") for i in (1, 2, 3))]
    capsys.readouterr()

    assert main(["status", cluster, "--output", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["provider"] == "vagrant"
    assert [(n["name"], n["state"], n["etcd"], n["units"]) for n in data["nodes"]] == [
        (f"core-0{i}", "running", "healthy", "1/1") for i in (1, 2, 3)]

    assert main(["node", "stop", "core-02", "-c", cluster]) == 0
    assert fake.argvs()[-1] == ["halt", "core-02"]
    capsys.readouterr()
    assert main(["status", cluster]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["NODE", "IP", "STATE", "VM", "PROVIDER", "ETCD", "MACHINE",
                                "UNITS"]
    assert table[2].split()[:5] == ["core-02", "172.17.8.102", "poweroff", "libvirt", "-"]
    assert main(["node", "start", "core-02", "-c", cluster]) == 0
    assert fake.argvs()[-1] == ["up", "core-02"]
    assert fake.ready[-1] == (("core-02", "172.17.8.102"),)
    assert main(["node", "stop", "core-09", "-c", cluster]) == 2

    capsys.readouterr()
    assert main(["env", cluster]) == 0
    exports = capsys.readouterr().out
    assert "PROVISION_MANIFEST=" in exports
    assert "export FLEETCTL_TUNNEL=172.17.8.101\n" in exports
    assert "export FLEETCTL_ENDPOINT=unix:///var/run/fleet.sock\n" in exports

    assert main(["down", cluster]) == 0
    assert fake.argvs()[-3:] == [["destroy", f"core-0{i}", "--force"] for i in (3, 2, 1)]


def test_provider_flag_overrides_the_yaml(fake, capsys):
    assert main(["up", "--provider", "vagrant", str(CLUSTERS / "local.yaml")]) == 0
    assert [a[0] for a in fake.argvs()] == ["up"] * 3
