"""`provider: nspawn`: up, down, status, node stop|start and env of real systemd machines.

A cluster's state lives in `<state root>/.nspawn/<name>` (root's ~/.local/state/provision
unless $PROVISION_STATE): `rendered/` (user-data, manifest), `cluster.json` (the image,
namespace and machines), and per node `nodes/<node>/` with the machine's overlay
(`upper/`, its whole state: kept across power-off, removed by `down --purge`) and
nspawn's log.

`up` renders the cluster, makes sure the machine image is built (cached), creates the
cluster's network namespace with a bridge carrying the network's gateway address, writes
each node's user-data and network config into its overlay, boots every machine at once
and returns once every machine's systemd is up, every etcd member answers and every
fleetd has registered (the lifecycle CLI then applies the declared units inside the
namespace). A failure or Ctrl-C powers off what this `up` booted and removes a namespace
it created.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from provision.box.netns import NETNS_DIR, BridgeNetwork
from provision.errors import OperationFailed, Problem, UserError, did_you_mean
from provision.files import write_atomic
from provision.providers import CertRollout, ClusterRef, StatusReport, format_progress
from provision.providers.nspawn import layout, nameserver, ssh
from provision.providers.nspawn.machines import Machine, cgroup_hierarchies, write_files
from provision.providers.nspawn.nameserver import NameServer
from provision.render.manifest import Manifest
from provision.signals import sigterm_interrupts, uninterrupted
from provision.spec.discovery import boot_needs, mode_of

STATE_SUBDIR = ".nspawn"  # a cluster name (a DNS label) never starts with a dot
RENDERED = "rendered"
CLUSTER_FILE = "cluster.json"
DEFAULT_PREFIX = "/_coreos.com/fleet/"
POLL_S = 0.2
HOLDER_PREFIX = "nspawn-"


def requirements_problem() -> str | None:
    """What this host lacks to run nspawn machines (one line), or None."""
    missing = []
    if os.geteuid() != 0:
        missing.append(f"root (you are uid {os.geteuid()})")
    for tool, package in (("systemd-nspawn", "systemd-container"), ("nsenter", "util-linux"),
                          ("ip", "iproute2")):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (Debian: apt-get install {package})")
    if not cgroup_hierarchies():
        missing.append("a cgroup2 or name=systemd cgroup hierarchy under /sys/fs/cgroup")
    if not missing:
        return None
    return "provider nspawn needs " + ", ".join(missing)


def state_dir_of(name: str, state_root: Path | None = None) -> Path:
    from provision.files import default_state_root

    return ((state_root or default_state_root()) / STATE_SUBDIR / name).absolute()


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class NodeRecord:
    name: str
    ip: str
    machine: str
    fleet_id: str


@dataclass(frozen=True)
class ClusterRecord:
    """cluster.json: what later commands need without the YAML."""

    name: str
    namespace: str
    network: str
    bridge: str       # the bridge's address with prefix, e.g. 172.17.8.1/24
    rootfs: str       # the image the machines boot
    image: str        # its cache key (the hold is named after the cluster)
    endpoints: list[str]
    client_port: int
    members: list[str]  # nodes running an etcd member (the others run a proxy)
    units: list[str]
    fleet_prefix: str
    nodes: list[NodeRecord]
    tls: bool = False  # etcd speaks https and wants the cluster's client certificates
    dns: str = ""      # dns-srv: the address its dnsmasq serves the SRV records on (w/ prefix)

    def to_json(self) -> str:
        data = dict(self.__dict__)
        data["nodes"] = [n.__dict__ for n in self.nodes]
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def read(cls, path: Path) -> ClusterRecord:
        data = json.loads(path.read_text())
        data["nodes"] = [NodeRecord(**n) for n in data["nodes"]]
        return cls(**data)


class Cluster:
    """One nspawn cluster's state directory and machines."""

    def __init__(self, state_dir: Path, record: ClusterRecord) -> None:
        self.state_dir = state_dir
        self.record = record

    def machine(self, node: str) -> Machine:
        return Machine(layout.machine_name(self.record.name, node),
                       self.state_dir / "nodes" / node)

    def machines(self) -> list[tuple[NodeRecord, Machine]]:
        return [(n, self.machine(n.name)) for n in self.record.nodes]

    def bridge(self) -> BridgeNetwork:
        return BridgeNetwork(self.record.namespace, layout.BRIDGE,
                             ipaddress.IPv4Interface(self.record.bridge))

    def spec(self, node: NodeRecord) -> layout.MachineSpec:
        network = ipaddress.IPv4Network(self.record.network)
        return layout.MachineSpec(self.record.name, node.name, node.ip, network,
                                  str(ipaddress.IPv4Interface(self.record.bridge).ip))

    def node(self, name: str) -> NodeRecord:
        names = [n.name for n in self.record.nodes]
        for node in self.record.nodes:
            if node.name == name:
                return node
        raise UserError(f"{self.record.name} has no node {name!r}{did_you_mean(name, names)} "
                        f"(nodes: {', '.join(names)})")

    # -- boot ------------------------------------------------------------------------------

    def prepare(self, node: NodeRecord) -> None:
        """The node's overlay: first-boot files once, the user-data before every boot."""
        machine = self.machine(node.name)
        spec = self.spec(node)
        upper = machine.upper
        if problem := layout.overlay_problem(upper):
            raise UserError(problem)
        first = not upper.is_dir()
        upper.mkdir(parents=True, exist_ok=True)
        if first:
            peers = [(n.name, n.ip) for n in self.record.nodes]
            write_files(upper, layout.first_boot_files(spec, peers))
            _host_keys(upper)
        user_data = (self.state_dir / RENDERED / _user_data_name(self, node)).read_text()
        dns = str(ipaddress.IPv4Interface(self.record.dns).ip) if self.record.dns else None
        write_files(upper, layout.every_boot_files(spec, user_data, dns))

    def boot(self, node: NodeRecord) -> Machine:
        machine = self.machine(node.name)
        self.prepare(node)
        machine.boot(layout.nspawn_argv(self.spec(node), Path(self.record.rootfs),
                                        machine.upper, NETNS_DIR / self.record.namespace))
        return machine

    def reapply(self, node: NodeRecord, timeout: float) -> None:
        """The node's user-data as rendered now, applied in the running machine by the same
        applier as at boot: it changes only what differs and restarts only the units whose
        files changed (a certificate is no unit's file, so nothing restarts)."""
        from provision.machine.seed import USER_DATA

        machine = self.machine(node.name)
        user_data = (self.state_dir / RENDERED / _user_data_name(self, node)).read_text()
        # Through the machine's own mounts, not its overlay's upper directory (written
        # behind a mounted overlay's back, a change may not show).
        staged = f"{USER_DATA}.new"
        copied = subprocess.run(
            machine.enter("sh", "-c", f"umask 077 && cat > {staged} && mv {staged} {USER_DATA}"),
            input=user_data, capture_output=True, text=True, timeout=timeout, check=False)
        applied = copied if copied.returncode else machine.run(
            "/usr/local/bin/provision", "cloudinit", "--from-file", USER_DATA, timeout=timeout)
        if applied.returncode != 0:
            raise OperationFailed(f"{node.name}: applying its new user-data failed: "
                                  f"{(applied.stderr or applied.stdout).strip()[-500:]}")

    def restart_member(self, node: NodeRecord, prober, deadline: float) -> None:
        """Restart the node's etcd alone, until it serves again (a linearizable read)."""
        result = self.machine(node.name).run("systemctl", "restart", "etcd2.service",
                                             timeout=max(1.0, deadline - time.monotonic()))
        if result.returncode != 0:
            raise OperationFailed(f"{node.name}: cannot restart etcd2.service: "
                                  f"{result.stderr.strip()[-300:]}")
        while prober.etcd([_client_url(self, node)]) != [True]:
            if time.monotonic() > deadline:
                raise OperationFailed(f"{node.name}: its etcd did not serve again after its "
                                      "restart (`journalctl -u etcd2` in the machine)")
            time.sleep(POLL_S)

    def nameserver(self) -> NameServer | None:
        """dns-srv: the dnsmasq serving the rendered zone inside the namespace."""
        if not self.record.dns:
            return None
        from provision.providers.local import dns

        needs = boot_needs(Manifest.from_file(self.state_dir / RENDERED).etcd.discovery)
        assert needs.dns is not None, "a cluster with a DNS server serves dns-srv discovery"
        zone = (self.state_dir / RENDERED / needs.dns.zone_file).read_text()
        return NameServer(self.record.namespace, layout.BRIDGE, self.record.dns,
                          self.state_dir, needs.dns.domain, dns.zone_records(zone))

    def start_network(self, deadline: float) -> tuple[bool, bool]:
        """The namespace with its bridge, and a dns-srv cluster's DNS server: (whether the
        namespace, whether the DNS server was started now)."""
        bridge = self.bridge()
        created = not bridge.exists()
        if created:
            bridge.create()
        server = self.nameserver()
        try:
            started = server.start(deadline) if server is not None else False
        except BaseException:
            if created:
                bridge.delete()
            raise
        return created, started

    def stop_network(self) -> None:
        if (server := self.nameserver()) is not None:
            server.stop()
        self.bridge().delete()

    def prober(self):  # NamespaceProber
        from provision.providers.local.control import python_path
        from provision.providers.local.health import NamespaceProber

        return NamespaceProber(self.record.endpoints, self.record.fleet_prefix,
                               ["ip", "netns", "exec", self.record.namespace],
                               {**os.environ, "PYTHONPATH": python_path()},
                               tls=_admin_tls(self.record))

    def wait_healthy(self, nodes: list[NodeRecord], deadline: float,
                     say: Callable[[str], None]) -> None:
        """Until each node's etcd answers (members and proxies alike) and its fleetd is
        registered; OperationFailed with the missing ones at the deadline."""
        prober = self.prober()
        cluster_members = set(self.record.members)
        etcd_ok: set[str] = set()
        fleet_ok: set[str] = set()
        try:
            while True:
                for node in nodes:  # a proxy serves no health of its own: its members do
                    if node.name not in cluster_members and node.name not in etcd_ok:
                        etcd_ok.add(node.name)
                waiting = [n for n in nodes if n.name not in etcd_ok]
                answers = prober.etcd([_client_url(self, n) for n in waiting])
                for node, ok in zip(waiting, answers, strict=True):
                    if ok:
                        etcd_ok.add(node.name)
                        say(format_progress(node.name, "etcd healthy", ""))
                registered = prober.machines() or set()
                for node in nodes:
                    if node.name not in fleet_ok and node.fleet_id in registered:
                        fleet_ok.add(node.name)
                        say(format_progress(node.name, "fleet registered", node.fleet_id[:8]))
                if len(etcd_ok) == len(fleet_ok) == len(nodes):
                    return
                for node in nodes:
                    if not self.machine(node.name).running():
                        raise OperationFailed(f"machine {node.name} stopped while "
                                              "starting:\n" + self.machine(node.name).log_tail())
                if time.monotonic() > deadline:
                    missing = [_missing(n.name, etcd_ok, fleet_ok) for n in nodes
                               if n.name not in etcd_ok or n.name not in fleet_ok]
                    raise OperationFailed(
                        f"{self.record.name}: not healthy in time: {', '.join(missing)}; see "
                        f"`provision status {self.record.name}` and the machines' journals "
                        f"(`journalctl --root /proc/<pid>/root -u etcd2 -u fleet`)")
                time.sleep(POLL_S)
        finally:
            prober.close()

    def boot_and_wait(self, nodes: list[NodeRecord], deadline: float,
                      say: Callable[[str], None]) -> None:
        """Boot the nodes at once, then wait for their systemd, etcd and fleet."""
        started = time.monotonic()
        for node in nodes:
            say(format_progress(node.name, "booting", node.ip))
            self.boot(node)

        def booted(node: NodeRecord) -> None:
            state = self.machine(node.name).wait_booted(deadline)
            say(format_progress(node.name, f"systemd {state}",
                                f"{time.monotonic() - started:.1f}s"))

        with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
            for future in [pool.submit(booted, n) for n in nodes]:
                future.result()
        self.wait_healthy(nodes, deadline, say)

    def write_ssh_files(self) -> bool:
        """ssh_config, known_hosts and the namespace proxy for fleetctl's SSH features."""
        return ssh.write_access_files(
            self.state_dir, NETNS_DIR / self.record.namespace, sys.executable,
            [(n.name, n.ip, self.machine(n.name).upper) for n in self.record.nodes])

    def stop_all(self, nodes: list[NodeRecord] | None = None, timeout: float = 30) -> int:
        """Power off the nodes' machines (at once, in the end); how many were running.

        When etcd members stop together their leader needs care: a stopping leader hands
        its leadership to its best-connected peer and waits for that peer to take it, up
        to etcd's request timeout (7 s). A peer that is stopping at the same moment never
        takes it, and the whole power-off would wait the timeout out. So, when the
        leader stops with other members: first fleet everywhere (fleetd stops its units,
        whose sidekicks and fleetd itself still write to etcd, which still has quorum),
        then the other members' etcd, then every machine: the leader, with no live peer
        left, stops at once."""
        nodes = self.record.nodes if nodes is None else nodes
        running = [n for n in nodes if self.machine(n.name).running()]
        members = [n for n in running if n.name in self.record.members]
        if len(members) >= 2:
            with ThreadPoolExecutor(max_workers=len(running) + 1) as pool:
                found = pool.submit(self._leader)
                list(pool.map(lambda n: self._stop_service(n, "fleet.service", timeout),
                              running))
                leader = found.result()
                if leader in {n.name for n in members}:
                    list(pool.map(lambda n: self._stop_service(n, "etcd2.service", timeout),
                                  [n for n in members if n.name != leader]))
        with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
            return sum(pool.map(lambda n: self.machine(n.name).stop(timeout), nodes))

    def _leader(self) -> str | None:
        from provision.providers.nspawn.leader import leader, tls_context

        tls = _admin_tls(self.record)
        try:
            context = (tls_context(tls.ca_file, tls.cert_file, tls.key_file)
                       if tls is not None else None)
        except OSError:  # the cluster's certificates are gone: stop in any order
            return None
        members = {n.name: _client_url(self, n) for n in self.record.nodes
                   if n.name in self.record.members}
        return leader(NETNS_DIR / self.record.namespace, members, context)

    def _stop_service(self, node: NodeRecord, unit: str, timeout: float) -> None:
        """`systemctl stop unit` in the node's machine; power-off stops what this did not."""
        try:
            self.machine(node.name).run("systemctl", "stop", unit, timeout=timeout)
        except (subprocess.TimeoutExpired, OperationFailed):
            pass


