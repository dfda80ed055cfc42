"""`provision certs show|rotate`: the cluster's certificates, and new ones from the same CA.

`show` lists every certificate kept for a cluster (the CA, the admin certificate, each
node's etcd server, peer and fleetd certificates) with its expiry. `rotate` issues new
node and client certificates from the same CA, revokes the ones they replace (a CA-signed
revocation list every etcd member checks), renders the cluster again (so a node that
boots later boots with them) and, for a running cluster, rolls them onto the nodes one at
a time (each provider's `rotate`: provision/providers/local/rotate.py,
provision/providers/vagrant_rotate.py, the nspawn provider's): no unit restarts, and
afterwards the old certificates are refused.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

from provision.cli.lifecycle import resolve
from provision.errors import UserError


def _cluster_dir(args: argparse.Namespace) -> tuple[str, Path]:
    from provision.pki import pki_dir

    target = resolve(args.cluster, None)
    directory = pki_dir(target.name)
    if not directory.is_dir():
        raise UserError(f"{directory}: cluster {target.name} has no certificates here (it "
                        "renders with `tls: false`, or was never rendered; set "
                        "$PROVISION_STATE to where its state is)")
    return target.name, directory


def _days(delta: datetime.timedelta) -> str:
    days = delta.total_seconds() / 86400
    return f"{days:.0f}" if days >= 1 else f"{days:.2f}"


def cmd_show(args: argparse.Namespace) -> int:
    from provision.cli.lifecycle import _print_table
    from provision.pki import RENEW_BEFORE, inventory

    name, directory = _cluster_dir(args)
    now = datetime.datetime.now(datetime.timezone.utc)
    rows = []
    for info in inventory(directory):
        left = info.not_after - now
        rows.append([info.name, info.subject, info.not_after.strftime("%Y-%m-%d %H:%M UTC"),
                     _days(left) + (" (renew!)" if left < RENEW_BEFORE else ""),
                     ",".join(info.sans) or "-"])
    print(f"{name}: certificates in {directory}")
    _print_table(["CERTIFICATE", "SUBJECT", "EXPIRES", "DAYS LEFT", "NAMES"], rows)
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    from provision import pki
    from provision.providers import CertRollout
    from provision.render.manifest import MANIFEST
    from provision.render.output import default_output_dir

    target = resolve(args.cluster, None)
    provider = target.driver()
    cluster = _cluster_model(target, provider)
    if not cluster.tls:
        raise UserError(f"cluster {cluster.name} renders with `tls: false`: it has no "
                        "certificates to rotate")
    if problem := provider.rotation_problem(target.ref):
        raise UserError(problem)
    started = time.monotonic()
    made = pki.ensure(pki.pki_dir(cluster.name), cluster, rotate=True)
    rollout = CertRollout(made, lambda directory: _render_into(cluster, made, directory),
                          lambda line: print(line, file=sys.stderr, flush=True))
    rolled = provider.rotate(target.ref, rollout, timeout=args.timeout)
    # `provision render`'s output too, where there is one and the provider's is another.
    out = default_output_dir(cluster.name)
    own = provider.rendered_dir(cluster.name)
    if (out / MANIFEST).is_file() and (own is None or not out.resolve() == own.resolve()):
        rollout.render_at_rest(out)
    rollout.publish()
    count = len(made.issued)
    where = (f"rolled onto {rolled} running nodes one at a time" if rolled else
             "in the rendered user-data (nodes take them when they next apply it)")
    print(f"{cluster.name}: {count} certificates issued anew from the same CA, {where}; the "
          f"ones they replace are revoked ({time.monotonic() - started:.2f}s)")
    return 0


def _cluster_model(target, provider):  # Target, ClusterProvider -> Cluster
    from provision.render.manifest import Manifest
    from provision.spec.build import load_cluster

    if target.yaml is not None:
        return load_cluster(target.yaml)[0]
    rendered = provider.rendered_dir(target.name)
    if rendered is None:
        raise UserError(f"no {target.provider} cluster named {target.name!r} is rendered here; "
                        "name its YAML file instead")
    return load_cluster(Manifest.from_file(rendered).source)[0]


def _render_into(cluster, made, directory: Path) -> None:  # Cluster, ClusterPKI
    """Write the cluster's user-data into a rendered directory again, with the PKI as it
    is now (the new certificates; the revocation list once published)."""
    from provision.render import discovery
    from provision.render.output import write_rendered
    from provision.render.pipeline import render_cluster

    resolved, record = discovery.resolve(cluster, directory)
    write_rendered(directory, render_cluster(cluster, resolved, pki=made), record)


def add_commands(commands: argparse._SubParsersAction) -> None:
    from fleetd.argtypes import positive_duration

    certs = commands.add_parser("certs", help="the cluster's TLS certificates: show, rotate")
    actions = certs.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="every certificate of a cluster and its expiry")
    show.add_argument("cluster", metavar="CLUSTER", nargs="?",
                      help="the cluster's YAML file or name (default: the last brought up)")
    show.set_defaults(run=cmd_show)
    rotate = actions.add_parser(
        "rotate", help="issue new node and client certificates from the same CA and roll "
                       "them onto the running nodes one at a time")
    rotate.add_argument("cluster", metavar="CLUSTER",
                        help="the cluster's YAML file or name")
    rotate.add_argument("--timeout", type=positive_duration, default=30.0, metavar="SECONDS",
                        help="how long each node may take to serve its new certificate")
    rotate.set_defaults(run=cmd_rotate)
