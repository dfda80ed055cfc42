"""The systemd-container fixture itself (tests/support/systemd_container.py): a real Debian
systemd is PID 1 of an nspawn container, the host reaches it over D-Bus, units written into
the bind-mounted units directory run there, and stop() leaves nothing behind. Skipped, with
the reason, where it cannot run (not root, no systemd-nspawn/mmdebstrap, no pydbus)."""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.support.etcd import wait_for
from tests.support.systemd_container import (
    SystemdContainer,
    new_container_name,
    start_systemd_container,
    systemd_container,  # noqa: F401 - the fixture
    systemd_container_problem,
)


@pytest.fixture(scope="module")
def bus(systemd_container):  # noqa: F811 - the fixture imported above
    """The container's system bus, through pydbus from the host."""
    pydbus = pytest.importorskip("pydbus", reason="needs pydbus and PyGObject "
                                                  "(pip install '.[systemd]')")
    return pydbus.connect(systemd_container.bus_address)


def read_until(process: subprocess.Popen, text: str, timeout: float) -> str:
    """What the process printed until `text` appeared (bounded by `timeout`).

    Raw os.read on the pipe: a buffered readline could hold the awaited line in Python's
    buffer while select() waits for more bytes that never come."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while text.encode() not in seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise TimeoutError(f"{text!r} not printed within {timeout}s: {seen!r}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"ended before printing {text!r}: {seen!r}")
            seen += chunk
    return seen.decode(errors="replace")


def journal_showing(container: SystemdContainer, unit: str, text: str) -> str | None:
    """The unit's journal as read from the host, once it shows `text`."""
    out = subprocess.run(container.journal_command(unit, 20, False), capture_output=True,
                         text=True, timeout=30, stdin=subprocess.DEVNULL).stdout
    return out if text in out else None


def test_the_containers_pid1_is_systemd_and_it_is_running(systemd_container):  # noqa: F811
    status = Path(f"/proc/{systemd_container.pid1}/status").read_text()
    assert "Name:\tsystemd" in status
    assert status.split("NSpid:")[1].split("\n")[0].split()[-1] == "1"  # PID 1 inside
    assert systemd_container.boot_state == "running"
    said = systemd_container.run("systemctl", "is-system-running", check=False).stdout
    assert said.strip() == "running"
    assert systemd_container.run("hostname").stdout.strip() == systemd_container.name


def test_a_unit_in_the_units_dir_is_linked_started_logged_and_stopped_over_dbus(
        systemd_container, bus):  # noqa: F811
    manager = bus.get("org.freedesktop.systemd1")
    assert manager.ListUnitsByNames(["dbus.service"])[0][3:5] == ("active", "running")

    name = f"fixture-{uuid.uuid4().hex[:6]}.service"
    marker = f"hello-{uuid.uuid4().hex[:6]}"
    path = systemd_container.units_dir / name
    path.write_text(f"[Unit]\nDescription=fixture check\n[Service]\n"
                    f"ExecStart=/bin/sh -c 'echo {marker}; exec sleep 1000'\n")
    try:
        linked = manager.LinkUnitFiles([str(path)], True, True)  # runtime, replace
        assert linked == [("symlink", f"/run/systemd/system/{name}", str(path))]
        manager.Reload()
        manager.StartUnit(name, "replace")
        unit = bus.get("org.freedesktop.systemd1", manager.LoadUnit(name))
        wait_for(lambda: unit.ActiveState == "active", 15, message=f"{name} active")
        assert unit.SubState == "running"

        journal = wait_for(lambda: journal_showing(systemd_container, name, marker), 15,
                           message="the unit's output in its journal")
        assert f"Started {name}" in journal
        follow = subprocess.Popen(systemd_container.journal_command(name, 5, True),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
        try:
            read_until(follow, marker, 15)
            manager.StopUnit(name, "replace")
            read_until(follow, f"Stopped {name}", 15)  # followed as it happens
        finally:
            follow.terminate()
            follow.wait(10)
        wait_for(lambda: unit.ActiveState == "inactive", 15, message=f"{name} inactive")
    finally:
        with contextlib.suppress(Exception):  # not loaded if the test failed early
            manager.StopUnit(name, "replace")
        manager.DisableUnitFiles([name], True)
        path.unlink(missing_ok=True)
        manager.Reload()


@pytest.mark.skipif(systemd_container_problem() is not None,
                    reason=str(systemd_container_problem()))
def test_stop_leaves_no_process_cgroup_or_temporary_directory():
    name = new_container_name()
    units_dir = Path(tempfile.mkdtemp(prefix=f"{name}-units-"))
    try:
        container = start_systemd_container(units_dir, name=name)
        assert container.process is not None
        pids = [container.process.pid, container.pid1]
        made = [*container.cgroups, container.state_dir]
        assert all(path is not None and path.exists() for path in made)
        container.stop()
        container.stop()  # idempotent: the fixture's teardown and atexit may both call it
        assert container.process.poll() is not None
        assert [pid for pid in pids if os.path.exists(f"/proc/{pid}")] == []
        assert [path for path in made if path is not None and path.exists()] == []
        assert not Path("/run/systemd/nspawn/propagate", container.name).exists()
        assert units_dir.is_dir()  # the caller's, left to the caller
    finally:
        shutil.rmtree(units_dir, ignore_errors=True)
