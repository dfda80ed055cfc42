"""The Vagrant provider as the lifecycle CLI drives it (`ClusterProvider`).

- up: render, prepare (box, payload), `vagrant up` each node, wait until every etcd is
  healthy and every fleetd registered, write `ssh-config` and `known_hosts` beside the
  manifest; the lifecycle CLI then applies the declared units.
- status: per node, Vagrant's state, etcd health, the fleet machine, its units.
- node stop|start: `vagrant halt|up NODE`; start waits for that node to be ready again.
- certs rotate: provision/providers/vagrant_rotate.py (`vagrant provision` each running
  machine in turn, then the revocation list, then each member's etcd restarted alone).
- env: etcdctl reaches the members directly; fleetctl goes through SSH to the first
  node (`FLEETCTL_TUNNEL`) with Vagrant's keys (`FLEETCTL_SSH_CONFIG`) and the host keys
  read at `up` (`FLEETCTL_KNOWN_HOSTS_FILE`, strict checking): the fleet API stays a
  root-only unix socket on each machine.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from provision.errors import OperationFailed, UserError
from provision.files import write_atomic
from provision.providers import CertRollout, ClusterRef, StatusReport, format_progress
from provision.providers.vagrant_cluster import (
    ClusterAccess,
    machines_by_ip,
    node_rows,
    wait_ready,
)

SSH_CONFIG = "ssh-config"
KNOWN_HOSTS = "known_hosts"
READY_TIMEOUT_S = 300.0


def driver():  # VagrantProvider, imported lazily
    """The Vagrant driver (tests replace it with one over a fake `vagrant`)."""
    from provision.providers.vagrant import VagrantProvider

    return VagrantProvider()


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _print_progress(node: str, phase: str, detail: str) -> None:
    _say(format_progress(node, phase, detail))


def access_of(cluster) -> ClusterAccess:  # provision.spec.model.Cluster
    from provision.apply.desired import etcd_endpoints, fleet_prefix
    from provision.pki import cluster_client_tls

    return ClusterAccess(tuple(etcd_endpoints(cluster)), fleet_prefix(cluster),
                         cluster.etcd.client_port,
                         tuple((n.name, str(n.ip)) for n in cluster.nodes),
                         cluster_client_tls(cluster))


def _access(yaml: str | None) -> ClusterAccess | None:
    if yaml is None:
        return None
    from provision.render.cluster import load

    return access_of(load(yaml, lambda line: None))


def write_access_files(provider, manifest: Path) -> None:  # VagrantProvider
    """ssh-config (Vagrant's, each host also under its address) and known_hosts (the
    machines' host keys, read over that SSH, as Vagrant trusts them) beside the manifest."""
    from provision.providers.vagrant import read_manifest

    directory = read_manifest(manifest).path.parent
    write_atomic(directory / SSH_CONFIG, provider.ssh_config(manifest))
    lines = []
    for name, ip in ((n.name, n.ip) for n in read_manifest(manifest).nodes):
        done = subprocess.run(
            ["ssh", "-F", str(directory / SSH_CONFIG), name,
             "cat /etc/ssh/ssh_host_*_key.pub"],
            capture_output=True, text=True, timeout=120, check=False,
            stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise OperationFailed(f"{name}: cannot read its SSH host keys: "
                                  f"{done.stderr.strip() or done.returncode}")
        for key in done.stdout.splitlines():
            parts = key.split()
            if len(parts) >= 2:
                lines.append(f"{ip} {parts[0]} {parts[1]}")
    write_atomic(directory / KNOWN_HOSTS, "\n".join(lines) + "\n")


class _VagrantMachines:
    """`vagrant_rotate.Machines` through the Vagrant driver."""

    def __init__(self, provider, manifest: Path) -> None:  # VagrantProvider
        self.provider = provider
        self.manifest = manifest

    def provision(self, node: str) -> None:
        self.provider.provision(self.manifest, node)

    def restart_etcd(self, node: str) -> None:
        from provision.providers.vagrant_rotate import RESTART_ETCD

        self.provider.ssh(self.manifest, node, RESTART_ETCD)


def _probes(access: ClusterAccess):  # vagrant_rotate.Probes
    from provision.providers.local.health import etcd_healthy
    from provision.providers.local.rotate import served_serial
    from provision.providers.vagrant_cluster import PROBE_TIMEOUT_S
    from provision.providers.vagrant_rotate import Probes

    def registered() -> set[str] | None:
        found = machines_by_ip(access)
        return None if found is None else set(found)

    return Probes(lambda url: served_serial(url, access.tls, PROBE_TIMEOUT_S), registered,
                  lambda url: etcd_healthy(url, PROBE_TIMEOUT_S, access.tls))


class VagrantLifecycle:
    name = "vagrant"
    default_network = ("172.17.8.0/24", 101)
    applies_units_after_up = True

    def network_problem(self, network: ipaddress.IPv4Network) -> str | None:
        if network.is_loopback:
            return ("Vagrant machines need a private network such as 172.17.8.0/24, not a "
                    "loopback range")
        return None

    def host_problem(self) -> str | None:
        return None  # the driver says it when `vagrant` is missing

    def up(self, yaml: str, *, timeout: float) -> None:
        from provision.render.cluster import render_to
        from provision.render.manifest import MANIFEST

        rendered = render_to(yaml)
        cluster = rendered.cluster
        manifest = rendered.out_dir / MANIFEST
        provider = driver()
        provider.prepare(manifest, _say)
        started = time.monotonic()
        provider.up(manifest, _print_progress)
        wait_ready(access_of(cluster), max(timeout, READY_TIMEOUT_S), _print_progress)
        write_access_files(provider, manifest)
        _say(f"{cluster.name}: {len(cluster.nodes)} Vagrant machines ready in "
             f"{time.monotonic() - started:.0f}s; `eval $(provision env {yaml})` then "
             f"fleetctl list-machines")

    def down(self, ref: ClusterRef, *, purge: bool, timeout: float) -> str:
        from provision.render import discovery

        manifest = self._manifest(ref)
        driver().down(manifest, purge=purge, progress=_print_progress)
        if purge:
            discovery.mark_spent(manifest.parent)
        return f"{ref.name}: destroyed"

    def status(self, ref: ClusterRef, *, full: bool) -> StatusReport:
        states = driver().status(self._manifest(ref))
        access = _access(ref.yaml)
        health = node_rows(access, [s.state == "running" for s in states]) if access else None
        rows = []
        for i, s in enumerate(states):
            h = health[i] if health else None
            rows.append({"name": s.name, "ip": s.ip, "state": s.state, "vm_provider": s.detail,
                         "etcd": h.etcd if h else "?", "machine": h.machine if h else "",
                         "units": h.units if h else "?"})
        return StatusReport(
            ["NODE", "IP", "STATE", "VM PROVIDER", "ETCD", "MACHINE", "UNITS"],
            [[r["name"], r["ip"], r["state"], r["vm_provider"], r["etcd"],
              (r["machine"] if full else r["machine"][:8] + "...") if r["machine"] else "-",
              r["units"]] for r in rows],
            {"cluster": ref.name, "provider": self.name, "nodes": rows})

    def node(self, ref: ClusterRef, action: str, node: str, *, timeout: float) -> str:
        manifest = self._manifest(ref)
        if action == "stop":
            driver().halt(manifest, node)
            return f"{node}: halted (fleet moves its units once its machine is gone)"
        if action != "start":
            raise UserError(f"`provision node {action}` works on local and nspawn clusters; "
                            f"{ref.name} uses the vagrant provider")
        driver().start(manifest, node)
        access = _access(ref.yaml)
        if access is not None:
            mine = tuple(n for n in access.nodes if n[0] == node)
            wait_ready(dataclasses.replace(access, nodes=mine), max(timeout, READY_TIMEOUT_S),
                       _print_progress)
        return f"{node}: running"

    def env(self, ref: ClusterRef) -> str:
        from provision.providers.vagrant import read_manifest

        manifest = self._manifest(ref)
        found = read_manifest(manifest)
        directory = found.path.parent
        exports = dict(driver().user_env(manifest))
        access = _access(ref.yaml)
        if access is not None:
            exports["ETCDCTL_ENDPOINTS"] = ",".join(access.etcd_endpoints)
            if access.tls is not None:  # the admin certificate
                exports["ETCDCTL_CACERT"] = access.tls.ca_file
                exports["ETCDCTL_CERT"] = access.tls.cert_file
                exports["ETCDCTL_KEY"] = access.tls.key_file
        exports["FLEETCTL_TUNNEL"] = found.nodes[0].ip
        config = directory / SSH_CONFIG
        if config.is_file():
            user = next((line.split()[1] for line in config.read_text().splitlines()
                         if line.strip().startswith("User ")), "vagrant")
            exports["FLEETCTL_SSH_USERNAME"] = user
            exports["FLEETCTL_SSH_CONFIG"] = str(config.absolute())
        known = directory / KNOWN_HOSTS
        if known.is_file():
            exports["FLEETCTL_STRICT_HOST_KEY_CHECKING"] = "true"
            exports["FLEETCTL_KNOWN_HOSTS_FILE"] = str(known.absolute())
        exports["FLEETCTL_ENDPOINT"] = "unix:///var/run/fleet.sock"
        return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in exports.items())

    def namespace(self, cluster_name: str) -> str | None:
        return None

    def known_down(self, cluster_name: str) -> Callable[[], bool]:
        return lambda: False  # Vagrant cannot tell cheaply

    def rendered_dir(self, cluster_name: str) -> Path | None:
        from provision.render.manifest import MANIFEST
        from provision.render.output import default_output_dir

        directory = default_output_dir(cluster_name)
        return directory if (directory / MANIFEST).is_file() else None

    def rotation_problem(self, ref: ClusterRef) -> str | None:
        from provision.providers.vagrant_rotate import not_running_problem

        if self.rendered_dir(ref.name) is None:
            return None
        manifest = self._manifest(ref)
        return not_running_problem(ref.name, [(s.name, s.state)
                                              for s in driver().status(manifest)], ref.where)

    def rotate(self, ref: ClusterRef, rollout: CertRollout, *, timeout: float) -> int | None:
        """provision/providers/vagrant_rotate.py: each running machine provisioned again
        in turn (new certificates), then the revocation list, then each member's etcd
        restarted alone. None when no machine runs (the user-data is rendered again:
        a machine not created yet takes it at `vagrant up`)."""
        from provision.providers import vagrant_rotate
        from provision.render.cluster import load
        from provision.render.manifest import Manifest

        directory = self.rendered_dir(ref.name)
        if directory is None:
            return None
        manifest = Manifest.from_file(directory)
        keep = (manifest.vagrant.payload, SSH_CONFIG, KNOWN_HOSTS)

        def render() -> None:
            vagrant_rotate.render_keeping(rollout.render, directory, keep)

        provider = driver()
        states = {s.name: s.state for s in provider.status(directory)}
        if problem := vagrant_rotate.not_running_problem(ref.name, list(states.items()),
                                                         ref.where):
            raise UserError(problem)
        if all(state != vagrant_rotate.RUNNING for state in states.values()):
            rollout.publish()
            render()
            return None
        access = access_of(load(ref.yaml or manifest.source, lambda line: None))
        nodes = [vagrant_rotate.RotatedNode(n.name, access.node_url(n.ip), n.ip,
                                            n.etcd_role == "etcd-member")
                 for n in manifest.nodes if states.get(n.name) == vagrant_rotate.RUNNING]
        made = rollout.pki
        expected = {name[:-len("-server")]: issued.serial
                    for name, issued in made.issued.items()  # type: ignore[attr-defined]
                    if name.endswith("-server")}
        return vagrant_rotate.roll(
            nodes, _VagrantMachines(provider, directory), _probes(access),
            expected=expected, render=render, publish=rollout.publish, timeout=timeout,
            report=rollout.report)

    @staticmethod
    def _manifest(ref: ClusterRef) -> Path:
        from provision.render.manifest import MANIFEST
        from provision.render.output import default_output_dir

        manifest = default_output_dir(ref.name) / MANIFEST
        if not manifest.is_file():
            raise UserError(f"{manifest}: not found; bring the cluster up with "
                            f"`provision up --provider vagrant CLUSTER.yaml` first")
        return manifest
