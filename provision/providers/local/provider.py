"""The local provider: `up`, `down`, `status`, `node stop|start|reset` and `env`.

`up` renders the cluster into `<state>/rendered` (the user-data files are the
source of truth), plans every node from its own user-data (boot.py), prepares
the node directories, starts the cluster's supervisor (supervisor.py) and asks
it to run the nodes, then waits, against one deadline, until every node's etcd
answers, its fleet machine is registered and its node units are active. It
returns 0 only then; otherwise it stops everything it started and raises
`OperationFailed` with the failing node's log lines. Ctrl-C does the same.

Every function takes the cluster as a YAML path or a cluster name, and
`state_root` (default `$PROVISION_STATE`, else ~/.local/state/provision); a
cluster's state lives in `<state_root>/<name>`.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import time
from pathlib import Path

from rich.console import Console

from provision.errors import OperationFailed, Problem, UserError, did_you_mean
from provision.files import cluster_state_dir, disk_error, is_disk_error
from provision.providers import CertRollout, ClusterRef, StatusReport
from provision.providers.local import control, dns, nodes, state
from provision.providers.local.boot import NodeBoot
from provision.providers.local.discovery import write_size
from provision.providers.local.etcdbin import (
    EtcdBinaries,
    find_etcd,
    parse_version,
    version_warning,
)
from provision.providers.local.health import excerpt, unit_state
from provision.providers.local.membership import (
    MembershipError,
    Replaced,
    join_argv,
    replace_member_in,
)
from provision.providers.local.progress import Progress
from provision.providers.local.units import ETCD_UNIT, UnitPlan, system_unit
from provision.providers.local.waiter import Waiter, lost_members, prober_for
from provision.render import discovery as render_discovery
from provision.render.manifest import Manifest
from provision.signals import uninterrupted
from provision.spec.discovery import BootNeeds, DnsZone, boot_needs, mode_of

DEFAULT_TIMEOUT = 120.0
POLL_S = 0.1
DNS_UNIT = "dnsmasq.service"


# -- up ----------------------------------------------------------------------------------------

def up(cluster_path: str | Path, *, timeout: float = DEFAULT_TIMEOUT,
       state_root: str | Path | None = None, console: Console | None = None) -> int:
    """Bring the cluster up (or check that it is); 0 once every node is healthy."""
    from provision.pki import PKI_DIR
    from provision.render.cluster import load, render_cluster_files

    deadline = time.monotonic() + timeout
    console = console or Console(stderr=True)
    cluster = load(cluster_path, lambda text: console.print(text, markup=False,
                                                            highlight=False))
    _check_local_network(cluster)
    if mode_of(cluster).serves_dns and (problem := dns.requirements_problem()):
        raise UserError([Problem(cluster.source, None, None, problem)])
    state_dir = cluster_state_dir(cluster.name, state_root)
    state_dir.mkdir(parents=True, exist_ok=True)
    binaries = find_etcd()
    warning = version_warning(binaries.version)
    if warning:
        console.print(f"warning: {warning}", markup=False, highlight=False)
    rendered = state_dir / state.RENDERED
    was_running = control.running(state_dir)
    files = render_cluster_files(cluster, rendered, pki_dir=state_dir / PKI_DIR)
    if was_running and files.changed():
        raise UserError([Problem(str(cluster_path), None, None,
                                 f"cluster {cluster.name} is running with a different "
                                 f"definition; run `provision down {cluster.name}` first")])
    if not was_running:
        files.write()
    manifest = nodes.read_manifest(rendered)
    boots = nodes.plan_cluster(state_dir, manifest, binaries)
    if not was_running:
        _refuse_lost_members(cluster.name, boots)
    for note in dict.fromkeys(n for b in boots for n in b.notes):
        console.print(f"note: {note}", markup=False, highlight=False)
    needs = boot_needs(manifest.etcd.discovery)
    shared = _dns_services(state_dir, manifest, needs.dns) if needs.dns else nodes.Shared()
    launched = False
    try:
        if not was_running:
            control.sweep(state_dir)  # anything a killed supervisor may have left
            nodes.prepare(state_dir, cluster.name, boots, shared, binaries)
            # A new supervisor starts from nothing running; _boot says what to start.
            control.set_desired(state_dir, {b.name: "stopped" for b in boots})
            if shared.netns:
                dns.create(shared.netns, shared.wait_tcp[0].rpartition(":")[0])
            launched = True
            control.start_supervisor(state_dir, deadline, shared.netns)
        title = f"{cluster.name}: {len(boots)} nodes, state in {state_dir}"
        with Progress([(b.name, b.ip) for b in boots], console, title) as progress:
            waiter = Waiter(state_dir, boots, manifest, progress)
            try:
                _boot(state_dir, manifest.names, needs, waiter, deadline)
            finally:
                waiter.close()
    except BaseException:  # a failed node, a timeout or Ctrl-C: leave nothing running
        uninterrupted(lambda: _stop(state_dir, launched=launched))
        raise
    console.print(f"{cluster.name} is up: {len(boots)} nodes healthy "
                  f"(`provision env {cluster.name}` for fleetctl/etcdctl)",
                  markup=False, highlight=False)
    return 0


def _refuse_lost_members(cluster: str, boots: list[NodeBoot]) -> None:
    """A member whose data directory is gone must not start: under its old member ID with
    empty data it would either panic or rejoin as if it still held what it acknowledged."""
    lost = lost_members(boots)
    if lost:
        raise UserError([Problem(str(b.dirs.etcd), None, None,
                                 f"node {b.name} was an etcd member of {cluster} but its data "
                                 f"directory is gone; run `provision node reset {b.name} -c "
                                 f"{cluster}` to remove it from the cluster and add it back "
                                 "empty") for b in lost])


def _dns_services(state_dir: Path, manifest: Manifest, zone: DnsZone) -> nodes.Shared:
    """The namespace the nodes run in and the dnsmasq serving the rendered zone."""
    records = dns.zone_records((state_dir / state.RENDERED / zone.zone_file).read_text())
    address = dns.dns_address(manifest.network, {n.ip for n in manifest.nodes}, zone.server)
    argv = dns.dnsmasq_argv(shutil.which("dnsmasq") or "dnsmasq", address, zone.domain,
                            records, str(state_dir / state.SHARED / "dnsmasq.pid"))
    unit = UnitPlan(DNS_UNIT, system_unit(f"DNS of {manifest.cluster} ({zone.domain})",
                                          argv), True)
    return nodes.Shared(dns.namespace(manifest.cluster), (unit,), (f"{address}:53",))


def _stop(state_dir: Path, timeout: float = 60.0, launched: bool = False) -> bool:
    """Stop the supervisor and everything it ran; remove the cluster's namespace."""
    was_running = control.stop_supervisor(state_dir, timeout, launched=launched)
    netns = nodes.netns(state_dir)
    if netns:
        dns.delete(netns)
    return was_running


