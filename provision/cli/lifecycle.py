"""`provision up / down / status / node stop|start|reset / env`: pick the provider, run it, print.

A cluster is named by its YAML file or, once it has been brought up, by its name; with
neither, the cluster last brought up on this machine is meant (recorded in
`<state root>/last-cluster`), so the README's tour can say `provision node stop core-02`.
The provider is the YAML's `provider:` unless `--provider` says otherwise; a bare name
means the provider that knows a cluster of that name (local first), else the local one.
Every command talks to a `provision.providers.ClusterProvider` from `PROVIDERS`.
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
from provision.providers import PROVIDERS, ClusterProvider, ClusterRef, get_provider

LAST_CLUSTER = "last-cluster"


@dataclass(frozen=True)
class Target:
    """The cluster a command is about: a name, a provider, maybe its YAML."""

    name: str
    provider: str
    yaml: str | None = None

    @property
    def ref(self) -> ClusterRef:
        return ClusterRef(self.name, self.yaml)

    def driver(self) -> ClusterProvider:
        return get_provider(self.provider)


def _is_yaml_path(text: str) -> bool:
    return text.endswith((".yaml", ".yml")) or os.sep in text


def _state_root() -> Path:
    from provision.files import default_state_root

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


def _provider_of(name: str) -> str:
    """The provider that has state for a cluster of this name (the local one if none)."""
    for provider in PROVIDERS:
        knows = getattr(get_provider(provider), "knows", None)
        if knows is not None and knows(name):
            return provider
    return "local"


def resolve(cluster: str | None, provider: str | None) -> Target:
    """The cluster a command means (see the module docstring); UserError when none."""
    if cluster is None:
        cluster = _last()
        if cluster is None:
            raise UserError("name a cluster (its YAML file or its name): no cluster has been "
                            "brought up with `provision up CLUSTER.yaml` on this machine yet")
    if _is_yaml_path(cluster):
        from provision.spec.build import load_cluster

        model, _warnings = load_cluster(cluster)
        return Target(model.name, provider or model.provider, cluster)
    return Target(cluster, provider or _provider_of(cluster))


# -- up ----------------------------------------------------------------------------------------

def cmd_up(args: argparse.Namespace) -> int:
    target = resolve(args.cluster, args.provider)
    if target.yaml is None:
        raise UserError(f"`provision up` needs the cluster's YAML file, not a name "
                        f"({target.name!r}): e.g. `provision up clusters/{target.name}.yaml`")
    provider = target.driver()
    if problem := provider.host_problem():
        raise UserError(problem)
    if hasattr(provider, "knows"):  # found again by its name alone
        remember_last(target.name)
    started = time.monotonic()
    provider.up(target.yaml, timeout=args.timeout)
    if not provider.applies_units_after_up:
        return 0
    from provision.cli.apply import apply_after_up

    return apply_after_up(target.yaml, max(10.0, args.timeout - (time.monotonic() - started)),
                          no_wait=args.no_wait, provider=target.provider)


# -- down, status, node, env ------------------------------------------------------------------

def cmd_down(args: argparse.Namespace) -> int:
    target = resolve(args.cluster, args.provider)
    print(target.driver().down(target.ref, purge=args.purge, timeout=args.timeout))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    target = resolve(args.cluster, args.provider)
    from provision.pki import expiry_warnings

    for line in expiry_warnings(target.name):
        print(line, file=sys.stderr)
    report = target.driver().status(target.ref, full=args.full)
    if args.output == "json":
        print(json.dumps(report.document, indent=2))
        return 0
    for line in report.warnings:
        print(line, file=sys.stderr)
    for line in report.notes:
        print(line)
    _print_table(report.header, report.rows)
    return 0


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows,
                                                                        strict=False)]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def cmd_node(args: argparse.Namespace) -> int:
    target = resolve(args.cluster, None)
    print(target.driver().node(target.ref, args.action, args.node, timeout=args.timeout))
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    target = resolve(args.cluster, args.provider)
    sys.stdout.write(target.driver().env(target.ref))
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
