"""The systemd runner against a REAL systemd: Debian's systemd booted as PID 1 of a
systemd-nspawn container (tests/support/systemd_container.py), reached over its system
bus from the host. Skipped, with the reason, where that cannot run (not root, no
systemd-nspawn/mmdebstrap, no pydbus).

First the runner alone (states as systemd reports them, through its signals), then
fleetd's agent with `--runner systemd` in a cluster with process-runner machines.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

import pytest

from fleetd.unit.unitfile import parse_unit_file
from tests.support.etcd import wait_for
from tests.support.fleet import REPO, FleetHarness
from tests.support.systemd_container import systemd_container  # noqa: F401 - fixture

pydbus = pytest.importorskip("pydbus", reason="the systemd runner needs pydbus "
                                              "(pip install '.[systemd]')")

from fleetd.runner.systemd import SystemdRunner  # noqa: E402


class Seen:
    """Every state the runner reported, per unit, in order."""

    def __init__(self) -> None:
        self.events: dict[str, list[tuple[str, str]]] = {}

    def __call__(self, name: str, status) -> None:  # UnitStatus
        self.events.setdefault(name, []).append((status.active, status.sub))

    def saw(self, name: str, active: str, sub: str) -> bool:
        return (active, sub) in self.events.get(name, [])


@pytest.fixture(scope="module")
def runner(systemd_container):  # noqa: F811 - the fixture imported above
    made = SystemdRunner(systemd_container.units_dir, bus_address=systemd_container.bus_address,
                         journal_command=systemd_container.journal_command)
    yield made
    for name in list(made.units()):
        made.unload(name)
    made.shutdown()


@pytest.fixture
def seen(runner):
    watcher = Seen()
    runner.subscribe(watcher)
    return watcher


def unit(text: str):
    return parse_unit_file(text)


def state(runner: SystemdRunner, name: str) -> tuple[str, str, str]:
    status = runner.units()[name]
    return status.load, status.active, status.sub


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_start_and_stop_reach_systemds_states_through_its_signals(runner, seen,
                                                                   systemd_container):  # noqa: F811
    name = unique("hello") + ".service"
    runner.load(name, unit("[Unit]\nDescription=hello\n[Service]\nExecStart=/bin/sleep 1000\n"))
    assert (systemd_container.units_dir / name).is_file()
    assert state(runner, name)[0] == "loaded"
    runner.start(name)
    wait_for(lambda: seen.saw(name, "active", "running"), 15, message="active/running signalled")
    assert state(runner, name) == ("loaded", "active", "running")
    shown = systemd_container.run("systemctl", "is-active", name, check=False).stdout.strip()
    assert shown == "active"
    assert "Active: active (running)" in runner.status_text(name)
    runner.stop(name)
    wait_for(lambda: seen.saw(name, "inactive", "dead"), 15, message="inactive/dead signalled")
    runner.unload(name)
    assert not (systemd_container.units_dir / name).exists()
    assert state_after_unload(runner, name) == "not-found"


def state_after_unload(runner: SystemdRunner, name: str) -> str:
    return runner._read([name])[name].load  # what systemd says of it now


def test_slow_start_pre_shows_activating_start_pre_and_failure_shows_failed(runner, seen):
    slow = unique("slow") + ".service"
    runner.load(slow, unit("[Service]\nExecStartPre=/bin/sleep 2\nExecStart=/bin/sleep 1000\n"))
    runner.start(slow)
    wait_for(lambda: seen.saw(slow, "activating", "start-pre"), 10,
             message="activating/start-pre")
    wait_for(lambda: seen.saw(slow, "active", "running"), 15, message="then active/running")
    broken = unique("broken") + ".service"
    runner.load(broken, unit("[Service]\nExecStart=/bin/sh -c 'echo broken-on-purpose; "
                             "exit 3'\n"))
    runner.start(broken)
    wait_for(lambda: seen.saw(broken, "failed", "failed"), 15, message="failed/failed")
    journal = "".join(runner.journal(broken, lines=20))
    assert "broken-on-purpose" in journal
    for name in (slow, broken):
        runner.unload(name)


class CountingManager:
    """systemd's manager object as the runner sees it, counting `Reload` calls."""

    def __init__(self, inner) -> None:  # a pydbus proxy
        self.inner = inner
        self.reloads = 0

    def Reload(self) -> None:  # systemd's method name
        self.reloads += 1
        self.inner.Reload()

    def __getattr__(self, name: str):  # every other method as is
        return getattr(self.inner, name)


