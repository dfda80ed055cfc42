"""`provision plan / apply` against one real local cluster (3 nodes: etcd + fleetd each),
brought up by `provision up`, which applies the example's declared units.

Each test declares its own unit sets for the same cluster and starts with
`apply --prune`, so the tests do not depend on each other's leftovers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from fleetd.job import JobState
from fleetd.registry.etcd import Etcd, RegistryUnavailable
from fleetd.registry.registry import Registry
from fleetd.unit.unitfile import content_hash, parse_unit_file
from provision.apply import run as apply_module
from provision.apply.lock import LOCK_TTL_S
from provision.apply.observed import Observed
from provision.errors import OperationFailed
from provision.providers.local.etcdbin import find_etcd
from provision.spec.build import load_cluster
from tests.support.etcd import wait_for
from tests.support.localenv import REPO, UP_TIMEOUT, Env

WEB = (REPO / "clusters" / "units" / "web@.service").read_text()
WEB_SET = {"file": "units/web@.service", "instances": 3,
           "sidekick": {"port": 8080, "check": "http", "path": "/", "ttl": 10}}


class Cluster:
    def __init__(self, env: Env) -> None:
        self.env = env
        self.path, self.name = env.cluster("local.yaml")
        self.data = yaml.safe_load(self.path.read_text())
        self.endpoints: list[str] = []

    def provision(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        exe = shutil.which("provision")
        command = [exe] if exe else [sys.executable, "-m", "provision.cli"]
        return subprocess.run([*command, *argv], capture_output=True, text=True,
                              timeout=timeout, cwd=self.env.base, stdin=subprocess.DEVNULL,
                              env={**os.environ, "PROVISION_STATE": str(self.env.state_root),
                                   "PYTHONPATH": str(REPO)})

    def declare(self, tag: str, units: list[dict], files: dict[str, str] | None = None) -> Path:
        """A definition of this same cluster declaring `units` (unit files written beside)."""
        folder = self.env.base / f"units-{tag}"
        folder.mkdir(exist_ok=True)
        for name, text in (files or {}).items():
            (folder / name).write_text(text)
        data = {**self.data, "units": units}
        path = self.env.base / f"{self.name}-{tag}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def etcd(self) -> Etcd:
        return Etcd(self.endpoints, timeout=3, tls=self.env.tls(self.name))

    def etcdctl_get(self, prefix: str) -> dict[str, dict]:
        result = subprocess.run([find_etcd().etcdctl, "--endpoints", ",".join(self.endpoints),
                                 *self.env.etcdctl_tls(self.name), "get", "--prefix", prefix],
                                capture_output=True, text=True, timeout=20,
                                env={**os.environ, "ETCDCTL_API": "3"}, check=True)
        lines = result.stdout.splitlines()
        return {lines[i]: json.loads(lines[i + 1]) for i in range(0, len(lines) - 1, 2)}

    def states(self) -> dict[str, list[tuple[str, str, str]]]:
        """unit -> [(machine, hash, active)] as the agents report."""
        etcd = self.etcd()
        try:
            found: dict[str, list[tuple[str, str, str]]] = {}
            for record in Registry(etcd).states():
                found.setdefault(record.name, []).append(
                    (record.machine, record.hash, record.status.active))
            return found
        finally:
            etcd.close()


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


@pytest.fixture
def in_process(cluster, monkeypatch):
    """The cluster, for apply sessions opened in this process (they find the cluster's
    admin certificate under its state root)."""
    monkeypatch.setenv("PROVISION_STATE", str(cluster.env.state_root))
    return cluster


def active_web(states: dict) -> dict[str, tuple[str, str]]:
    return {name: (rows[0][0], rows[0][1]) for name, rows in states.items()
            if name.startswith("web@") and len(rows) == 1 and rows[0][2] == "active"}


def test_up_applied_the_example_and_a_second_apply_changes_nothing(cluster):
    # `provision up` ended with apply: the example's 2 instances on 2 machines, announced.
    up_applied = active_web(cluster.states())
    assert sorted(up_applied) == ["web@1.service", "web@2.service"]
    assert len({machine for machine, _ in up_applied.values()}) == 2

    # Three instances with Conflicts=web@*: three machines.
    three = cluster.declare("three", [WEB_SET])
    applied = cluster.provision("apply", str(three))
    assert applied.returncode == 0, applied.stderr
    running = active_web(cluster.states())
    assert sorted(running) == ["web@1.service", "web@2.service", "web@3.service"]
    assert len({machine for machine, _ in running.values()}) == 3
    keys = cluster.etcdctl_get("/services/web/")
    assert sorted(keys) == ["/services/web/1", "/services/web/2", "/services/web/3"]
    for instance in ("1", "2", "3"):
        value = keys[f"/services/web/{instance}"]
        assert value["machine"] == running[f"web@{instance}.service"][0]
        assert value["port"] == 8080 and value["unit"] == f"web@{instance}.service"

    plan = cluster.provision("plan", str(three), "--detailed-exitcode")
    assert plan.returncode == 0, plan.stderr
    assert "No changes" in plan.stdout
    etcd = cluster.etcd()

    def written() -> dict[str, int]:  # every key apply may write, with its mod revision
        prefix = Registry(etcd).keys.prefix
        return {kv.key: kv.mod_revision for kind in ("job/", "global/", "unit/", "lock/")
                for kv in etcd.snapshot(prefix + kind)[1]}
    try:
        # (etcd's revision itself moves on: every machine writes its heartbeat.)
        before = written()
        again = cluster.provision("apply", str(three))
        assert again.returncode == 0, again.stderr
        assert written() == before  # no unit written; its lock taken and released
    finally:
        etcd.close()


def test_a_changed_unit_file_rolls_one_instance_at_a_time(cluster):
    base = cluster.declare("roll1", [WEB_SET])
    assert cluster.provision("apply", str(base), "--prune").returncode == 0
    old = active_web(cluster.states())
    v2 = WEB.replace("Description=Demo web server %i", "Description=Demo web server %i (v2)")
    path = cluster.declare("roll2", [{**WEB_SET, "file": "units-roll2/web@.service"}],
                           {"web@.service": v2})

    plan = cluster.provision("plan", str(path), "--detailed-exitcode", "--output", "json")
    assert plan.returncode == 2, plan.stderr
    changes = json.loads(plan.stdout)["changes"]
    assert {c["action"] for c in changes} == {"replace"}
    assert sorted({c["step"] for c in changes}) == [1, 2, 3]

    fewest = [3]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            fewest[0] = min(fewest[0], len(active_web(cluster.states())))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = cluster.provision("apply", str(path))
    finally:
        done.set()
        watcher.join(10)
    assert result.returncode == 0, result.stderr
    assert fewest[0] >= 2, "more than one instance was down at once"
    now = active_web(cluster.states())
    assert sorted(now) == sorted(old)
    assert all(now[u][1] != old[u][1] for u in now)            # new content everywhere
    assert all(now[u][0] == old[u][0] for u in now)            # replaced in place
    assert sorted(cluster.etcdctl_get("/services/web/")) == [
        "/services/web/1", "/services/web/2", "/services/web/3"]


def test_a_rolling_replace_is_woken_by_etcd_watches_alone(in_process, monkeypatch):
    """Each step of a rolling replace starts when etcd reports that the previous step's
    units are active and announced: with the fallback poll put past the deadline, the
    whole replace still converges (a polling wait would hang)."""
    cluster = in_process
    base = cluster.declare("wake1", [WEB_SET])
    assert cluster.provision("apply", str(base), "--prune").returncode == 0
    old = active_web(cluster.states())
    v2 = WEB.replace("Description=Demo web server %i", "Description=Demo web server %i (v3)")
    declared = load_cluster(cluster.declare("wake2", [{**WEB_SET,
                                                       "file": "units-wake2/web@.service"}],
                                            {"web@.service": v2}))[0]
    monkeypatch.setattr(apply_module, "POLL_S", 3600.0)
    wakes = []
    really_wait = Observed.wait

    def counted(view, timeout):
        woken = really_wait(view, timeout)
        wakes.append(woken)
        return woken
    monkeypatch.setattr(Observed, "wait", counted)
    session = apply_module.open_session(declared, lock=True)
    try:
        assert len([s for s in session.plan.steps if s.rolling]) == 3
        reported: list[str] = []
        before, started = session.registry.etcd.requests, time.monotonic()
        apply_module.apply(session, deadline=time.monotonic() + 90, report=reported.append)
        requests = session.registry.etcd.requests - before
        took = time.monotonic() - started
        assert any(line.startswith("step 3/3: replaced web@3.service") for line in reported)
    finally:
        session.close()
    # Waiting costs no request however often it wakes: one read of jobs, states and
    # announcements with their watches (9), then per step the revision its announcement
    # must follow and the write (2 each); the lock's keepalives beside.
    keepalives = int(took / (LOCK_TTL_S / 3)) + 1
    assert sum(wakes) > 3 * 3, wakes  # each step woke for several state changes
    assert requests <= 9 + 2 * 3 + keepalives, (requests, sum(wakes))
    now = active_web(cluster.states())
    assert sorted(now) == sorted(old) and all(now[u][1] != old[u][1] for u in now)


def test_prune_destroys_only_what_apply_created_and_no_longer_declares(cluster):
    assert cluster.provision("apply", str(cluster.declare("prune1", [WEB_SET])),
                             "--prune").returncode == 0
    two = cluster.declare("prune2", [{**WEB_SET, "instances": 2}])
    kept = cluster.provision("plan", str(two))
    assert "web@3.service" in kept.stdout and "`--prune` destroys it" in kept.stdout
    assert "No changes to apply; 2 units no longer declared kept" in kept.stdout
    pruned = cluster.provision("apply", str(two), "--prune")
    assert pruned.returncode == 0, pruned.stderr
    assert "- destroy  web@3.service" in pruned.stderr
    wait_for(lambda: "/services/web/3" not in cluster.etcdctl_get("/services/web/"), 15,
             message="web@3's announcement withdrawn")
    assert sorted(active_web(cluster.states())) == ["web@1.service", "web@2.service"]


def test_a_stopped_node_moves_its_instance_and_the_announcement_follows(cluster):
    two = cluster.declare("move", [{**WEB_SET, "instances": 2}])
    assert cluster.provision("apply", str(two), "--prune").returncode == 0
    machine = active_web(cluster.states())["web@1.service"][0]
    status = json.loads(cluster.provision("status", cluster.name, "--output", "json").stdout)
    node = next(n["name"] for n in status["nodes"] if n["machine_id"] == machine)
    stopped = cluster.provision("node", "stop", node, "--cluster", cluster.name)
    assert stopped.returncode == 0, stopped.stderr
    try:
        def moved() -> dict | None:
            value = cluster.etcdctl_get("/services/web/").get("/services/web/1")
            return value if value and value["machine"] != machine else None

        value = wait_for(moved, WEB_SET["sidekick"]["ttl"] + 5,
                         message="the announcement names web@1's new machine")
        # The agent's own report may trail the announcer's HTTP check by a moment, and the
        # stopped machine's last (inactive) report may linger until its lease lapses.
        def reported_there() -> bool:
            rows = cluster.states().get("web@1.service", [])
            active = {m for m, _, state in rows if state == "active"}
            return active == {value["machine"]}
        wait_for(reported_there, WEB_SET["sidekick"]["ttl"] + 5,
                 message="web@1 reported active on that machine, and only there")
    finally:
        started = cluster.provision("node", "start", node, "--cluster", cluster.name)
        assert started.returncode == 0, started.stderr


def test_a_unit_failing_its_health_check_is_never_announced(cluster):
    sick = "[Unit]\nDescription=never answers %i\n[Service]\nExecStart=/bin/sleep 300\n"
    path = cluster.declare("sick", [
        {"file": "units-sick/sick@.service", "instances": 1,
         "sidekick": {"port": 9, "check": "tcp", "ttl": 3}}], {"sick@.service": sick})
    result = cluster.provision("apply", str(path), "--prune", "--timeout", "8")
    assert result.returncode == 1
    assert "sick@1.service: active, not announced at /services/sick/1 yet" in result.stderr
    assert "Traceback" not in result.stderr
    assert cluster.etcdctl_get("/services/sick/") == {}


def test_unschedulable_and_failed_units_are_named_with_the_reason(cluster):
    nowhere = cluster.declare("nowhere", [
        {"name": "nvme.service", "content": "[Service]\nExecStart=/bin/sleep 300\n",
         "metadata": {"disk": "nvme"}}])
    result = cluster.provision("apply", str(nowhere), "--prune", "--timeout", "60")
    assert result.returncode == 1
    assert "1 unit cannot be scheduled: " in result.stderr
    assert "(nvme.service)" in result.stderr
    assert "disk=nvme" in result.stderr

    # It fails before it is ever active: a main process that exits at once is active for
    # that moment, and apply, woken by every state the agent reports, may rightly see it so.
    broken = cluster.declare("broken", [
        {"name": "boom.service",
         "content": "[Service]\nExecStartPre=/bin/sh -c 'echo boom-$$((6*7)); exit 3'\n"
                    "ExecStart=/bin/sleep 300\n"}])
    result = cluster.provision("apply", str(broken), "--prune", "--timeout", "60")
    assert result.returncode == 1
    assert "boom.service failed on" in result.stderr
    assert "boom-42" in result.stderr  # its last log lines


def test_a_change_made_by_someone_else_after_planning_aborts_the_step(in_process):
    cluster = in_process
    base = cluster.declare("race1", [WEB_SET])
    assert cluster.provision("apply", str(base), "--prune").returncode == 0
    declared = load_cluster(cluster.declare("race2", [{**WEB_SET, "state": "loaded"}]))[0]
    session = apply_module.open_session(declared, lock=True)
    try:
        assert {c.action.value for c in session.plan.changes} == {"state"}
        # Someone else (not an apply: fleetctl) stops web@2 between our read and our write.
        session.registry.set_desired("web@2.service", JobState.INACTIVE)
        with pytest.raises(OperationFailed) as failed:
            apply_module.apply(session, deadline=time.monotonic() + 30, report=lambda _: None)
        assert str(failed.value).startswith("conflict: the registry changed after this apply "
                                            "planned")
        assert ("web@2.service was changed by someone else (it held "
                f"{session.actual['web@2.service'].hash[:7]}, launched; it now holds "
                f"{session.actual['web@2.service'].hash[:7]}, inactive)") in str(failed.value)
        assert "nothing of step 1 was written; 0 of 1 step written" in str(failed.value)
        _, jobs = session.registry.jobs()
        # Nothing of the step was written: web@1 and web@3 are still launched.
        assert jobs["web@1.service"].job.desired is JobState.LAUNCHED
        assert jobs["web@3.service"].job.desired is JobState.LAUNCHED
    finally:
        session.close()


def test_a_unit_changed_by_someone_else_after_apply_wrote_it_is_a_conflict(in_process):
    cluster = in_process
    base = cluster.declare("over1", [WEB_SET])
    assert cluster.provision("apply", str(base), "--prune").returncode == 0
    v2 = WEB.replace("Description=Demo web server %i", "Description=Demo web server %i (v2)")
    other = WEB.replace("Description=Demo web server %i", "Description=someone else's %i")
    declared = load_cluster(cluster.declare(
        "over2", [{**WEB_SET, "file": "units-over2/web@.service"}], {"web@.service": v2}))[0]
    session = apply_module.open_session(declared, lock=True)
    theirs = parse_unit_file(other)

    def someone_else_writes(text: str) -> None:
        if text.startswith("step 1/3"):  # right after our first rolling step was written
            session.registry.create_job("web@1.service", theirs, JobState.LAUNCHED,
                                        replace=True)
    try:
        ours = next(u for u in session.desired if u.name == "web@1.service").hash
        with pytest.raises(OperationFailed) as failed:
            apply_module.apply(session, deadline=time.monotonic() + 60,
                               report=someone_else_writes)
    finally:
        session.close()
    text = str(failed.value)
    assert "conflict: web@1.service was changed by someone else after this apply wrote it: " \
           f"the registry now holds {content_hash(theirs)[:7]}, launched (this apply wrote " \
           f"{ours[:7]}, launched)" in text
    assert "1 of 3 steps written" in text
    assert "still on the old version: web@2.service" in text
    assert "not announced" not in text


@pytest.mark.parametrize("lost", ["reply", "request"])
def test_a_write_whose_reply_was_lost_is_recognised_as_ours(in_process, lost):
    cluster = in_process
    base = cluster.declare("lost1", [WEB_SET])
    assert cluster.provision("apply", str(base), "--prune").returncode == 0
    declared = load_cluster(cluster.declare(f"lost-{lost}",
                                            [{**WEB_SET, "state": "loaded"}]))[0]
    session = apply_module.open_session(declared, lock=True)
    really_write = session.registry.write_jobs
    calls = []

    def lossy(*args, **kwargs) -> bool:  # the network fails around one real transaction
        calls.append(1)
        if len(calls) == 1 and lost == "request":
            raise RegistryUnavailable("etcd unreachable: the request never arrived")
        ok = really_write(*args, **kwargs)
        if len(calls) == 1:
            raise RegistryUnavailable("etcd unreachable: the reply was lost")
        return ok
    session.registry.write_jobs = lossy
    try:
        apply_module.apply(session, deadline=time.monotonic() + 60, report=lambda _: None)
    finally:
        session.close()
    # Landed: recognised by the lock's progress record, not written twice, no conflict.
    assert len(calls) == (1 if lost == "reply" else 2)
    assert cluster.provision("plan", str(cluster.declare(
        f"lost-{lost}", [{**WEB_SET, "state": "loaded"}])), "--detailed-exitcode"
    ).returncode == 0


@pytest.mark.parametrize("units,message", [
    ([{"file": "units/missing@.service", "instances": 2}], "not found"),
    ([{"file": "units/web@.service"}], "is a template; say how many"),
    ([{"name": "mon.service", "content": "[Service]\nExecStart=/bin/true\n", "global": True,
       "machine_of": "web@1.service"}], "`global: true` cannot be combined with `machine_of`"),
    ([{"file": "units/web@.service", "instances": 1, "sidekick": {"check": "tcp"}}],
     "needs a `port`"),
])
def test_bad_declarations_end_in_one_line_and_write_nothing(cluster, units, message):
    path = cluster.declare("bad", units)
    etcd = cluster.etcd()

    def jobs() -> dict:  # the units fleet holds, with the revision of each job key
        return {n: (r.job.hash, r.job.desired, r.revision)
                for n, r in Registry(etcd).jobs()[1].items()}
    try:
        before = jobs()
        for command in ("plan", "apply"):
            result = cluster.provision(command, str(path))
            assert result.returncode == 2, (command, result.stderr)
            assert message in result.stderr and "Traceback" not in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1
        assert jobs() == before
    finally:
        etcd.close()


def test_sigkill_during_a_rolling_apply_leaves_old_or_new_and_the_next_apply_converges(cluster):
    base = cluster.declare("kill1", [WEB_SET])
    assert cluster.provision("apply", str(base), "--prune").returncode == 0
    old = {n: h for n, (_, h) in active_web(cluster.states()).items()}
    v3 = WEB.replace("Description=Demo web server %i", "Description=Demo web server %i (v3)")
    path = cluster.declare("kill2", [{**WEB_SET, "file": "units-kill2/web@.service"}],
                           {"web@.service": v3})
    exe = shutil.which("provision")
    command = [exe] if exe else [sys.executable, "-m", "provision.cli"]
    applying = subprocess.Popen([*command, "apply", str(path)], cwd=cluster.env.base,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "PROVISION_STATE": str(cluster.env.state_root),
                                     "PYTHONPATH": str(REPO)})
    etcd = cluster.etcd()
    try:
        def first_step_written() -> bool:
            jobs = Registry(etcd).jobs()[1]
            return any(jobs[n].job.hash != old[n] for n in old)
        wait_for(first_step_written, 30, message="the rollout's first step")
        applying.kill()  # SIGKILL, mid-rollout
        applying.wait(10)
        jobs = Registry(etcd).jobs()[1]
        new = {n: jobs[n].job.hash for n in old}
        replaced = [n for n in old if new[n] != old[n]]
        assert replaced and len(replaced) < 3  # stopped part-way
        for name in old:  # every parent is old or new, and its sidekick goes with it
            side = name.replace("web@", "web-announce@")
            side_unit = Registry(etcd).unit(jobs[side].job.hash)
            parent_hash = dict(((o.section, o.name), o.value)
                               for o in side_unit.options)[("X-Provision", "ParentHash")]
            assert parent_hash == new[name]
    finally:
        etcd.close()
        if applying.poll() is None:
            applying.kill()
            applying.wait()
    again = cluster.provision("apply", str(path))
    assert again.returncode == 0, again.stderr
    assert cluster.provision("plan", str(path), "--detailed-exitcode").returncode == 0


def test_plan_detailed_exitcode_is_1_on_errors(cluster, tmp_path):
    bad = cluster.declare("bad-exit", [{"file": "units/web@.service"}])
    assert cluster.provision("plan", str(bad), "--detailed-exitcode").returncode == 1
    elsewhere = dict(cluster.data, name="nowhere", network={"cidr": "127.254.254.0/24"})
    path = tmp_path / "nowhere.yaml"
    path.write_text(yaml.safe_dump({**elsewhere, "units": [WEB_SET]}, sort_keys=False))
    (tmp_path / "units").mkdir()
    (tmp_path / "units" / "web@.service").write_text(WEB)
    unreachable = cluster.provision("plan", str(path), "--detailed-exitcode")
    assert unreachable.returncode == 1
    assert "cannot read fleet's registry" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
    plain = cluster.provision("apply", str(path))
    assert plain.returncode == 1 and "is the cluster up?" in plain.stderr
