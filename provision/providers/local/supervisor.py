"""The per-cluster supervisor: owns every process of a local cluster after `up` returns.

    python -m provision.providers.local.supervisor STATE_DIR [--daemon]

One process per cluster (an flock on `supervisor.lock` makes sure), detached
from the terminal. Each node gets a process runner (fleetd.runner.process) with
the node's units from `plan.json`: etcd2.service, fleet.service (ordered after
etcd, so it stops first) and the node's own units; their logs
(`nodes/<name>/system/logs/<unit>.log`) rotate at the plan's size limit. The
runner's guards give the orphan safety: if the supervisor dies, even by SIGKILL,
every node process is killed with it.

It reconciles: on SIGHUP (and every few seconds) it reads `desired.json` and
starts or stops whole nodes to match, in parallel; after every change it
rewrites `status.json` (unit states and pids). A status write the disk refuses
(full, read-only) never stops it or a node: it is retried on every pass and
reported in `state-writes.json` (see state.py) until it works again. SIGTERM or
SIGINT stops every node cleanly (fleetd first, then etcd) and exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from fleetd.runner.process import ProcessRunner
from fleetd.runner.process.procs import LogLimits
from fleetd.unit.unitfile import parse_unit_file
from fleetd.wakeup import SignalSafeEvent
from provision.files import cause, write_atomic
from provision.providers.local import state
from provision.providers.local.units import ETCD_UNIT

log = logging.getLogger("provision.supervisor")
RESCAN_S = 2.0
NODE_STOP_TIMEOUT_S = 40.0
SHARED_READY_S = 15.0
PEER_CLOSE_POLL_S = 0.01


class Node:
    """The processes of one node: a process runner loaded with the node's units."""

    def __init__(self, spec: dict, on_change) -> None:  # a callable
        self.spec = spec
        self.name = spec["name"]
        self.on_change = on_change
        self.runner: ProcessRunner | None = None
        self.error: str | None = None  # why the last start failed
        self.error_generation = -1  # a failed start is retried on a new desired state only
        self.etcd_restarts = 0  # restart requests of its etcd carried out (see Supervisor)
        self.lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self.runner is not None

    def start(self) -> None:
        with self.lock:
            if self.runner is not None:
                return
            self.error = None
            base = Path(self.spec["dir"])
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            env.update({k: os.environ[k] for k in ("LANG", "LC_ALL", "TZ") if k in os.environ})
            env.update(self.spec.get("env") or {})
            limits = self.spec.get("log_limits")
            runner = ProcessRunner(base / "system", self.spec["machine_id"], self.spec["hostname"],
                                   env=env, root_dir=base / "root",
                                   log_limits=LogLimits(**limits) if limits else None)
            runner.subscribe(lambda name, status: self.on_change())
            try:
                for unit in self.spec["units"]:
                    runner.load(unit["name"], parse_unit_file(unit["text"]))
            except Exception as err:
                self.error = f"cannot load the node's units: {err}"
                runner.shutdown(5)
                raise
            self.runner = runner
            for unit in self.spec["units"]:
                if unit["start"]:
                    runner.start(unit["name"])
            log.info("node %s started", self.name)

    def stop(self) -> None:
        with self.lock:
            runner, self.runner = self.runner, None
            if runner is None:
                return
            runner.shutdown(NODE_STOP_TIMEOUT_S)
            log.info("node %s stopped", self.name)
        self.on_change()

    def quiesce(self) -> None:
        """Stop every unit but etcd and wait for them: a cluster stops fleet everywhere before
        any etcd goes, so no fleetd loses its etcd (or quorum) while it says goodbye."""
        runner = self.runner
        if runner is None:
            return
        others = [u["name"] for u in self.spec["units"] if u["name"] != ETCD_UNIT]
        for name in others:
            runner.stop(name)
        deadline = time.monotonic() + NODE_STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            states = runner.units()
            if all(states[n].active in ("inactive", "failed") for n in others if n in states):
                return
            time.sleep(0.05)

    def restart_etcd(self, timeout: float = NODE_STOP_TIMEOUT_S) -> None:
        """Stop the node's etcd alone and start it again (its other units keep running):
        every connection to it ends, and the new ones meet its files as they are now."""
        runner = self.runner
        if runner is None:
            return
        runner.stop(ETCD_UNIT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            unit = runner.units().get(ETCD_UNIT)
            if unit is None or unit.active in ("inactive", "failed"):
                break
            time.sleep(0.05)
        runner.start(ETCD_UNIT)
        log.info("node %s: etcd restarted", self.name)

    def begin_etcd_stop(self) -> None:
        """Ask the node's etcd to stop (SIGTERM), without waiting for it to end."""
        runner = self.runner
        if runner is not None:
            runner.stop(ETCD_UNIT)

    def etcd_peer_listener_closed(self) -> bool:
        """True once the node's etcd refuses peer connections (or has ended, or the node
        runs no member). etcd closes its peer listener only after it stopped its raft
        transport; what remains is its wait, up to a second, for the connections the
        other members hold open to it (they end when those members stop)."""
        runner = self.runner
        address = urllib.parse.urlsplit(self.spec.get("peer_url") or "")
        if runner is None or not address.hostname or not address.port:
            return True
        unit = runner.units().get(ETCD_UNIT)
        if unit is None or unit.active in ("inactive", "failed"):
            return True
        try:
            socket.create_connection((address.hostname, address.port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        except OSError:
            return False  # a busy machine's timeout says nothing: look again
        return False

    def leads_etcd(self) -> bool:
        """True when this node's etcd is the raft leader (asked over the v2 stats API)."""
        url = self.spec.get("etcd_url")
        if self.runner is None or not url:
            return False
        try:
            with urllib.request.urlopen(f"{url}/v2/stats/self", timeout=1,
                                        context=self._client_tls()) as answer:
                return json.load(answer).get("state") == "StateLeader"
        except (OSError, ValueError):
            return False

    def _client_tls(self) -> ssl.SSLContext | None:
        """The node's etcd client certificate, where its etcd speaks TLS. Without it the
        probe fails, every etcd looks like a follower, all stop at once and the leader
        waits out a leadership transfer to a member that is stopping too (seconds)."""
        env = self.spec.get("env") or {}
        ca_file = env.get("ETCDCTL_CA_FILE")
        if not str(self.spec.get("etcd_url") or "").startswith("https:") or not ca_file:
            return None
        context = ssl.create_default_context(cafile=ca_file)
        if env.get("ETCDCTL_CERT_FILE"):
            context.load_cert_chain(env["ETCDCTL_CERT_FILE"], env.get("ETCDCTL_KEY_FILE"))
        return context

    def status(self) -> dict:
        runner = self.runner
        units = {}
        if runner is not None:
            for name, unit in runner.units().items():
                units[name] = {"active": unit.active, "sub": unit.sub,
                               "pid": runner.main_pid(name)}
        return {"state": "running" if runner is not None else "stopped",
                "machine_id": self.spec["machine_id"], "error": self.error, "units": units,
                "etcd_restarts": self.etcd_restarts}


class Supervisor:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        plan = state.read_json(state_dir / state.PLAN)
        if plan is None:
            raise SystemExit(f"supervisor: no readable {state.PLAN} in {state_dir}")
        self.cluster = plan.get("cluster", "?")
        # Set from signal handlers: see fleetd.wakeup for why not threading.Event.
        self.wake = SignalSafeEvent()
        self.stopping = SignalSafeEvent()
        limits = plan.get("log_limits")  # every node's logs rotate alike
        self.nodes = {spec["name"]: Node({**spec, "log_limits": limits}, self.wake.set)
                      for spec in plan["nodes"]}
        self.shared = Node({"name": "shared", "dir": str(state_dir / state.SHARED),
                            "machine_id": "0" * 32, "hostname": self.cluster,
                            "units": plan.get("shared_units") or [], "log_limits": limits},
                           self.wake.set)
        self.wait_tcp = list(plan.get("wait_tcp") or [])
        self.generation = 0  # of the desired state last applied
        self.etcd_restarts: dict[str, int] = {}  # node -> etcd restarts asked for so far
        self.pool = ThreadPoolExecutor(max_workers=max(4, len(self.nodes)),
                                       thread_name_prefix="node")
        self.writes_problem: dict | None = None  # status.json cannot be written: why, since
        try:
            self.writes_record: state.WritesRecord | None = state.WritesRecord(
                state_dir / state.WRITES_FILE)
        except OSError as err:
            log.warning("cannot create %s: %s", state_dir / state.WRITES_FILE, cause(err))
            self.writes_record = None

    def desired(self) -> dict[str, str]:
        data = state.read_json(self.state_dir / state.DESIRED) or {}
        generation = data.get("generation")
        self.generation = generation if isinstance(generation, int) else 0
        wanted = data.get("nodes") or {}
        self.etcd_restarts = {name: int(count) for name, count in
                              (data.get("etcd_restarts") or {}).items()
                              if name in self.nodes and isinstance(count, int)}
        return {name: wanted.get(name, "stopped") for name in self.nodes}

    def reconcile(self) -> None:
        desired = self.desired()
        jobs = []
        for name, count in self.etcd_restarts.items():
            node = self.nodes[name]
            if count > node.etcd_restarts:
                node.etcd_restarts = count
                if node.running and desired[name] == "running":
                    jobs.append(self.pool.submit(self._guarded, node.restart_etcd, name))
        plan: dict | None = None
        for name, node in self.nodes.items():
            retry = node.error is None or node.error_generation != self.generation
            if desired[name] == "running" and not node.running and retry:
                # A stopped node starts from its plan as it is now (`provision node reset`
                # rewrites a node's etcd flags to join the cluster again).
                plan = plan if plan is not None else (
                    state.read_json(self.state_dir / state.PLAN) or {})
                fresh = next((n for n in plan.get("nodes") or [] if n.get("name") == name),
                             None)
                if fresh is not None:
                    node.spec = {**fresh, "log_limits": plan.get("log_limits")}
                jobs.append(self.pool.submit(self._guarded, node.start, name))
            elif desired[name] != "running" and node.running:
                jobs.append(self.pool.submit(self._guarded, node.stop, name))
        for job in jobs:
            job.result()

    def _each(self, phase: str, nodes: dict[str, Node]) -> None:
        jobs = [self.pool.submit(self._guarded, getattr(node, phase), name)
                for name, node in nodes.items()]
        for job in jobs:
            job.result()

    def _guarded(self, action, name: str) -> None:  # a bound method
        try:
            action()
        except Exception as err:  # one node's trouble must not take the others down
            log.exception("node %s: %s failed", name, action.__name__)
            node = self.nodes.get(name, self.shared)
            node.error = node.error or f"{action.__name__} failed: {err}"
            node.error_generation = self.generation
            self.wake.set()

    def write_status(self, final: bool = False) -> None:
        data = {
            "cluster": self.cluster,
            "supervisor_pid": os.getpid(),
            "running": not final,
            "generation": self.generation,
            "updated": _now(),
            "nodes": {name: node.status() for name, node in self.nodes.items()},
            "shared": self.shared.status(),
        }
        path = self.state_dir / state.STATUS
        try:
            state.write_json(path, data)
        except OSError as err:
            # A full or read-only disk: the nodes do not depend on this file, so they keep
            # running; the problem is reported through the fixed-size record instead.
            self._writes_failing(path, err)
        else:
            self._writes_ok()

    def _writes_failing(self, path: Path, err: OSError) -> None:
        now = _now()
        if self.writes_problem is None:
            log.warning("cannot write %s: %s; the nodes keep running", path, cause(err))
            self.writes_problem = {"failing": True, "path": str(path), "errno": err.errno,
                                   "error": cause(err), "since": now, "failures": 0}
        self.writes_problem["failures"] += 1
        self.writes_problem["last_attempt"] = now
        self._record(self.writes_problem)

    def _writes_ok(self) -> None:
        if self.writes_problem is None:
            return
        log.info("state writes work again (%s failed since %s)", self.writes_problem["path"],
                 self.writes_problem["since"])
        self.writes_problem = None
        self._record({"failing": False, "recovered": _now()})

    def _record(self, data: dict) -> None:
        if self.writes_record is None:
            return
        try:
            self.writes_record.write(data)
        except OSError as err:  # in place needs no new blocks; if even that fails, say so
            log.warning("cannot write %s: %s", self.writes_record.path, cause(err))

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGHUP, lambda *_: self.wake.set())
        if self.shared.spec["units"]:
            self._guarded(self._start_shared, "shared")
        self.desired()  # restarts asked of an earlier supervisor are not carried out again
        for name, count in self.etcd_restarts.items():
            self.nodes[name].etcd_restarts = count
        self.write_status()
        log.info("supervisor of %s ready (pid %s)", self.cluster, os.getpid())
        while not self.stopping.is_set():
            # Clear before acting, not after waiting: a SIGHUP (a new desired.json) that
            # lands while we reconcile must cut the next wait short, not be wiped out by
            # it (that lost wake-up left `provision up` waiting a whole rescan period).
            self.wake.clear()
            self.reconcile()
            self.write_status()
            self.wake.wait(RESCAN_S)
        log.info("stopping every node of %s", self.cluster)
        self.stop_nodes()
        self._guarded(self.shared.stop, "shared")
        self.write_status(final=True)
        self.pool.shutdown()
        return 0

    def stop_nodes(self) -> None:
        """Fleet and the node units everywhere first (no fleetd loses its etcd while it
        says goodbye), then etcd: followers before the raft leader, which would otherwise
        try to hand its leadership to a member that is stopping too (seconds). The leader
        goes once every follower has stopped its raft transport (its peer listener is
        closed), not once they have ended: each follower then still waits for the
        connections the leader holds to it, which end when the leader stops."""
        # Who leads is asked while fleet stops (a TLS handshake per node, in parallel).
        with ThreadPoolExecutor(max_workers=len(self.nodes) or 1,
                                thread_name_prefix="leader-probe") as probes:
            leading = {name: probes.submit(node.leads_etcd)
                       for name, node in self.nodes.items()}
            self._each("quiesce", self.nodes)
            leaders = {name for name, answer in leading.items() if answer.result()}
        followers = [node for name, node in self.nodes.items() if name not in leaders]
        for node in followers:
            self._guarded(node.begin_etcd_stop, node.name)
        deadline = time.monotonic() + NODE_STOP_TIMEOUT_S
        while (not all(node.etcd_peer_listener_closed() for node in followers)
               and time.monotonic() < deadline):
            time.sleep(PEER_CLOSE_POLL_S)
        self._each("stop", self.nodes)

    def _start_shared(self) -> None:
        """Start what every node needs (the cluster's DNS server) and wait until it answers."""
        self.shared.start()
        deadline = time.monotonic() + SHARED_READY_S
        for address in self.wait_tcp:
            host, _, port = address.rpartition(":")
            while True:
                try:
                    socket.create_connection((host, int(port)), timeout=0.5).close()
                    break
                except OSError as err:
                    runner = self.shared.runner
                    failed = [n for n, u in (runner.units() if runner else {}).items()
                              if u.active == "failed"]
                    if failed:
                        raise RuntimeError(f"{', '.join(failed)} failed") from None
                    if time.monotonic() > deadline or self.stopping.is_set():
                        raise RuntimeError(f"{address} does not answer: {err}") from None
                    time.sleep(0.05)

    def _on_stop(self, signum: int, frame: object) -> None:
        self.stopping.set()
        self.wake.set()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _daemonize(log_path: Path) -> None:
    """Detach: the caller's child exits at once, the grandchild leads a new session."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="provision-supervisor")
    parser.add_argument("state_dir")
    parser.add_argument("--daemon", action="store_true", help="detach from the caller")
    args = parser.parse_args(argv)
    state_dir = Path(args.state_dir).resolve()
    # The CLI sends SIGHUP as soon as our pid file exists; until run() handles it, it
    # must not kill us (its default). run() reads desired.json first anyway.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if args.daemon:
        _daemonize(state_dir / state.LOG_FILE)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    lock = state.take_lock(state_dir)
    if lock is None:
        log.error("another supervisor already runs %s", state_dir)
        return 3
    pid_path = state_dir / state.PID_FILE
    try:
        write_atomic(pid_path, f"{os.getpid()}\n")
    except OSError as err:
        log.error("cannot write %s: %s", pid_path, cause(err))
        os.close(lock)
        return 4
    try:
        return Supervisor(state_dir).run()
    finally:
        try:
            if state.supervisor_pid(state_dir) == os.getpid():
                pid_path.unlink()
        except OSError:
            pass
        os.close(lock)


if __name__ == "__main__":
    code = main()
    try:  # the log may sit on a full disk
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        pass
    os._exit(code)  # every node is stopped: no reason to wait for interpreter teardown
