"""Two `provision apply` processes at once against one real local cluster, an apply that
stalls past its lock's lease, one killed with SIGKILL, and a cluster taken down under a
running apply.

One apply at a time holds the cluster (`lock/apply` in etcd, on a lease): a second one
waits, naming the holder, then plans against what the first left — or, with `--no-wait`,
exits 2. While they run, a sampler reads the announcements every 50 ms: never fewer
instances available than max_unavailable allows.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from fleetd.registry.apply_lock import ApplyLockStore
from fleetd.registry.registry import Registry
from provision.apply.lock import LOCK_TTL_S
from tests.integration.test_apply import WEB, WEB_SET, Cluster
from tests.support.etcd import wait_for
from tests.support.localenv import REPO, UP_TIMEOUT, Env

HOST = socket.gethostname()


@pytest.fixture(scope="module")
def cluster():
    env = Env()
    try:
        running = Cluster(env)
        up = running.provision("up", str(running.path), "--timeout", str(UP_TIMEOUT))
        assert up.returncode == 0, up.stderr
        exports = running.provision("env", running.name).stdout
        running.endpoints = exports.split("ETCDCTL_ENDPOINTS=", 1)[1].split()[0].split(",")
        yield running
    finally:
        env.close()


def start(cluster: Cluster, *argv: str) -> subprocess.Popen:
    exe = shutil.which("provision")
    command = [exe] if exe else [sys.executable, "-m", "provision.cli"]
    return subprocess.Popen([*command, *argv], cwd=cluster.env.base, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            env={**os.environ, "PROVISION_STATE": str(cluster.env.state_root),
                                 "PYTHONPATH": str(REPO)})


def finish(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def holder(cluster: Cluster) -> dict | None:
    etcd = cluster.etcd()
    try:
        record = ApplyLockStore(Registry(etcd)).read()
        return dict(record.info) if record is not None else None
    finally:
        etcd.close()


def held_by(cluster: Cluster, process: subprocess.Popen, step: int = 0) -> bool:
    info = holder(cluster)
    return bool(info and info.get("pid") == process.pid and info.get("step", 0) >= step)


def version(tag: str) -> str:
    return WEB.replace("Description=Demo web server %i", f"Description=Demo web server %i "
                                                          f"({tag})")


def job_hashes(cluster: Cluster) -> dict[str, str]:
    etcd = cluster.etcd()
    try:
        return {n: r.job.hash for n, r in Registry(etcd).jobs()[1].items()
                if n.startswith("web@")}
    finally:
        etcd.close()


class AnnouncementSampler:
    """Counts /services/web/ announcements every 50 ms in a thread; keeps the fewest."""

    def __init__(self, cluster: Cluster) -> None:
        self.etcd = cluster.etcd()
        self.fewest: int | None = None
        self.samples = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            try:
                _, kvs = self.etcd.snapshot("/services/web/")
            except Exception:  # a missed sample is not a finding
                kvs = None
            if kvs is not None:
                self.samples += 1
                self.fewest = len(kvs) if self.fewest is None else min(self.fewest, len(kvs))
            self._done.wait(0.05)

    def __enter__(self) -> AnnouncementSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join(10)
        self.etcd.close()


@pytest.fixture
def base(cluster):
    """Three web instances of the example's unit file, converged, nobody holding the lock."""
    path = cluster.declare("base", [WEB_SET])
    result = cluster.provision("apply", str(path), "--prune")
    assert result.returncode == 0, result.stderr
    assert holder(cluster) is None  # a clean exit released the lock at once
    wait_for(lambda: len(cluster.etcdctl_get("/services/web/")) == 3, 20,
             message="three announcements")
    return path


def test_two_applies_of_the_same_change_roll_once_within_max_unavailable(cluster, base):
    v2 = cluster.declare("same", [{**WEB_SET, "file": "units-same/web@.service"}],
                         {"web@.service": version("same")})
    with AnnouncementSampler(cluster) as sampler:
        first = start(cluster, "apply", str(v2))
        wait_for(lambda: held_by(cluster, first), 30, message="the first apply holds the lock")
        second = start(cluster, "apply", str(v2))
        code1, out1, err1 = finish(first)
        code2, out2, err2 = finish(second)
    assert code1 == 0, err1
    assert code2 == 0, err2
    assert "applied 6 changes" in out1
    assert f"waiting for the apply of pid {first.pid} on host {HOST} since " in err2
    assert f"the apply of pid {first.pid} on host {HOST}" in err2 and "is done" in err2
    assert "applied 0 changes; 6 declared units converged" in out2  # nothing rolled twice
    assert "not announced" not in err1 + err2
    assert sampler.samples > 20
    assert sampler.fewest is not None and sampler.fewest >= 2, \
        f"only {sampler.fewest} of 3 instances announced at one moment (max_unavailable 1)"
    assert holder(cluster) is None