def _missing(node: str, etcd_ok: set[str], fleet_ok: set[str]) -> str:
    lacking = [what for what, done in (("etcd", etcd_ok), ("fleet", fleet_ok))
               if node not in done]
    return f"{node} ({' and '.join(lacking)} not ready)"


def _client_url(cluster: Cluster, node: NodeRecord) -> str:
    scheme = "https" if cluster.record.tls else "http"
    return f"{scheme}://{node.ip}:{cluster.record.client_port}"


def _admin_tls(record: ClusterRecord):  # EtcdTLS | None
    if not record.tls:
        return None
    from provision.pki import admin_tls, pki_dir

    return admin_tls(pki_dir(record.name))


def _user_data_name(cluster: Cluster, node: NodeRecord) -> str:
    from provision.render.manifest import Manifest

    return Manifest.from_file(cluster.state_dir / RENDERED).node(node.name).user_data


def _host_keys(upper: Path) -> None:
    """Each machine's ssh host keys, made here before its first boot: the image has none
    (they would be shared), and making them at boot is most of a first boot's time."""
    if shutil.which("ssh-keygen") is None:
        return  # the image's ssh.service makes them at first boot instead
    (upper / "etc/ssh").mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-A", "-f", str(upper)], capture_output=True,
                   stdin=subprocess.DEVNULL, timeout=120, check=False)