def test_a_batch_of_loads_and_a_replace_cost_one_reload_each(runner, systemd_container):  # noqa: F811
    """Loads and unloads wait for one Reload when systemd's view is next needed; a unit
    replaced under the same name still starts with its new content."""
    counting = CountingManager(runner.manager)
    runner.manager = counting
    names = [unique("batch") + ".service" for _ in range(8)]
    try:
        for name in names:
            runner.load(name, unit("[Service]\nExecStart=/bin/sleep 1000\n"))
        assert counting.reloads <= 1  # only the runner's 10 s safety read may reload
        for name in names:
            runner.start(name)
        assert 1 <= counting.reloads <= 2  # one per batch, not one per unit (8 before)
        wait_for(lambda: all(s.active == "active" for n, s in runner.units().items()
                             if n in names), 15, message="all eight active")

        first = names[0]
        before = counting.reloads
        runner.unload(first)
        runner.load(first, unit("[Service]\nExecStart=/bin/sh -c 'echo second-content; "
                                "exec sleep 1000'\n"))
        runner.start(first)
        assert 1 <= counting.reloads - before <= 2
        wait_for(lambda: "second-content" in "".join(runner.journal(first, lines=20)), 15,
                 message="the replaced unit runs its new content")
        before = counting.reloads
        for name in names:
            runner.unload(name)
        assert all(state_after_unload(runner, n) == "not-found" for n in names)
        assert 1 <= counting.reloads - before <= 2
    finally:
        runner.manager = counting.inner


def test_template_instances_and_a_bindsto_sidekick(runner, seen, systemd_container):  # noqa: F811
    prefix = unique("web")
    parent, sidekick = f"{prefix}@1.service", f"{prefix}-announce@1.service"
    runner.load(parent, unit("[Service]\nExecStart=/bin/sleep 1000\n"))
    runner.load(sidekick, unit(f"[Unit]\nBindsTo={parent}\nAfter={parent}\n"
                               "[Service]\nExecStart=/bin/sleep 1000\n"))
    runner.start(parent)
    runner.start(sidekick)
    wait_for(lambda: state(runner, sidekick)[1:] == ("active", "running"), 15,
             message="sidekick running")
    assert (systemd_container.units_dir / parent).is_file()  # written by instance name
    runner.stop(parent)  # systemd, not fleetd, takes the sidekick down with it
    wait_for(lambda: state(runner, sidekick)[1] == "inactive", 15,
             message="sidekick stopped by systemd (BindsTo=)")
    for name in (sidekick, parent):
        runner.unload(name)


# -- fleetd with the systemd runner ---------------------------------------------------------

@pytest.fixture
def cluster(etcd_server, tmp_path):
    harness = FleetHarness(etcd_server.url, f"/sd-{uuid.uuid4().hex[:8]}/", tmp_path, ttl=3)
    yield harness
    harness.close()


def start_systemd_fleetd(cluster: FleetHarness, container, name: str = "sd"):
    return cluster.start(name, metadata="runner=systemd",
                         runner=("--runner", "systemd",
                                 "--units-directory", str(container.units_dir),
                                 "--journal-root", f"/proc/{container.pid1}/root"),
                         env={"DBUS_SYSTEM_BUS_ADDRESS": container.bus_address})


def fleetctl(cluster: FleetHarness, *argv: str, check: bool = True):
    endpoint = f"unix://{cluster.fleetds['p1'].state_dir / 'fleet.sock'}"
    exe = shutil.which("fleetctl")
    command = [exe] if exe else [sys.executable, "-m", "fleetd.fleetctl.main"]
    result = subprocess.run([*command, *argv], capture_output=True, text=True, timeout=60,
                            cwd=cluster.base, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(REPO),
                                 "FLEETCTL_ENDPOINT": endpoint})
    if check:
        assert result.returncode == 0, (argv, result.stdout, result.stderr)
    return result


def rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()[1:]]


