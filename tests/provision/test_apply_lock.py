"""The apply lock's words and its judgement of a holder on this machine (no etcd needed:
the lock's etcd side is tested against real clusters in tests/integration)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from provision.apply.lock import _machine, _start_time, describe, holder_gone

SINCE = time.mktime((2024, 5, 1, 12, 2, 33, 0, 0, -1))


def test_describe_names_pid_host_since_and_progress():
    info = {"pid": 4242, "host": "build-7", "since": SINCE, "step": 1, "steps": 3}
    assert describe(info, now=SINCE + 41) == (
        "pid 4242 on host build-7 since 2024-05-01 12:02:33 (41s ago; 1 of 3 steps written)")
    assert describe(info, brief=True) == "pid 4242 on host build-7 (since 2024-05-01 12:02:33)"
    assert describe({"pid": 1, "host": "h", "since": SINCE}, now=SINCE) == (
        "pid 1 on host h since 2024-05-01 12:02:33 (0s ago)")
    assert describe({}) == "pid ? on host ?"  # a damaged record still reads as a sentence


def _holder(pid: int) -> dict:
    return {"pid": pid, "machine": _machine(), "started": _start_time(pid)}


def test_a_live_holder_here_is_not_gone_and_a_dead_one_is():
    assert not holder_gone(_holder(os.getpid()))
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    info = _holder(child.pid)
    child.wait()
    assert holder_gone(info)


def test_a_killed_holder_not_yet_reaped_is_gone():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        info = _holder(child.pid)
        assert not holder_gone(info)
        child.kill()
        deadline = time.monotonic() + 20
        while not holder_gone(info) and time.monotonic() < deadline:  # a zombie until waited
            time.sleep(0.05)
        assert holder_gone(info)
    finally:
        child.kill()
        child.wait()


def test_a_reused_pid_is_not_the_holder():
    info = {**_holder(os.getpid()), "started": "1"}  # same pid, another start time
    assert holder_gone(info)


def test_a_holder_elsewhere_is_never_judged_gone():
    assert not holder_gone({"pid": 999_999_999, "machine": "another-boot/1", "started": "5"})
    assert not holder_gone({"pid": 999_999_999})  # no machine recorded
    assert not holder_gone({"pid": "x", "machine": _machine()})