class NspawnProvider:
    name = "nspawn"
    default_network = ("172.17.8.0/24", 101)
    applies_units_after_up = True

    def __init__(self, state_root: Path | None = None,
                 say: Callable[[str], None] = _say) -> None:
        self.state_root = state_root
        self.say = say

    def network_problem(self, network: ipaddress.IPv4Network) -> str | None:
        if network.is_loopback or not network.is_private:
            return (f"nspawn machines need a private network such as 172.17.8.0/24 (it "
                    f"exists only in the cluster's network namespace), not {network}")
        if network.prefixlen > 29:
            return f"network.cidr {network} is too small for machines and their bridge"
        return None

    def host_problem(self) -> str | None:
        return requirements_problem()

    # -- up ------------------------------------------------------------------------------------

    def _image_or_no_state(self, name: str, existing, fresh_state: Path | None
                           ) -> tuple[str, str]:
        """The machine image (`_image`); when it cannot be had, a first `up` leaves no state
        behind (`fresh_state`: the directory it made, its new SSH key included)."""
        try:
            return self._image(name, existing)
        except BaseException:
            if fresh_state is not None:
                shutil.rmtree(fresh_state, ignore_errors=True)
            raise

    def up(self, yaml: str, *, timeout: float) -> None:
        from provision.render.cluster import load, render_cluster_files

        deadline = time.monotonic() + timeout
        if problem := requirements_problem():
            raise UserError(problem)
        model = load(yaml)
        if problem := self.network_problem(model.network):  # `--provider nspawn` on another's YAML
            raise UserError([Problem(model.source, None, None, problem)])
        dns_srv = mode_of(model).serves_dns
        if dns_srv and (problem := nameserver.requirements_problem() or _dns_problem(model)):
            raise UserError([Problem(model.source, None, None, problem)])
        state_dir = state_dir_of(model.name, self.state_root)
        fresh = not state_dir.exists()
        if public_key := ssh.ensure_key(state_dir, model.name):  # the `core` user's key
            model = dataclasses.replace(
                model, ssh_authorized_keys=(*model.ssh_authorized_keys, public_key))
        existing = self._open(model.name) if (state_dir / CLUSTER_FILE).is_file() else None
        running = [n.name for n, m in existing.machines() if m.running()] if existing else []
        rendered = render_cluster_files(model, state_dir / RENDERED)
        if running and rendered.changed():
            raise UserError([Problem(str(yaml), None, None,
                                     f"cluster {model.name} is running with a different "
                                     f"definition; run `provision down {model.name}` first")])
        image = self._image_or_no_state(model.name, existing if running else None,
                                        state_dir if fresh else None)
        state_dir.mkdir(parents=True, exist_ok=True)
        if not running:
            rendered.write()
        record = _record(model, image, state_dir)
        write_atomic(state_dir / CLUSTER_FILE, record.to_json())
        cluster = Cluster(state_dir, record)
        created, dns_started = cluster.start_network(deadline)
        todo = [n for n in record.nodes if n.name not in running]
        self.say(f"{model.name}: {len(record.nodes)} machines on {record.network} in network "
                 f"namespace {record.namespace} (image {record.image}, state in {state_dir})")
        try:
            with sigterm_interrupts():
                cluster.boot_and_wait(todo, deadline, self.say)
                if running:
                    cluster.wait_healthy(record.nodes, deadline, self.say)
        except BaseException:
            def cleanup() -> None:
                cluster.stop_all(todo)
                if not any(m.running() for _n, m in cluster.machines()):
                    if dns_started and (server := cluster.nameserver()) is not None:
                        server.stop()
                    if created:
                        cluster.bridge().delete()
            uninterrupted(cleanup)
            raise
        cluster.write_ssh_files()
        self.say(f"{model.name} is up: {len(record.nodes)} machines healthy "
                 f"(`provision env {model.name}` for fleetctl/etcdctl)")

    def _image(self, name: str, existing: Cluster | None) -> tuple[str, str]:
        """(cache key, rootfs) of the image to boot: the running machines' own, else the
        current one (built now if the cache lacks it), held for this cluster."""
        from provision.image import ImageBuildError, ensure_image, hold_image

        if existing is not None and Path(existing.record.rootfs).is_dir():
            return existing.record.image, existing.record.rootfs
        try:
            image = ensure_image(say=lambda line: self.say(f"image: {line}"))
        except ImageBuildError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else "failed"
            raise UserError(f"cannot build the machine image: {first} (`provision image "
                            "build` shows the whole log)") from None
        hold_image(image, HOLDER_PREFIX + name)
        if existing is None and (old := self._old_image(name)) and old != image.key:
            release_image_key(old, HOLDER_PREFIX + name)
        return image.key, str(image.rootfs)

    def _old_image(self, name: str) -> str | None:
        try:
            return ClusterRecord.read(state_dir_of(name, self.state_root) / CLUSTER_FILE).image
        except (OSError, ValueError, TypeError, KeyError):
            return None

    # -- the other commands --------------------------------------------------------------------

    def knows(self, name: str) -> bool:
        return (state_dir_of(name, self.state_root) / CLUSTER_FILE).is_file()

    def _open(self, name: str) -> Cluster:
        state_dir = state_dir_of(name, self.state_root)
        try:
            record = ClusterRecord.read(state_dir / CLUSTER_FILE)
        except FileNotFoundError:
            root = state_dir.parent
            known = sorted(p.name for p in root.glob("*") if (p / CLUSTER_FILE).is_file())
            raise UserError(f"no nspawn cluster named {name!r} under {root}"
                            f"{did_you_mean(name, known)}; bring one up with `provision up "
                            "CLUSTER.yaml`") from None
        return Cluster(state_dir, record)

    def down(self, ref: ClusterRef, *, purge: bool, timeout: float) -> str:
        if problem := requirements_problem():
            raise UserError(problem)
        cluster = self._open(ref.name)
        stopped = cluster.stop_all(timeout=timeout)
        cluster.stop_network()
        message = (f"{ref.name}: {stopped} machine{'s' if stopped != 1 else ''} powered off"
                   if stopped else f"{ref.name}: was not running")
        if purge:
            from provision.render import discovery

            discovery.mark_spent(cluster.state_dir / RENDERED)
            release_image_key(cluster.record.image, HOLDER_PREFIX + ref.name)
            shutil.rmtree(cluster.state_dir)
            message += f"; state removed ({cluster.state_dir})"
        return message

    def status(self, ref: ClusterRef, *, full: bool) -> StatusReport:
        cluster = self._open(ref.name)
        machines = cluster.machines()
        with ThreadPoolExecutor(max_workers=max(1, len(machines))) as pool:
            states = list(pool.map(lambda nm: nm[1].system_state(), machines))
            units = list(pool.map(lambda nm: _active_units(nm[1], cluster.record.units),
                                  machines))
        up = [n for (n, _m), s in zip(machines, states, strict=True) if s != "off"]
        etcd: dict[str, bool] = {}
        registered: set[str] = set()
        if up:
            prober = cluster.prober()
            try:
                answers = prober.etcd([_client_url(cluster, n) for n in up])
                etcd = {n.name: ok for n, ok in zip(up, answers, strict=True)}
                registered = prober.machines() or set()
            finally:
                prober.close()
        rows = []
        for (node, machine), state, active in zip(machines, states, units, strict=True):
            rows.append({
                "name": node.name, "ip": node.ip, "machine": machine.name, "systemd": state,
                "etcd": ("healthy" if etcd.get(node.name) else
                         "unhealthy" if state != "off" else "stopped"),
                "machine_id": node.fleet_id,
                "fleet": "registered" if node.fleet_id in registered else "absent",
                "units": active, "pid": machine.pid1(),
            })
        return StatusReport(
            ["NODE", "IP", "SYSTEMD", "ETCD", "MACHINE", "FLEET", "UNITS"],
            [[r["name"], r["ip"], r["systemd"], r["etcd"],
              r["machine_id"] if full else r["machine_id"][:8] + "...", r["fleet"],
              ",".join(r["units"]) or "-"] for r in rows],
            {"cluster": ref.name, "provider": self.name, "namespace": cluster.record.namespace,
             "image": cluster.record.image, "nodes": rows},
            notes=[f"namespace: {cluster.record.namespace}, image: {cluster.record.image}"])

    def node(self, ref: ClusterRef, action: str, node: str, *, timeout: float) -> str:
        if action not in ("stop", "start"):
            raise UserError(f"`provision node {action}` is not for nspawn machines (their etcd "
                            "data lives in the machine's overlay): use `provision node "
                            "stop|start`")
        if problem := requirements_problem():
            raise UserError(problem)
        cluster = self._open(ref.name)
        record = cluster.node(node)
        machine = cluster.machine(node)
        if action == "stop":
            was = machine.stop(timeout)
            return (f"{node}: powered off (its fleet units move elsewhere)" if was
                    else f"{node}: was not running")
        if machine.running():
            return f"{node}: running already"
        if not cluster.bridge().exists():
            raise OperationFailed(f"{ref.name} is down (no network namespace "
                                  f"{cluster.record.namespace}); `provision up` it first")
        deadline = time.monotonic() + timeout
        cluster.start_network(deadline)  # a DNS server that died comes back
        try:
            cluster.boot_and_wait([record], deadline, self.say)
        except BaseException:
            uninterrupted(lambda: machine.stop())
            raise
        return f"{node}: running"

    def rendered_dir(self, cluster_name: str) -> Path | None:
        rendered = state_dir_of(cluster_name, self.state_root) / RENDERED
        return rendered if (rendered / "manifest.json").is_file() else None

    def rotation_problem(self, ref: ClusterRef) -> str | None:
        return None  # a machine off boots with the user-data rendered then

    def rotate(self, ref: ClusterRef, rollout: CertRollout, *, timeout: float) -> int | None:
        """Each running machine applies its re-rendered user-data, one at a time (new
        certificate files: etcd reads them at every handshake, fleetd follows them); then
        the revocation list the same way; then each member's etcd2.service restarts alone,
        the next once it serves again, ending every connection made with an old one."""
        if not self.knows(ref.name):
            return None
        if problem := requirements_problem():
            raise UserError(problem)
        cluster = self._open(ref.name)
        rendered = cluster.state_dir / RENDERED
        running = [n for n in cluster.record.nodes if cluster.machine(n.name).running()]
        if not running:
            rollout.render_at_rest(rendered)
            return None
        rollout.render(rendered)
        for node in running:
            cluster.reapply(node, timeout)
            rollout.report(f"{node.name}: new certificates in place")
        rollout.publish()
        rollout.render(rendered)
        for node in running:
            cluster.reapply(node, timeout)
        rollout.report(f"revocation list published to {len(running)} nodes")
        members = [n for n in running if n.name in set(cluster.record.members)]
        prober = cluster.prober()
        try:
            for node in members:
                cluster.restart_member(node, prober, time.monotonic() + timeout)
                rollout.report(f"{node.name}: etcd restarted, serving")
        finally:
            prober.close()
        return len(running)

    def env(self, ref: ClusterRef) -> str:
        cluster = self._open(ref.name)
        running = [(n, p) for n, m in cluster.machines() if (p := m.pid1()) is not None]
        ns = cluster.record.namespace
        socket = (f"unix:///proc/{running[0][1]}/root{layout.FLEET_API_SOCKET}"
                  if running else None)
        directory = ssh.ssh_dir(cluster.state_dir)
        through_ssh = bool(running) and all(  # written by `up` (a cluster with its key)
            (directory / name).is_file() for name in (ssh.CONFIG, ssh.KNOWN_HOSTS, ssh.PROXY))
        lines = ""
        if through_ssh:  # as for Vagrant machines: the API socket through SSH
            exports = {"FLEETCTL_ENDPOINT": f"unix://{layout.FLEET_API_SOCKET}",
                       "FLEETCTL_TUNNEL": running[0][0].ip,
                       "FLEETCTL_SSH_USERNAME": ssh.USER,
                       "FLEETCTL_SSH_CONFIG": str(directory / ssh.CONFIG),
                       "FLEETCTL_STRICT_HOST_KEY_CHECKING": "true",
                       "FLEETCTL_KNOWN_HOSTS_FILE": str(directory / ssh.KNOWN_HOSTS)}
            lines += "".join(f"export {k}={shlex.quote(v)}\n" for k, v in exports.items())
        elif socket:
            lines += f"export FLEETCTL_ENDPOINT={socket}\n"
        lines += f"export ETCDCTL_ENDPOINTS={','.join(cluster.record.endpoints)}\n"
        if (tls := _admin_tls(cluster.record)) is not None:
            lines += (f"export ETCDCTL_CACERT={tls.ca_file}\nexport ETCDCTL_CERT={tls.cert_file}"
                      f"\nexport ETCDCTL_KEY={tls.key_file}\n")
        if through_ssh:
            lines += (f"# fleetctl goes through SSH to {running[0][0].name} (the cluster's key, "
                      f"user core; `fleetctl ssh web@1` works too); without SSH, as root: "
                      f"unset FLEETCTL_TUNNEL; export FLEETCTL_ENDPOINT={socket}\n")
        lines += (f"# the machines live in network namespace {ns}: run etcdctl as `ip netns "
                  f"exec {ns} etcdctl ...`, or a shell in a machine: `nsenter -t <pid> -a` "
                  f"(pid: `provision status`)\n")
        if not running:
            lines += f"# {ref.name} is not running: `provision up` it first\n"
        return lines

    def namespace(self, cluster_name: str) -> str | None:
        if not self.knows(cluster_name):
            return None
        ns = self._open(cluster_name).record.namespace
        return ns if (NETNS_DIR / ns).exists() else None

    def known_down(self, cluster_name: str) -> Callable[[], bool]:
        if not self.knows(cluster_name):
            return lambda: False
        cluster = self._open(cluster_name)
        return lambda: not any(m.running() for _n, m in cluster.machines())


