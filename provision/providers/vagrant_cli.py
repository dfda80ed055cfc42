"""`provision up / status / node / env / down` of a Vagrant cluster (the lifecycle CLI
hands them the cluster; this module does the Vagrant part and prints).

- up: render, prepare (box, payload), `vagrant up` each node, wait until every etcd is
  healthy and every fleetd registered, write `ssh-config` and `known_hosts` beside the
  manifest, then apply the declared units.
- status: per node, Vagrant's state, etcd health, the fleet machine, its units.
- node stop|start: `vagrant halt|up NODE`; start waits for that node to be ready again.
- env: etcdctl reaches the members directly; fleetctl goes through SSH to the first
  node (`FLEETCTL_TUNNEL`) with Vagrant's keys (`FLEETCTL_SSH_CONFIG`) and the host keys
  read at `up` (`FLEETCTL_KNOWN_HOSTS_FILE`, strict checking): the fleet API stays a
  root-only unix socket on each machine.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from provision.errors import OperationFailed, UserError
from provision.files import write_atomic
from provision.providers.vagrant import VagrantProvider, read_manifest
from provision.providers.vagrant_cluster import ClusterAccess, node_rows, wait_ready

SSH_CONFIG = "ssh-config"
KNOWN_HOSTS = "known_hosts"
READY_TIMEOUT_S = 300.0


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _progress(node: str, phase: str, detail: str) -> None:
    _say(f"{node}: {phase}" + (f" ({detail})" if detail else ""))


def access_of(cluster) -> ClusterAccess:  # noqa: ANN001 - provision.model.Cluster
    from provision.desired import etcd_endpoints, fleet_prefix

    return ClusterAccess(tuple(etcd_endpoints(cluster)), fleet_prefix(cluster),
                         cluster.etcd.client_port,
                         tuple((n.name, str(n.ip)) for n in cluster.nodes))


def _load(yaml: str):  # noqa: ANN202 - provision.model.Cluster
    from provision.model_build import load_cluster

    cluster, warnings = load_cluster(yaml)
    for problem in warnings:
        print(problem, file=sys.stderr)
    return cluster


def up(yaml: str, timeout: float, no_wait: bool = False) -> int:
    from provision import discovery
    from provision.apply_cli import apply_after_up
    from provision.cli import default_output_dir
    from provision.output import write_rendered
    from provision.render import MANIFEST, render_cluster

    cluster = _load(yaml)
    out_dir = default_output_dir(cluster.name)
    resolved, record = discovery.resolve(cluster, out_dir)
    write_rendered(out_dir, render_cluster(cluster, resolved), record)
    manifest = out_dir / MANIFEST
    provider = VagrantProvider()
    provider.prepare(manifest, _say)
    started = time.monotonic()
    provider.up(manifest, _progress)
    wait_ready(access_of(cluster), max(timeout, READY_TIMEOUT_S), _progress)
    write_access_files(provider, manifest)
    _say(f"{cluster.name}: {len(cluster.nodes)} Vagrant machines ready in "
         f"{time.monotonic() - started:.0f}s")
    code = apply_after_up(yaml, max(timeout, READY_TIMEOUT_S), no_wait=no_wait)
    if code == 0:
        print(f"{cluster.name} is up: {len(cluster.nodes)} Vagrant machines; "
              f"`eval $(provision env {yaml})` then fleetctl list-machines")
    return code


def write_access_files(provider: VagrantProvider, manifest: Path) -> None:
    """ssh-config (Vagrant's, each host also under its address) and known_hosts (the
    machines' host keys, read over that SSH, as Vagrant trusts them) beside the manifest."""
    directory = read_manifest(manifest).path.parent
    config = provider.ssh_config(manifest)
    write_atomic(directory / SSH_CONFIG, config)
    lines = []
    for name, ip in read_manifest(manifest).nodes:
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


def status(target_name: str, manifest: Path, yaml: str | None, output: str) -> int:
    provider = VagrantProvider()
    states = provider.status(manifest)
    health = None
    if yaml is not None:
        health = node_rows(access_of(_load(yaml)), [s.state == "running" for s in states])
    rows = []
    for i, s in enumerate(states):
        h = health[i] if health else None
        rows.append({"name": s.name, "ip": s.ip, "state": s.state, "vm_provider": s.detail,
                     "etcd": h.etcd if h else "?", "machine": h.machine if h else "",
                     "units": h.units if h else "?"})
    if output == "json":
        print(json.dumps({"cluster": target_name, "provider": "vagrant", "nodes": rows},
                         indent=2))
        return 0
    from provision.lifecycle_cli import _print_table

    _print_table(["NODE", "IP", "STATE", "VM PROVIDER", "ETCD", "MACHINE", "UNITS"],
                 [[r["name"], r["ip"], r["state"], r["vm_provider"], r["etcd"],
                   (r["machine"][:8] + "...") if r["machine"] else "-", r["units"]]
                  for r in rows])
    return 0


def node(action: str, node_name: str, manifest: Path, yaml: str | None,
         timeout: float) -> int:
    provider = VagrantProvider()
    if action == "stop":
        provider.halt(manifest, node_name)
        print(f"{node_name}: halted (fleet moves its units once its machine is gone)")
        return 0
    if action != "start":
        raise UserError(f"`provision node {action}` works on local clusters only")
    provider.start(manifest, node_name)
    if yaml is not None:
        access = access_of(_load(yaml))
        mine = tuple(n for n in access.nodes if n[0] == node_name)
        wait_ready(ClusterAccess(access.etcd_endpoints, access.fleet_prefix,
                                 access.client_port, mine),
                   max(timeout, READY_TIMEOUT_S), _progress)
    print(f"{node_name}: running")
    return 0


def env(manifest: Path, yaml: str | None) -> str:
    provider = VagrantProvider()
    found = read_manifest(manifest)
    directory = found.path.parent
    exports = dict(provider.user_env(manifest))
    if yaml is not None:
        access = access_of(_load(yaml))
        exports["ETCDCTL_ENDPOINTS"] = ",".join(access.etcd_endpoints)
    exports["FLEETCTL_TUNNEL"] = found.nodes[0][1]
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
