"""A chatty unit cannot fill the disk: its log rotates at fleetd's size limit (10 MiB, 3 old
files kept), and `fleetctl journal` (`--lines`, `-f`) reads it across the rotations. A real
fleetd on a real etcd, a unit that writes 75,000 long lines as fast as `seq` can."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import uuid

import pytest

from fleetd.runner.process.journal import rotated
from fleetd.runner.process.procs import LogLimits
from tests.support.etcd import wait_for
from tests.support.fleet import REPO, FleetHarness

LINES = 75_000  # ~310 bytes each in the journal, ~23 MB: two rotations at 10 MiB
PAD = "x" * 250


@pytest.fixture
def node(etcd_server, tmp_path):
    harness = FleetHarness(etcd_server.url, f"/logs-{uuid.uuid4().hex[:8]}/", tmp_path)
    harness.start("n1")
    yield harness
    harness.close()


def fleetctl_argv(harness: FleetHarness, *argv: str) -> tuple[list[str], dict[str, str]]:
    exe = shutil.which("fleetctl")
    command = [exe] if exe else [sys.executable, "-m", "fleetd.fleetctl.main"]
    endpoint = f"unix://{harness.fleetds['n1'].state_dir / 'fleet.sock'}"
    return [*command, *argv], {**os.environ, "PYTHONPATH": str(REPO),
                               "FLEETCTL_ENDPOINT": endpoint}


def fleetctl(harness: FleetHarness, *argv: str) -> str:
    command, env = fleetctl_argv(harness, *argv)
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300,
                            cwd=harness.base, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, (argv, result.stdout[-500:], result.stderr)
    return result.stdout


def numbers(lines: list[str]) -> list[int]:
    """The numbers `seq` printed, from journal lines ("<stamp> <host> seq[pid]: N")."""
    words = [line.rsplit(": ", 1)[-1].split(" ") for line in lines]
    return [int(w[0]) for w in words if len(w) == 2 and w[0].isdigit() and w[1] == PAD]


def test_a_chatty_units_log_rotates_and_fleetctl_journal_reads_across(node):
    go = node.base / "go"
    unit = node.base / "chatty.service"
    unit.write_text("[Service]\nExecStart=/bin/sh -c 'echo ready; "
                    f"while [ ! -e {go} ]; do sleep 0.05; done; "
                    f"seq -f \"%%.0f {PAD}\" 1 {LINES}; exec sleep 1000'\n")
    fleetctl(node, "start", str(unit))
    wait_for(lambda: "ready" in fleetctl(node, "journal", "chatty.service"), 60,
             message="the unit is running")

    command, env = fleetctl_argv(node, "journal", "-f", "--lines", "10", "chatty.service")
    follower = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env, cwd=node.base, stdin=subprocess.DEVNULL)
    followed: list[str] = []
    reached_end = threading.Event()

    def read() -> None:
        assert follower.stdout is not None
        for line in follower.stdout:
            followed.append(line.rstrip("\n"))
            if line.rstrip().endswith(f": {LINES} {PAD}"):
                reached_end.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(line.endswith(": ready") for line in followed), 60,
                 message="the follower is attached")
        go.touch()
        wait_for(reached_end.is_set, 240, message=f"the follower saw line {LINES} "
                                                  f"(last: {followed[-1:]})")
    finally:
        follower.terminate()
        follower.wait(30)
        reader.join(10)
    assert numbers(followed) == list(range(1, LINES + 1)), "every line once, in order"

    log = node.fleetds["n1"].state_dir / "logs" / "chatty.service.log"
    limits = LogLimits()
    older = rotated(log)
    assert len(older) >= 2, [p.name for p in older]
    assert all(p.stat().st_size <= limits.max_bytes for p in [log, *older])
    spanning = 50_000
    held = [len(p.read_bytes().splitlines()) for p in (log, older[0])]
    assert sum(held) < spanning, f"the read must reach into .2: {held}"
    last = fleetctl(node, "journal", "--lines", str(spanning), "chatty.service")
    assert numbers(last.splitlines()) == list(range(LINES - spanning + 1, LINES + 1))