def _boot(state_dir: Path, names: list[str], needs: BootNeeds, waiter: Waiter,
          deadline: float) -> None:
    first = needs.bootstrap_node
    if first in names and needs.discovery_url:
        # The discovery etcd first, then the size key, then the members that read it.
        generation = control.set_desired(state_dir, {first: "running"})
        waiter.wait([first], generation, deadline, columns=("etcd",))
        write_size(needs.discovery_url, needs.size, deadline)
    generation = control.set_desired(state_dir, dict.fromkeys(names, "running"))
    waiter.wait(names, generation, deadline)


def _check_local_network(cluster) -> None:  # a provision.spec.model.Cluster
    loopback = ipaddress.ip_network("127.0.0.0/8")
    if not cluster.network.subnet_of(loopback):
        raise UserError([Problem(cluster.source, None, None,
                                 f"the local provider runs nodes on loopback addresses, but "
                                 f"network.cidr is {cluster.network}; use a 127.x.y.0/24 "
                                 "network (or the vagrant provider)")])


# -- the other commands ------------------------------------------------------------------------

def locate(cluster: str | Path, state_root: str | Path | None = None) -> Path:
    """The state directory of a cluster given as a YAML path or a name; it must exist."""
    text = str(cluster)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        from provision.spec.build import load_cluster

        name = load_cluster(text)[0].name
    else:
        name = text
    state_dir = cluster_state_dir(name, state_root)
    if not (state_dir / state.PLAN).is_file():
        known = sorted(p.name for p in state_dir.parent.glob("*") if (p / state.PLAN).is_file())
        raise UserError(f"no local cluster named {name!r} under {state_dir.parent}"
                        f"{did_you_mean(name, known)}; bring one up with `provision up "
                        "CLUSTER.yaml`")
    return state_dir