def test_fleetctl_lifecycle_on_a_systemd_machine_and_adoption_after_restart(
        cluster, systemd_container):  # noqa: F811
    cluster.start("p1", metadata="runner=process")
    sd = start_systemd_fleetd(cluster, systemd_container)
    name = unique("life") + ".service"
    (cluster.base / name).write_text(
        "[Unit]\nDescription=lifecycle on systemd\n[Service]\n"
        "ExecStart=/bin/sh -c 'echo hello-from-systemd; exec sleep 1000'\n"
        "[X-Fleet]\nMachineMetadata=runner=systemd\n")
    fleetctl(cluster, "submit", name)
    assert rows(fleetctl(cluster, "list-unit-files").stdout)[0][2:4] == ["inactive", "inactive"]
    fleetctl(cluster, "load", name)
    wait_for(lambda: (systemd_container.units_dir / name).is_file(), 15,
             message="unit file written into the units directory")
    out = fleetctl(cluster, "start", name).stdout
    assert f"Unit {name} launched on {sd.machine_id[:8]}" in out
    listed = rows(fleetctl(cluster, "list-units").stdout)
    assert listed[0][0] == name and listed[0][2:] == ["active", "running"]
    assert systemd_container.run("systemctl", "is-active", name,
                                 check=False).stdout.strip() == "active"
    assert "Active: active (running)" in fleetctl(cluster, "status", name).stdout
    journal = wait_for(lambda: (lambda o: o if "hello-from-systemd" in o else None)(
        fleetctl(cluster, "journal", "--lines", "5", name).stdout), 15, message="journal")
    assert "hello-from-systemd" in journal

    # fleetd restarts while the unit runs: the new fleetd adopts it, no restart.
    pid_before = main_pid(systemd_container, name)
    sd.process.terminate()
    assert sd.process.wait(30) == 0
    assert main_pid(systemd_container, name) == pid_before  # still running without fleetd
    # (Its machine key outlives the stop — the lease is left to lapse — so "registered"
    # says nothing yet: wait for the new fleetd to say what it did.)
    sd = start_systemd_fleetd(cluster, systemd_container)
    wait_for(lambda: "adopted 1 units" in sd.log(), 15, message="the new fleetd adopts")
    wait_for(lambda: sd.log().count("registered (127.0.0.1)") == 2, 15,
             message="the new fleetd registered")
    assert rows(fleetctl(cluster, "list-units").stdout)[0][2:] == ["active", "running"]
    assert main_pid(systemd_container, name) == pid_before
    assert sd.log().count(f"start {name}") == 1  # only the first fleetd started it

    fleetctl(cluster, "stop", name)
    wait_for(lambda: systemd_container.run("systemctl", "is-active", name,
                                           check=False).stdout.strip() == "inactive", 15,
             message="stopped by systemd")
    fleetctl(cluster, "unload", name)
    wait_for(lambda: not (systemd_container.units_dir / name).exists(), 15,
             message="unit file removed on unload")
    fleetctl(cluster, "destroy", name)
    assert rows(fleetctl(cluster, "list-unit-files").stdout) == []


def main_pid(container, name: str) -> int:
    shown = container.run("systemctl", "show", "--property", "MainPID", "--value", name)
    return int(shown.stdout.strip() or 0)


def test_agent_reports_systemds_states_for_templates_slow_and_failing_units(
        cluster, systemd_container):  # noqa: F811
    cluster.start("p1", metadata="runner=process")
    start_systemd_fleetd(cluster, systemd_container)
    prefix = unique("tpl")
    pin = "\n[X-Fleet]\nMachineMetadata=runner=systemd\n"
    (cluster.base / f"{prefix}@.service").write_text(
        "[Service]\nExecStartPre=/bin/sleep 3\nExecStart=/bin/sleep 1000\n" + pin)
    (cluster.base / f"{prefix}-bad.service").write_text(
        "[Service]\nExecStart=/bin/sh -c 'exit 7'\n" + pin)
    fleetctl(cluster, "submit", f"{prefix}@.service", f"{prefix}-bad.service")
    fleetctl(cluster, "start", "--no-block", f"{prefix}@1", f"{prefix}-bad.service")

    def listed() -> dict[str, list[str]]:
        return {r[0]: r[2:] for r in rows(fleetctl(cluster, "list-units").stdout)}

    wait_for(lambda: listed().get(f"{prefix}@1.service") == ["activating", "start-pre"], 15,
             message="activating/start-pre while ExecStartPre sleeps")
    wait_for(lambda: listed().get(f"{prefix}-bad.service") == ["failed", "failed"], 15,
             message="failed/failed")
    wait_for(lambda: listed().get(f"{prefix}@1.service") == ["active", "running"], 15,
             message="then active/running")
    assert (systemd_container.units_dir / f"{prefix}@1.service").is_file()  # instance name
    for name in (f"{prefix}@1.service", f"{prefix}-bad.service"):
        fleetctl(cluster, "destroy", name)
    wait_for(lambda: not any(systemd_container.units_dir.glob(f"{prefix}*")), 15,
             message="unit files removed")
