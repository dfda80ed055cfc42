"""`provision up / down / status / node stop|start|reset / env`: pick the provider, run it, print.

A cluster is named by its YAML file or, once it has been brought up locally, by its
name; with neither, the cluster last brought up on this machine is meant (recorded in
`<state root>/last-cluster`), so the README's tour can say `provision node stop core-02`.
The provider is the YAML's `provider:` unless `--provider` says otherwise; a bare name
means the local provider.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fleetd.argtypes import positive_duration
from provision.errors import UserError

LAST_CLUSTER = "last-cluster"
PROVIDERS = ("local", "vagrant")


@dataclass(frozen=True)
class Target:
    """The cluster a command is about: a name, a provider, maybe its YAML."""

    name: str
    provider: str
    yaml: str | None = None


def _is_yaml_path(text: str) -> bool:
    return text.endswith((".yaml", ".yml")) or os.sep in text


def _state_root() -> Path:
    from provision.providers.local.provider import default_state_root

    return default_state_root()


def remember_last(name: str) -> None:
    from provision.files import write_atomic

    root = _state_root()
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(root / LAST_CLUSTER, name + "\n")


def _last() -> str | None:
    try:
        name = (_state_root() / LAST_CLUSTER).read_text().strip()
    except OSError:
        return None
    return name or None


def resolve(cluster: str | None, provider: str | None) -> Target:
    """The cluster a command means (see the module docstring); UserError when none."""
    if cluster is None:
        cluster = _last()
        if cluster is None:
            raise UserError("name a cluster (its YAML file or its name): no cluster has been "
                            "brought up with `provision up CLUSTER.yaml` on this machine yet")
    if _is_yaml_path(cluster):
        from provision.model_build import load_cluster

        model, _warnings = load_cluster(cluster)
        return Target(model.name, provider or model.provider, cluster)
    return Target(cluster, provider or "local")


def _vagrant_manifest(target: Target) -> Path:
    from provision.cli import default_output_dir
    from provision.render import MANIFEST

    manifest = default_output_dir(target.name) / MANIFEST
    if not manifest.is_file():
        raise UserError(f"{manifest}: not found; bring the cluster up with "
                        f"`provision up --provider vagrant CLUSTER.yaml` first")
    return manifest


def _vagrant():  # noqa: ANN202 - VagrantProvider, imported lazily
    from provision.providers.vagrant import VagrantProvider

    return VagrantProvider()


def _console():  # noqa: ANN202 - rich.console.Console, imported lazily
    from rich.console import Console

    return Console(stderr=True)


# -- up ----------------------------------------------------------------------------------------

def cmd_up(args: argparse.Namespace) -> int:
    target = resolve(args.cluster, args.provider)
    if target.yaml is None:
        raise UserError(f"`provision up` needs the cluster's YAML file, not a name "
                        f"({target.name!r}): e.g. `provision up clusters/{target.name}.yaml`")
    if target.provider == "vagrant":
        return _up_vagrant(target)
    from provision.providers.local import provider as local

    remember_last(target.name)
    started = time.monotonic()
    code = local.up(target.yaml, timeout=args.timeout, console=_console())
    if code != 0:
        return code
    from provision.apply_cli import apply_after_up

    return apply_after_up(target.yaml, max(10.0, args.timeout - (time.monotonic() - started)),
                          no_wait=args.no_wait)


def _up_vagrant(target: Target) -> int:
    from provision import discovery
    from provision.cli import default_output_dir
    from provision.model_build import load_cluster
    from provision.output import write_rendered
    from provision.pki import for_cluster
    from provision.render import MANIFEST, render_cluster

    cluster, warnings = load_cluster(target.yaml)
    for problem in warnings:
        print(problem, file=sys.stderr)
    out_dir = default_output_dir(cluster.name)
    resolved, record = discovery.resolve(cluster, out_dir)
    write_rendered(out_dir, render_cluster(cluster, resolved, pki=for_cluster(cluster)),
                   record)
    _vagrant().up(out_dir / MANIFEST, _print_progress)
    print(f"{cluster.name} is up: {len(cluster.nodes)} Vagrant machines running "
          f"(`vagrant ssh {cluster.nodes[0].name}` from this checkout)")
    return 0


def _print_progress(node: str, phase: str, detail: str) -> None:
    print(f"{node}: {phase}" + (f" ({detail})" if detail else ""), file=sys.stderr, flush=True)


# -- down --------------------------------------------------------------------------------------

def cmd_down(args: argparse.Namespace) -> int:
    target = resolve(args.cluster, args.provider)
    if target.provider == "vagrant":
        from provision import discovery
        manifest = _vagrant_manifest(target)
        _vagrant().down(manifest, purge=args.purge, progress=_print_progress)
        if args.purge:
            discovery.mark_spent(manifest.parent)
        print(f"{target.name}: destroyed")
        return 0
    from provision.providers.local import provider as local

    print(local.down(target.yaml or target.name, purge=args.purge, timeout=args.timeout))
    return 0


# -- status ------------------------------------------------------------------------------------

def cmd_status(args: argparse.Namespace) -> int:
    target = resolve(args.cluster, args.provider)
    from provision.certs_cli import expiry_warnings

    for line in expiry_warnings(target.name):
        print(line, file=sys.stderr)
    if target.provider == "vagrant":
        rows = [{"name": s.name, "ip": s.ip, "state": s.state, "vm_provider": s.detail}
                for s in _vagrant().status(_vagrant_manifest(target))]
        if args.output == "json":
            print(json.dumps({"cluster": target.name, "provider": "vagrant", "nodes": rows},
                             indent=2))
        else:
            _print_table(["NODE", "IP", "STATE", "VM PROVIDER"],
                         [[r["name"], r["ip"], r["state"], r["vm_provider"]] for r in rows])
        return 0
    from provision.providers.local import provider as local

    where = target.yaml or target.name
    rows = local.status(where)
    etcd = local.etcd_binary(where)
    writes = local.state_writes(where)
    if args.output == "json":
        print(json.dumps({"cluster": target.name, "provider": "local", "etcd_binary": etcd,
                          "state_writes": writes, "nodes": rows}, indent=2))
        return 0
    if writes:
        from provision.providers.local.control import describe_writes_problem

        print(f"warning: {describe_writes_problem(writes)}", file=sys.stderr)
    if etcd:
        print(f"etcd: {etcd['etcd']} (version {etcd['version']}, chosen by {etcd['source']})")
        if etcd.get("warning"):
            print(f"warning: {etcd['warning']}", file=sys.stderr)
    _print_table(
        ["NODE", "IP", "ROLE", "STATE", "ETCD", "MACHINE", "FLEET", "UNITS"],
        [[r["name"], r["ip"], r["role"], r["state"], r["etcd"],
          r["machine_id"] if args.full else r["machine_id"][:8] + "...", r["fleet"],
          f"{r['units_running']}/{len(r['units'])} active"] for r in rows])
    return 0


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows,
                                                                        strict=False)]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


# -- node stop|start, env -------------------------------------------------------------------

def cmd_node(args: argparse.Namespace) -> int:
    target = resolve(args.cluster, None)
    if target.provider != "local":
        raise UserError(f"`provision node {args.action}` works on local clusters; "
                        f"{target.name} uses the {target.provider} provider (use "
                        f"`vagrant halt|up {args.node}`)")
    from provision.providers.local import provider as local

    where = target.yaml or target.name
    if args.action == "stop":
        local.node_stop(where, args.node, timeout=args.timeout)
        print(f"{args.node}: stopped (fleetd left the cluster first; its units move elsewhere)")
    elif args.action == "reset":
        print(local.node_reset(where, args.node, timeout=args.timeout, console=_console()))
    else:
        local.node_start(where, args.node, timeout=args.timeout, console=_console())
        print(f"{args.node}: running")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    target = resolve(args.cluster, args.provider)
    if target.provider == "vagrant":
        for key, value in _vagrant().user_env(_vagrant_manifest(target)).items():
            print(f"export {key}={value}")
        from provision.pki import client_files, pki_dir

        manifest = json.loads(_vagrant_manifest(target).read_text())
        print(f"export ETCDCTL_ENDPOINTS={','.join(manifest['etcd']['endpoints'])}")
        files = client_files(pki_dir(target.name))
        if manifest.get("tls") and Path(files.cert_file).is_file():  # the admin certificate
            print(f"export ETCDCTL_CACERT={files.ca_file}\nexport ETCDCTL_CERT="
                  f"{files.cert_file}\nexport ETCDCTL_KEY={files.key_file}")
        return 0
    from provision.providers.local import provider as local

    sys.stdout.write(local.env(target.yaml or target.name))
    return 0


# -- arguments ---------------------------------------------------------------------------------

def add_commands(commands: argparse._SubParsersAction) -> None:
    cluster_help = ("the cluster's YAML file or name (default: the cluster last brought up "
                    "on this machine)")

    def cluster_arg(parser: argparse.ArgumentParser, required: bool = False) -> None:
        if required:
            parser.add_argument("cluster", metavar="CLUSTER.yaml")
        else:
            parser.add_argument("cluster", metavar="CLUSTER", nargs="?", help=cluster_help)

    def provider_arg(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--provider", choices=PROVIDERS,
                            help="override the cluster's `provider:`")

    up = commands.add_parser(
        "up", help="render the cluster and bring every node up; returns once all are healthy")
    cluster_arg(up, required=True)
    provider_arg(up)
    up.add_argument("--timeout", type=positive_duration, default=120.0, metavar="SECONDS",
                    help="give up (and stop what was started) after this long (default 120)")
    up.add_argument("--no-wait", action="store_true",
                    help="if an apply holds the cluster, exit 2 instead of waiting for it "
                         "(for the apply of the declared units that ends `up`)")
    up.set_defaults(run=cmd_up)

    down = commands.add_parser("down", help="stop every node of a cluster")
    cluster_arg(down)
    provider_arg(down)
    down.add_argument("--purge", action="store_true",
                      help="also remove the cluster's state (node data, logs, rendered files)")
    down.add_argument("--timeout", type=positive_duration, default=60.0, metavar="SECONDS")
    down.set_defaults(run=cmd_down)

    status = commands.add_parser("status", help="each node: IP, etcd health, fleet machine, units")
    cluster_arg(status)
    provider_arg(status)
    status.add_argument("--output", choices=("table", "json"), default="table")
    status.add_argument("--full", action="store_true", help="full machine IDs")
    status.set_defaults(run=cmd_status)

    node = commands.add_parser(
        "node", help="stop or start one node of a local cluster, or reset its etcd member "
                     "(remove + re-add, empty data: for a member whose data is lost)")
    node.add_argument("action", choices=("stop", "start", "reset"))
    node.add_argument("node", metavar="NODE")
    node.add_argument("-c", "--cluster", metavar="CLUSTER", help=cluster_help)
    node.add_argument("--timeout", type=positive_duration, default=120.0, metavar="SECONDS")
    node.set_defaults(run=cmd_node)

    env = commands.add_parser(
        "env", help="print FLEETCTL_ENDPOINT / ETCDCTL_ENDPOINTS exports for a cluster")
    cluster_arg(env)
    provider_arg(env)
    env.set_defaults(run=cmd_env)