def _dns_problem(model) -> str | None:
    node_ips = {str(n.ip) for n in model.nodes}
    bridge = layout.gateway(model.network, node_ips)
    return nameserver.address_problem(model.network, node_ips, str(bridge.ip),
                                      model.etcd.discovery.dns_server)


def _record(model, image: tuple[str, str], state_dir: Path) -> ClusterRecord:
    from provision.render.cloudconfig import member_client_urls

    taken = {str(n.ip) for n in model.nodes}
    bridge = layout.gateway(model.network, taken)
    dns = ""
    if mode_of(model).serves_dns:
        address = nameserver.address(Manifest.from_file(state_dir / RENDERED), str(bridge.ip))
        dns = f"{address}/{model.network.prefixlen}"
    prefix = model.fleet.etcd_key_prefix
    return ClusterRecord(
        name=model.name, namespace=layout.namespace(model.name), network=str(model.network),
        bridge=str(bridge), rootfs=image[1], image=image[0],
        endpoints=member_client_urls(model), client_port=model.etcd.client_port,
        members=list(model.etcd.members),
        units=[name for unit_set in model.units for name in unit_set.unit_names],
        fleet_prefix=prefix or DEFAULT_PREFIX,
        nodes=[NodeRecord(n.name, str(n.ip), layout.machine_name(model.name, n.name),
                          layout.fleet_machine_id(model.name, n.name)) for n in model.nodes],
        tls=model.tls, dns=dns)


def release_image_key(key: str, holder: str) -> None:
    """Let the cache prune image `key` again as far as this cluster is concerned."""
    from provision.image.build import cache_dir

    (cache_dir() / key / "holds" / holder).unlink(missing_ok=True)


def _active_units(machine: Machine, declared: list[str]) -> list[str]:
    """The cluster's units (declared ones and their sidekicks) active in the machine's
    own systemd."""
    if machine.pid1() is None:
        return []
    try:
        done = machine.run("systemctl", "list-units", "--state=active", "--no-legend",
                           "--plain", "--type=service", timeout=10)
    except (subprocess.TimeoutExpired, OperationFailed):
        return []
    stems = {name.split("@", 1)[0].rsplit(".", 1)[0] for name in declared}
    found = []
    for line in done.stdout.splitlines():
        unit = line.split()[0] if line.split() else ""
        if any(unit.startswith(stem) for stem in stems):
            found.append(unit)
    return sorted(found)