def test_a_second_apply_of_another_file_waits_then_rolls_on_top(cluster, base):
    v2 = cluster.declare("a", [{**WEB_SET, "file": "units-a/web@.service"}],
                         {"web@.service": version("a")})
    v3 = cluster.declare("b", [{**WEB_SET, "file": "units-b/web@.service"}],
                         {"web@.service": version("b")})
    with AnnouncementSampler(cluster) as sampler:
        first = start(cluster, "apply", str(v2))
        wait_for(lambda: held_by(cluster, first), 30, message="the first apply holds the lock")
        second = start(cluster, "apply", str(v3))
        code1, out1, err1 = finish(first)
        code2, out2, err2 = finish(second)
    assert code1 == 0, err1
    assert code2 == 0, err2
    assert "waiting for the apply of" in err2 and "planning against what it left" in err2
    # The second planned against the first's result: its "old" hash is the first's new one.
    first_hash = re.search(r"~ replace +web@1\.service +\w{7} → (\w{7})", err1)[1]
    second_hash = re.search(r"~ replace +web@1\.service +(\w{7}) → (\w{7})", err2)
    assert second_hash and second_hash[1] == first_hash, err2
    assert "applied 6 changes" in out2
    now = job_hashes(cluster)
    assert {h[:7] for h in now.values()} == {second_hash[2]}
    assert sampler.fewest is not None and sampler.fewest >= 2, sampler.fewest


def test_no_wait_exits_2_naming_the_holder_and_sigterm_releases_at_once(cluster, base):
    sick = "[Unit]\nDescription=never answers %i\n[Service]\nExecStart=/bin/sleep 300\n"
    slow = cluster.declare("slow", [
        WEB_SET, {"file": "units-slow/sick@.service", "instances": 1,
                  "sidekick": {"port": 9, "check": "tcp", "ttl": 3}}],
        {"sick@.service": sick})
    first = start(cluster, "apply", str(slow), "--timeout", "100")
    try:
        wait_for(lambda: held_by(cluster, first, step=1), 30,
                 message="the first apply wrote its step and waits for convergence")
        refused = cluster.provision("apply", str(base), "--no-wait")
        assert refused.returncode == 2, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert f"is being applied by pid {first.pid} on host {HOST} since " in lines[0]
        assert "--no-wait" in lines[0]
        plan = cluster.provision("plan", str(base))
        assert plan.returncode == 0, plan.stderr
        assert f"note: {cluster.name} is being applied by pid {first.pid}" in plan.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        code, _, err = finish(first, 30)
    assert code == 130 and "Traceback" not in err, err
    assert holder(cluster) is None  # released when it exited, not when its lease lapses
    result = cluster.provision("apply", str(base), "--prune")
    assert result.returncode == 0, result.stderr
    assert "waiting for" not in result.stderr


def test_an_apply_stalled_past_its_lease_is_fenced_out(cluster, base):
    # Each instance of this version takes 3 s to start: the first apply is surely still in
    # its first step when it is stopped (a step ends as soon as its unit is up: fast).
    slow = version("stalled").replace("[Service]\n", "[Service]\nExecStartPre=/bin/sleep 3\n")
    v2 = cluster.declare("stalled", [{**WEB_SET, "file": "units-stalled/web@.service"}],
                         {"web@.service": slow})
    v3 = cluster.declare("next", [{**WEB_SET, "file": "units-next/web@.service"}],
                         {"web@.service": version("next")})
    first = start(cluster, "apply", str(v2))
    try:
        wait_for(lambda: held_by(cluster, first, step=1), 30,
                 message="the first apply's first rolling step")
        first.send_signal(signal.SIGSTOP)  # stalled (a frozen VM, a swapped-out process)
        stopped_at = time.monotonic()
        second = start(cluster, "apply", str(v3))
        wait_for(lambda: held_by(cluster, second), LOCK_TTL_S + 30, interval=0.1,
                 message="the second apply takes the lock")
        waited = time.monotonic() - stopped_at
        code2, _, err2 = finish(second)
    finally:
        first.send_signal(signal.SIGCONT)
    code1, _, err1 = finish(first)
    assert code2 == 0, err2
    assert f"waiting for the apply of pid {first.pid}" in err2
    # Not before the stalled holder's lease lapsed: renewed every TTL/3, it lives at least
    # 2/3 of the TTL after the stall began.
    assert waited >= LOCK_TTL_S * 2 / 3 - 0.5, waited
    assert code1 == 1, err1
    assert "this apply lost its lock on cluster" in err1 and "1 of 3 steps written" in err1
    assert err1.strip().splitlines()[-1].startswith("provision: this apply lost its lock")
    assert "Traceback" not in err1
    # The stalled apply wrote nothing after it woke up: the second apply's content stands.
    now = job_hashes(cluster)
    assert len(set(now.values())) == 1
    assert cluster.provision("plan", str(v3), "--detailed-exitcode").returncode == 0