def down(cluster: str | Path, *, purge: bool = False, state_root: str | Path | None = None,
         timeout: float = 60.0) -> str:
    """Stop every process of the cluster (fleetd first, then etcd); with `purge`, forget it."""
    state_dir = locate(cluster, state_root)
    was_running = _stop(state_dir, timeout)
    name = state_dir.name
    message = f"{name}: stopped" if was_running else f"{name}: was not running"
    if not purge:
        _record_stopped(state_dir)
        return message
    rendered = state_dir / state.RENDERED
    if rendered.is_dir():
        try:
            render_discovery.mark_spent(rendered)
        except OSError as err:
            # The token record goes with the rest of the state below; a full disk must
            # not keep `--purge` from freeing it (a read-only one fails just below).
            if not is_disk_error(err):
                raise
    try:
        shutil.rmtree(state_dir)
    except OSError as err:
        if is_disk_error(err):  # read-only: the first unlink fails, nothing was removed
            raise disk_error(err, state_dir) from None  # (rmtree names files relatively)
        raise
    return message + f"; state removed ({state_dir})"


def _record_stopped(state_dir: Path) -> None:
    """Say in desired.json that every node is stopped, when it says otherwise.

    Nothing reads it until the next `up` (which rewrites it), so a disk that refuses the
    write (full, read-only) does not make a finished `down` fail.
    """
    stopped = dict.fromkeys(nodes.machine_ids(state_dir), "stopped")
    if ((state.read_json(state_dir / state.DESIRED) or {}).get("nodes") or {}) == stopped:
        return
    try:
        control.set_desired(state_dir, stopped)
    except OSError as err:
        if not is_disk_error(err):
            raise


def _plan_boots(state_dir: Path) -> tuple[list[NodeBoot], Manifest]:
    """The nodes' plans again, for their addresses, units and paths, with the etcd binary
    the cluster was brought up with (`node reset` runs a node from them)."""
    manifest = nodes.read_manifest(state_dir / state.RENDERED)
    chosen = (state.read_json(state_dir / state.PLAN) or {}).get("etcd_binary") or {}
    binaries = EtcdBinaries(chosen.get("etcd") or "etcd", chosen.get("etcdctl") or "etcdctl",
                            None, str(chosen.get("source") or "not recorded"))
    return nodes.plan_cluster(state_dir, manifest, binaries), manifest


def _node_name(state_dir: Path, node: str) -> str:
    names = list(nodes.machine_ids(state_dir))
    if node not in names:
        raise UserError(f"{state_dir.name} has no node {node!r}{did_you_mean(node, names)} "
                        f"(nodes: {', '.join(names)})")
    return node


def _require_running(state_dir: Path) -> None:
    if not control.running(state_dir):
        raise OperationFailed(f"{state_dir.name} is not running; `provision up` it first")


