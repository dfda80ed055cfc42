"""fleetctl end to end: a 3-machine cluster of real fleetd processes on a real etcd,
driven only through the `fleetctl` command line and fleetd's API."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support.etcd import wait_for
from tests.support.fleet import REPO, FleetHarness

HELLO = """[Unit]
Description=Hello World

[Service]
ExecStart=/bin/sh -c 'echo $$$$ > {run}/%n@%m.pid; while true; do echo Hello World; sleep 1; done'
"""

APACHE = """[Unit]
Description=My Apache Frontend %i

[Service]
ExecStart=/bin/sh -c 'echo $$$$ > {run}/%n@%m.pid; exec sleep 1000'

[X-Fleet]
Conflicts=apache@*.service
"""

DISCOVERY = """[Unit]
Description=Announce Apache%i
BindsTo=apache@%i.service
After=apache@%i.service

[Service]
ExecStart=/bin/sh -c 'echo $$$$ > {run}/%n@%m.pid; exec sleep 1000'

[X-Fleet]
MachineOf=apache@%i.service
"""


@pytest.fixture
def cluster(etcd_server, tmp_path):
    harness = FleetHarness(etcd_server.url, f"/ctl-{uuid.uuid4().hex[:8]}/", tmp_path)
    for name in ("n1", "n2", "n3"):
        harness.start(name)
    yield harness
    harness.close()


def fleetctl(cluster: FleetHarness, *argv: str, check: bool = True,
             timeout: float = 60) -> subprocess.CompletedProcess:
    endpoint = f"unix://{cluster.fleetds['n1'].state_dir / 'fleet.sock'}"
    exe = shutil.which("fleetctl")
    command = [exe] if exe else [sys.executable, "-m", "fleetd.fleetctl.main"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "FLEETCTL_ENDPOINT": endpoint}
    result = subprocess.run([*command, *argv], capture_output=True, text=True, env=env,
                            timeout=timeout, cwd=cluster.base, stdin=subprocess.DEVNULL)
    if check:
        assert result.returncode == 0, (argv, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result


def rows(output: str) -> list[list[str]]:
    return [line.split() for line in output.strip().splitlines()[1:] if line.strip()]


def write(cluster: FleetHarness, name: str, template: str) -> Path:
    path = cluster.base / name
    path.write_text(template.format(run=cluster.run_dir))
    return path


def test_lifecycle_submit_load_start_stop_unload_destroy(cluster):
    path = write(cluster, "hello.service", HELLO)
    fleetctl(cluster, "submit", str(path))
    (row,) = rows(fleetctl(cluster, "list-unit-files").stdout)
    assert row[0] == "hello.service" and row[2:] == ["inactive", "inactive", "-"]
    assert re.fullmatch(r"[0-9a-f]{7}", row[1])
    assert rows(fleetctl(cluster, "list-units").stdout) == []
    assert "Description=Hello World" in fleetctl(cluster, "cat", "hello.service").stdout

    out = fleetctl(cluster, "load", "hello.service").stdout
    assert re.search(r"Unit hello\.service loaded on [0-9a-f]{8}\.\.\./127\.0\.0\.1", out)
    (row,) = rows(fleetctl(cluster, "list-unit-files").stdout)
    assert row[2:4] == ["loaded", "loaded"] and row[4].endswith("/127.0.0.1")

    out = fleetctl(cluster, "start", "hello").stdout
    assert re.search(r"Unit hello\.service launched on [0-9a-f]{8}\.\.\./127\.0\.0\.1", out)
    wait_for(lambda: rows(fleetctl(cluster, "list-units").stdout)[0][2:] == ["active",
                                                                             "running"],
             15, message="hello running")
    assert cluster.running().get("hello.service")
    status = fleetctl(cluster, "status", "hello.service").stdout
    assert "hello.service" in status and "active (running)" in status
    journal = wait_for(lambda: (lambda o: o if "Hello World" in o else None)(
        fleetctl(cluster, "journal", "--lines", "5", "hello.service").stdout), 10,
        message="journal lines")
    assert journal.count("Hello World") <= 5

    out = fleetctl(cluster, "stop", "hello.service").stdout
    assert "Unit hello.service loaded on" in out
    wait_for(lambda: not cluster.running().get("hello.service"), 10, message="stopped")
    assert "Unit hello.service inactive" in fleetctl(cluster, "unload", "hello.service").stdout
    assert "Destroyed hello.service" in fleetctl(cluster, "destroy", "hello.service").stdout
    assert rows(fleetctl(cluster, "list-unit-files").stdout) == []
    missing = fleetctl(cluster, "status", "hello.service", check=False)
    assert missing.returncode == 1 and "Unit hello.service does not exist." in missing.stderr


def test_apache_with_discovery_sidekicks_and_failover(cluster):
    write(cluster, "apache@.service", APACHE)
    write(cluster, "apache-discovery@.service", DISCOVERY)
    fleetctl(cluster, "submit", "apache@.service", "apache-discovery@.service")
    fleetctl(cluster, "start", "apache@1", "apache@2", "apache-discovery@1",
             "apache-discovery@2")
    units = ["apache@1.service", "apache@2.service", "apache-discovery@1.service",
             "apache-discovery@2.service"]
    running = cluster.wait_running(units)
    assert running["apache@1.service"] != running["apache@2.service"]
    assert running["apache-discovery@1.service"] == running["apache@1.service"]
    listed = {r[0]: r for r in rows(fleetctl(cluster, "list-units").stdout)}
    assert set(units) <= set(listed)

    # Its machine dies: the unit and its sidekick move together; list-units follows.
    names = {f.machine_id: n for n, f in cluster.fleetds.items()}
    victim_id = running["apache@1.service"][0]
    if names[victim_id] == "n1":  # keep the fleetd fleetctl talks to alive
        victim_id = running["apache@2.service"][0]
    moved = [u for u in units if running[u] == [victim_id]]
    cluster.kill(names[victim_id], signal.SIGKILL)

    def moved_away() -> dict | None:
        now = cluster.running()
        placed = all(len(now.get(u, [])) == 1 for u in units)
        return now if placed and all(now[u] != [victim_id] for u in moved) else None

    after = wait_for(moved_away, cluster.ttl + 15, message=f"{moved} running elsewhere")
    assert after["apache-discovery@1.service"] == after["apache@1.service"]
    short = victim_id[:8]
    wait_for(lambda: all(not listed_row[1].startswith(short) for listed_row in
                         rows(fleetctl(cluster, "list-units").stdout)), 10,
             message="list-units shows the new machines")


def test_list_machines_columns_and_json(cluster):
    out = fleetctl(cluster, "list-machines").stdout
    assert out.splitlines()[0].split() == ["MACHINE", "IP", "METADATA"]
    assert len(rows(out)) == 3
    full = fleetctl(cluster, "list-machines", "--full", "--no-legend").stdout
    ids = sorted(line.split()[0] for line in full.strip().splitlines())
    assert ids == sorted(f.machine_id for f in cluster.fleetds.values())
    import json

    data = json.loads(fleetctl(cluster, "list-machines", "--output", "json").stdout)
    assert len(data) == 3


def test_submit_refuses_a_different_unit_of_the_same_name(cluster):
    path = write(cluster, "x.service", HELLO)
    fleetctl(cluster, "submit", str(path))
    path.write_text(HELLO.format(run=cluster.run_dir) + "\n[Install]\nWantedBy=x\n")
    refused = fleetctl(cluster, "submit", str(path), check=False)
    assert refused.returncode == 1 and "x.service" in refused.stderr
    fleetctl(cluster, "submit", "--replace", str(path))
    assert "WantedBy=x" in fleetctl(cluster, "cat", "x.service").stdout


def test_start_ends_on_templates_failures_and_unschedulable_units(cluster):
    """Blocking `start` never hangs: a template is refused at once, a unit that fails
    ends with its state and log, one no machine can take ends naming the constraint."""
    write(cluster, "tpl@.service", APACHE)
    refused = fleetctl(cluster, "start", "tpl@.service", check=False)
    assert refused.returncode == 2 and "a template cannot be started" in refused.stderr
    assert rows(fleetctl(cluster, "list-unit-files").stdout) == []

    # It fails before it is ever active (a main process that exits at once is active for
    # that moment, and a poll may land in it)
    (cluster.base / "crash.service").write_text(
        "[Service]\nExecStartPre=/bin/sh -c 'echo cannot open /etc/crash.conf; exit 3'\n"
        "ExecStart=/bin/sleep 300\n")
    failed = fleetctl(cluster, "start", "crash.service", check=False)
    assert failed.returncode == 1, failed
    assert re.search(r"Unit crash\.service launched on [0-9a-f]{8}\.\.\./127\.0\.0\.1",
                     failed.stdout)
    assert re.search(r"Unit crash\.service failed on [0-9a-f]{8}\.\.\./127\.0\.0\.1 \(systemd: "
                     r"failed/failed\); its last log lines:\n.*cannot open /etc/crash\.conf",
                     failed.stderr, re.S), failed.stderr
    (row,) = [r for r in rows(fleetctl(cluster, "list-units").stdout) if r[0] == "crash.service"]
    assert row[2:4] == ["failed", "failed"]

    (cluster.base / "gpu.service").write_text(
        "[Service]\nExecStart=/bin/sleep 100\n[X-Fleet]\nMachineMetadata=gpu=yes\n")
    stuck = fleetctl(cluster, "start", "gpu.service", check=False)
    assert stuck.returncode == 1
    assert stuck.stderr.startswith("Unit gpu.service cannot be scheduled: no machine has "
                                   "metadata gpu=yes"), stuck.stderr

    (cluster.base / "bad.txt").write_text("[Service]\nExecStart=/bin/true\n")
    bad = fleetctl(cluster, "submit", "bad.txt", check=False)
    assert bad.returncode == 2 and "bad.txt is not a unit file" in bad.stderr
    (cluster.base / "empty.service").write_text("")
    empty = fleetctl(cluster, "submit", "empty.service", check=False)
    assert empty.returncode == 2 and "empty.service is empty" in empty.stderr

    destroyed = fleetctl(cluster, "destroy", "crash.service", "gpu", "ghost")
    assert destroyed.stdout == "Destroyed crash.service\nDestroyed gpu.service\n"
    assert destroyed.stderr == "Unit ghost.service not found in registry; skipped\n"
    for command in ("stop", "unload", "destroy"):
        none = fleetctl(cluster, command, "ghost")
        assert none.stderr == "Units not found in registry\n"