def test_a_sigkilled_holder_on_this_machine_is_taken_over_at_once(cluster, base):
    v2 = cluster.declare("killed", [{**WEB_SET, "file": "units-killed/web@.service"}],
                         {"web@.service": version("killed")})
    first = start(cluster, "apply", str(v2))
    wait_for(lambda: held_by(cluster, first, step=1), 30, message="the first rolling step")
    first.kill()
    first.wait(10)
    assert holder(cluster) is not None  # its lease has not lapsed yet
    started = time.monotonic()
    again = cluster.provision("apply", str(v2))
    assert again.returncode == 0, again.stderr
    assert f"the apply of pid {first.pid} on host {HOST}" in again.stderr
    assert "is no longer running; taking its lock over" in again.stderr
    assert time.monotonic() - started < 60
    assert holder(cluster) is None


# -- the cluster goes away under a running apply -------------------------------------------------

def test_down_during_apply_is_one_line_within_seconds(env):
    cluster = Cluster(env)
    up = cluster.provision("up", str(cluster.path), "--timeout", str(UP_TIMEOUT))
    assert up.returncode == 0, up.stderr
    exports = cluster.provision("env", cluster.name).stdout
    cluster.endpoints = exports.split("ETCDCTL_ENDPOINTS=", 1)[1].split()[0].split(",")
    fleet = exports.split("FLEETCTL_ENDPOINT=", 1)[1].split()[0]
    sick = "[Unit]\nDescription=never answers %i\n[Service]\nExecStart=/bin/sleep 300\n"
    path = cluster.declare("sick", [
        {"file": "units-sick/sick@.service", "instances": 1,
         "sidekick": {"port": 9, "check": "tcp", "ttl": 3}}], {"sick@.service": sick})
    applying = start(cluster, "apply", str(path), "--timeout", "100")
    try:
        wait_for(lambda: held_by(cluster, applying, step=1), 30, message="its step written")
        down = cluster.provision("down", cluster.name)
        assert down.returncode == 0, down.stderr
        down_at = time.monotonic()
        code, _, err = finish(applying, 60)
        took = time.monotonic() - down_at
    finally:
        if applying.poll() is None:
            applying.kill()
            applying.wait()
    assert code == 1, err
    last = err.strip().splitlines()[-1]
    assert last == f"provision: cluster {cluster.name} went down during apply; 1 of 1 step written"
    print(f"apply noticed the cluster down {took:.1f}s after `provision down` returned")
    assert took < 10, f"noticed {took:.1f}s after the cluster was down"
    assert "Traceback" not in err and "StatusCode" not in err and "grpc" not in err.lower()

    # Every command on the stopped cluster: one line, no gRPC text.
    for argv in (["plan", str(path)], ["apply", str(path)],
                 ["plan", str(path), "--detailed-exitcode"]):
        result = cluster.provision(*argv)
        assert result.returncode == 1, (argv, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (argv, lines)
        assert f"cluster {cluster.name} is not running" in lines[0], (argv, lines)
    fleetctl = subprocess.run([sys.executable, "-m", "fleetd.fleetctl.main", "list-units"],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "FLEETCTL_ENDPOINT": fleet,
                                   "PYTHONPATH": str(REPO)})
    assert fleetctl.returncode == 1
    assert len(fleetctl.stderr.strip().splitlines()) == 1 and "cannot reach fleet" in \
        fleetctl.stderr