def node_stop(cluster: str | Path, node: str, *, state_root: str | Path | None = None,
              timeout: float = 60.0) -> None:
    """Stop one node's processes (fleetd, then etcd); returns once they are gone."""
    state_dir = locate(cluster, state_root)
    node = _node_name(state_dir, node)
    _require_running(state_dir)
    generation = control.set_desired(state_dir, {node: "stopped"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = control.read_status(state_dir, generation)
        if status is not None and status["nodes"][node]["state"] == "stopped":
            return
        time.sleep(POLL_S)
    raise OperationFailed(f"node {node} did not stop within {timeout:g}s")


def node_start(cluster: str | Path, node: str, *, state_root: str | Path | None = None,
               timeout: float = DEFAULT_TIMEOUT, console: Console | None = None) -> None:
    """Start one node again; returns once it is healthy (etcd, fleet, units)."""
    state_dir = locate(cluster, state_root)
    node = _node_name(state_dir, node)
    _require_running(state_dir)
    boots, manifest = _plan_boots(state_dir)
    deadline = time.monotonic() + timeout
    generation = control.set_desired(state_dir, {node: "running"})
    boot = next(b for b in boots if b.name == node)
    with Progress([(node, boot.ip)], console or Console(stderr=True)) as progress:
        waiter = Waiter(state_dir, boots, manifest, progress)
        try:
            waiter.wait([node], generation, deadline)
        finally:
            waiter.close()


def node_reset(cluster: str | Path, node: str, *, state_root: str | Path | None = None,
               timeout: float = DEFAULT_TIMEOUT, console: Console | None = None) -> str:
    """Give a member that lost its data (or any member) a fresh start, etcd's way: stop it,
    empty its data directory, remove it from the cluster through a healthy member, add it
    back (a new member ID), start it with `--initial-cluster-state=existing` and the
    cluster's members as they are now; returns once it is healthy. A cluster that is not
    running is started (without its lost members) first, and left running."""
    state_dir = locate(cluster, state_root)
    node = _node_name(state_dir, node)
    boots, manifest = _plan_boots(state_dir)
    boot = next(b for b in boots if b.name == node)
    name = state_dir.name
    if boot.role != "etcd-member" or boot.peer_url is None:
        raise UserError(f"node {node} of {name} runs no etcd member ({boot.role}): it keeps no "
                        f"member data to reset; `provision node stop|start {node}` restarts it")
    lost = {b.name for b in lost_members(boots)} - {node}
    peers = [b for b in boots if b.role == "etcd-member" and b.name != node
             and b.name not in lost]
    if not peers:
        raise UserError(f"node {node} is the only etcd member of {name} left with data: there "
                        "is no cluster to add it back to; `provision down --purge "
                        f"{name}` and `provision up` start the cluster afresh")
    deadline = time.monotonic() + timeout
    console = console or Console(stderr=True)
    launched = not control.running(state_dir)
    run = [b for b in boots if b.name != node and b.name not in lost]
    try:
        if launched:
            _launch(state_dir, deadline)
        with Progress([(b.name, b.ip) for b in [*run, boot]], console,
                      f"{name}: resetting {node}") as progress:
            waiter = Waiter(state_dir, boots, manifest, progress)
            try:
                _wait_stopped(state_dir, node, control.set_desired(state_dir, {node: "stopped"}),
                              deadline)
                generation = control.set_desired(state_dir, {b.name: "running" for b in run})
                waiter.wait([b.name for b in run], generation, deadline)
                replaced = _replace_member(state_dir, boot, boots, peers)
                generation = control.set_desired(state_dir, {node: "running"})
                waiter.wait([node], generation, deadline)
            finally:
                waiter.close()
    except BaseException:
        if launched:  # leave nothing running that this command started
            uninterrupted(lambda: _stop(state_dir, launched=True))
        raise
    removed = f"member {replaced.removed} removed, " if replaced.removed else ""
    return (f"{node}: reset: {removed}re-added as member {replaced.added} with an empty data "
            f"directory; healthy" + (f" ({name} is running)" if launched else ""))


def _launch(state_dir: Path, deadline: float) -> None:
    """Start the supervisor of a cluster that is not running, every node stopped."""
    control.sweep(state_dir)
    control.set_desired(state_dir, dict.fromkeys(nodes.machine_ids(state_dir), "stopped"))
    plan = state.read_json(state_dir / state.PLAN) or {}
    netns = plan.get("netns")
    if netns:
        dns.create(netns, str((plan.get("wait_tcp") or [""])[0]).rpartition(":")[0])
    control.start_supervisor(state_dir, deadline, netns)


def _wait_stopped(state_dir: Path, node: str, generation: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        status = control.read_status(state_dir, generation)
        if status is not None and status["nodes"][node]["state"] == "stopped":
            return
        if not control.running(state_dir):
            raise OperationFailed("the cluster supervisor exited\n"
                                  + excerpt(state_dir / state.LOG_FILE))
        time.sleep(POLL_S)
    raise OperationFailed(f"node {node} did not stop in time")


def _replace_member(state_dir: Path, boot: NodeBoot, boots: list[NodeBoot],
                    peers: list[NodeBoot]) -> Replaced:
    """Empty the node's data, remove + re-add its member, and plan it to join as it is now."""
    shutil.rmtree(boot.dirs.etcd, ignore_errors=True)
    if boot.dirs.etcd.exists():
        raise OperationFailed(f"cannot empty {boot.dirs.etcd}")
    boot.member_marker.unlink(missing_ok=True)
    netns = nodes.netns(state_dir)
    tls = nodes.etcd_tls(state_dir, nodes.read_manifest(state_dir / state.RENDERED))
    try:
        replaced = replace_member_in(
            dns.exec_prefix(netns), {**os.environ, "PYTHONPATH": control.python_path()},
            [p.etcd_url for p in peers], boot.name, str(boot.peer_url),
            {str(b.peer_url): b.name for b in boots if b.peer_url},
            (tls.ca_file, tls.cert_file, tls.key_file) if tls is not None else None)
    except MembershipError as err:
        raise OperationFailed(f"cannot re-add {boot.name} to the cluster: {err}") from None
    plan = state.read_json(state_dir / state.PLAN) or {}
    argv = join_argv(boot.etcd_argv, replaced.initial_cluster)
    for spec in plan.get("nodes") or []:
        if spec.get("name") == boot.name:
            for unit in spec.get("units") or []:
                if unit.get("name") == ETCD_UNIT:
                    unit["text"] = system_unit(f"etcd of {boot.name}", argv)
    state.write_plan(state_dir, plan)
    return replaced


def status(cluster: str | Path, *, state_root: str | Path | None = None) -> list[dict]:
    """One row per node: name, ip, role, state, etcd health, fleet machine, node units."""
    state_dir = locate(cluster, state_root)
    plan = state.read_json(state_dir / state.PLAN) or {}
    manifest = nodes.read_manifest(state_dir / state.RENDERED)
    live = control.running(state_dir)
    current = (state.read_json(state_dir / state.STATUS) or {}) if live else {}
    node_status = current.get("nodes") or {}
    boots = {b.name: b for b in _plan_boots(state_dir)[0]}
    rows_in = plan.get("nodes") or []
    running_nodes = [n for n in rows_in
                     if live and node_status.get(n["name"], {}).get("state") == "running"]
    answers: list[bool] = []
    registered: set[str] = set()
    if running_nodes:
        prober = prober_for(state_dir, manifest, list(boots.values()))
        try:
            answers = prober.etcd([boots[n["name"]].etcd_url for n in running_nodes])
            registered = prober.machines() or set()
        finally:
            prober.close()
    healthy_names = {n["name"] for n, ok in zip(running_nodes, answers, strict=True) if ok}
    rows = []
    for spec in rows_in:
        name = spec["name"]
        etcd_ok = name in healthy_names
        info = node_status.get(name) or {}
        running = info.get("state") == "running"
        units = {u: "/".join(unit_state(info, u)) for u in boots[name].node_units}
        rows.append({
            "name": name, "ip": spec["ip"], "role": spec.get("role", ""),
            "state": "running" if running else "stopped",
            "etcd": "healthy" if etcd_ok else ("unhealthy" if running else "stopped"),
            "machine_id": spec["machine_id"],
            "fleet": "registered" if spec["machine_id"] in registered else "absent",
            "units": units,
            "units_running": sum(1 for v in units.values() if v.startswith("active")),
            "pids": {u: i.get("pid") for u, i in (info.get("units") or {}).items()
                     if i.get("pid")},
        })
    return rows


def state_writes(cluster: str | Path, *, state_root: str | Path | None = None
                 ) -> dict | None:
    """The running supervisor's report that it cannot write its state (path, error, since,
    attempts), or None while its writes work."""
    return control.writes_problem(locate(cluster, state_root))


def etcd_binary(cluster: str | Path, *, state_root: str | Path | None = None) -> dict:
    """The etcd binary the cluster was brought up with (path, version, where the choice came
    from) and, for a known-bad version, the warning; empty if not recorded."""
    state_dir = locate(cluster, state_root)
    chosen = dict((state.read_json(state_dir / state.PLAN) or {}).get("etcd_binary") or {})
    if chosen:
        chosen["warning"] = version_warning(parse_version(f"etcd Version: {chosen['version']}"))
    return chosen


def env(cluster: str | Path, *, state_root: str | Path | None = None) -> str:
    """Shell export lines for fleetctl and etcdctl against this cluster."""
    state_dir = locate(cluster, state_root)
    boots, manifest = _plan_boots(state_dir)
    current = state.read_json(state_dir / state.STATUS) or {}
    running = [b for b in boots
               if ((current.get("nodes") or {}).get(b.name) or {}).get("state") == "running"]
    chosen = (running or boots)[0]
    endpoints = ",".join(manifest.etcd.endpoints)
    lines = (f"export FLEETCTL_ENDPOINT=unix://{chosen.api_socket}\n"
             f"export ETCDCTL_ENDPOINTS={endpoints}\n")
    tls = nodes.etcd_tls(state_dir, manifest)
    if tls is not None:  # etcdctl v3's names (ETCDCTL_API=3 is its default)
        lines += (f"export ETCDCTL_CACERT={tls.ca_file}\n"
                  f"export ETCDCTL_CERT={tls.cert_file}\n"
                  f"export ETCDCTL_KEY={tls.key_file}\n")
    netns = nodes.netns(state_dir)
    if netns:
        lines += (f"# the nodes run in network namespace {netns}: fleetctl reaches them through "
                  f"the socket; run etcdctl as `ip netns exec {netns} etcdctl ...`\n")
    return lines


# -- the ClusterProvider -----------------------------------------------------------------------

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


class LocalProvider:
    """The local provider behind the `ClusterProvider` interface (the functions above)."""

    name = "local"
    default_network = ("127.77.0.0/24", 1)
    applies_units_after_up = True

    def __init__(self, state_root: str | Path | None = None) -> None:
        self.state_root = state_root

    def knows(self, name: str) -> bool:
        """Whether a local cluster of this name was brought up here."""
        return (cluster_state_dir(name, self.state_root) / state.PLAN).is_file()

    def network_problem(self, network: ipaddress.IPv4Network) -> str | None:
        if not network.subnet_of(LOOPBACK):
            return ("the local provider runs nodes on loopback addresses; use a 127.x "
                    f"network, not {network}")
        return None

    def host_problem(self) -> str | None:
        return None

    def up(self, yaml: str, *, timeout: float) -> None:
        up(yaml, timeout=timeout, state_root=self.state_root)

    def down(self, ref: ClusterRef, *, purge: bool, timeout: float) -> str:
        return down(ref.where, purge=purge, timeout=timeout, state_root=self.state_root)

    def status(self, ref: ClusterRef, *, full: bool) -> StatusReport:
        where = ref.where
        rows = status(where, state_root=self.state_root)
        etcd = etcd_binary(where, state_root=self.state_root)
        writes = state_writes(where, state_root=self.state_root)
        report = StatusReport(
            ["NODE", "IP", "ROLE", "STATE", "ETCD", "MACHINE", "FLEET", "UNITS"],
            [[r["name"], r["ip"], r["role"], r["state"], r["etcd"],
              r["machine_id"] if full else r["machine_id"][:8] + "...", r["fleet"],
              f"{r['units_running']}/{len(r['units'])} active"] for r in rows],
            {"cluster": ref.name, "provider": self.name, "etcd_binary": etcd,
             "state_writes": writes, "nodes": rows})
        if writes:
            report.warnings.append(f"warning: {control.describe_writes_problem(writes)}")
        if etcd:
            report.notes.append(f"etcd: {etcd['etcd']} (version {etcd['version']}, chosen by "
                                f"{etcd['source']})")
            if etcd.get("warning"):
                report.warnings.append(f"warning: {etcd['warning']}")
        return report

    def node(self, ref: ClusterRef, action: str, node: str, *, timeout: float) -> str:
        where = ref.where
        if action == "stop":
            node_stop(where, node, timeout=timeout, state_root=self.state_root)
            return f"{node}: stopped (fleetd left the cluster first; its units move elsewhere)"
        if action == "reset":
            return node_reset(where, node, timeout=timeout, state_root=self.state_root)
        node_start(where, node, timeout=timeout, state_root=self.state_root)
        return f"{node}: running"

    def env(self, ref: ClusterRef) -> str:
        return env(ref.where, state_root=self.state_root)

    def namespace(self, cluster_name: str) -> str | None:
        state_dir = cluster_state_dir(cluster_name, self.state_root)
        return nodes.netns(state_dir) if state_dir.is_dir() else None

    def known_down(self, cluster_name: str):  # Callable[[], bool]
        """Down once the supervisor (which owns every node process) is gone."""
        state_dir = cluster_state_dir(cluster_name, self.state_root)
        return lambda: state_dir.is_dir() and not control.running(state_dir)

    def rendered_dir(self, cluster_name: str) -> Path | None:
        rendered = cluster_state_dir(cluster_name, self.state_root) / state.RENDERED
        return rendered if (rendered / "manifest.json").is_file() else None

    def rotation_problem(self, ref: ClusterRef) -> str | None:
        return None  # a stopped node starts with its new files

    def rotate(self, ref: ClusterRef, rollout: CertRollout, *, timeout: float) -> int | None:
        """See provision/providers/local/rotate.py: certificates node by node, then the
        revocation list, then each member's etcd restarted alone."""
        from provision.providers.local.rotate import roll

        state_dir = cluster_state_dir(ref.name, self.state_root)
        rendered = state_dir / state.RENDERED
        if not (rendered / "manifest.json").is_file():
            return None
        if not control.running(state_dir):
            rollout.render_at_rest(rendered)
            return None
        # The nodes get their new certificates first; the retired ones are revoked only once
        # every node has moved (else a node still on its old certificate is refused).
        rollout.render(rendered)

        def publish() -> None:
            rollout.publish()
            rollout.render(rendered)

        made = rollout.pki
        expected = {name[:-len("-server")]: issued.serial
                    for name, issued in made.issued.items()  # type: ignore[attr-defined]
                    if name.endswith("-server")}
        return len(roll(state_dir, made.client_files(),  # type: ignore[attr-defined]
                        expected, lambda: _plan_boots(state_dir)[0], publish=publish,
                        timeout=timeout, report=rollout.report))
