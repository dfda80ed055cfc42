"""Providers bring a rendered cluster up, report on it and take it down.

Every provider works from the same input: the files `provision.render.cluster` renders
(`user-data-1 … user-data-N` and `manifest.json`, read as `provision.render.manifest.Manifest`).
`PROVIDERS` names them; each is one `ClusterProvider`:

- `local` (`provision.providers.local`): each node is a set of processes on its own loopback IP.
- `nspawn` (`provision.providers.nspawn`): each node a systemd-nspawn machine booted from the
  machine image, on a bridge inside a network namespace of its own.
- `vagrant` (`provision.providers.vagrant_lifecycle` over `provision.providers.vagrant`): the
  top-level `Vagrantfile`, driven through python-vagrant; one VM per node.

The lifecycle CLI (`provision up / status / down / node / env`) and `provision apply` talk
to a `ClusterProvider` only, so adding a provider is one module and one line in
`PROVIDERS`. A provider raises `provision.errors.UserError` for what the user can fix
(exit 2) and `provision.errors.OperationFailed` when the operation itself failed (exit 1).
"""

from __future__ import annotations

import importlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

# name -> "module:class" of its ClusterProvider (imported only when that provider is used).
PROVIDERS: dict[str, str] = {
    "local": "provision.providers.local.provider:LocalProvider",
    "nspawn": "provision.providers.nspawn.provider:NspawnProvider",
    "vagrant": "provision.providers.vagrant_lifecycle:VagrantLifecycle",
}

# progress(node, phase, detail): called as each node moves on. Phases every provider uses:
STARTING = "starting"   # the node is being brought up; detail says how
READY = "ready"         # the node is up
STOPPING = "stopping"   # the node is being taken down
STOPPED = "stopped"     # the node is gone
FAILED = "failed"       # the node failed; detail says why (the operation then raises)
# Providers may report other phases in between (the local one: etcd healthy, fleet registered).

Progress = Callable[[str, str, str], None]


def no_progress(node: str, phase: str, detail: str) -> None:
    """A `Progress` that ignores every report."""


@dataclass(frozen=True)
class NodeStatus:
    name: str
    ip: str
    state: str        # the provider's own word: running, not_created, poweroff, … for Vagrant
    detail: str = ""  # anything else worth showing (Vagrant: the VM provider, e.g. libvirt)


class Provider(Protocol):
    name: str

    def up(self, manifest_path: Path | str, progress: Progress = no_progress) -> None:
        """Bring every node of the manifest up, in manifest order; idempotent."""

    def status(self, manifest_path: Path | str) -> list[NodeStatus]:
        """One status per node, in manifest order."""

    def down(self, manifest_path: Path | str, purge: bool = False) -> None:
        """Take every node down; `purge` also removes the provider's state for the cluster."""


# -- what the lifecycle CLI and `provision apply` use -----------------------------------------

@dataclass(frozen=True)
class ClusterRef:
    """The cluster a command is about: its name and, when given, its YAML file."""

    name: str
    yaml: str | None = None

    @property
    def where(self) -> str:
        """The YAML path when known, else the name (what the local provider's functions take)."""
        return self.yaml or self.name


@dataclass
class StatusReport:
    """`provision status`: a table (header + rows) or the JSON document, and lines to
    print before the table (`notes` on stdout, `warnings` on stderr)."""

    header: list[str]
    rows: list[list[str]]
    document: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class CertRollout:
    """What `provision certs rotate` hands a provider: the cluster's new certificates are
    issued from its CA (`provision.pki.ensure(rotate=True)`); the revocation list of the
    ones they replace is not published yet: `publish` once every node has its new ones."""

    pki: object  # provision.pki.ClusterPKI
    render: Callable[[Path], None]  # the user-data into a rendered directory, PKI as it is now
    report: Callable[[str], None] = lambda _line: None
    published: bool = False

    def publish(self) -> None:
        """Sign and keep the revocation list (once): renders from now on carry it."""
        if not self.published:
            from provision.pki import publish_crl

            publish_crl(self.pki.directory)  # type: ignore[attr-defined]
            self.published = True

    def render_at_rest(self, directory: Path) -> None:
        """A cluster that does not run: its user-data with both at once."""
        self.publish()
        self.render(directory)


class ClusterProvider(Protocol):
    """One provider, as the CLI drives it. Every method raises UserError / OperationFailed."""

    name: str
    # The network a cluster of this provider gets when its YAML names none: (cidr, first host).
    default_network: tuple[str, int]
    # Whether `provision up` ends with `provision apply` of the declared units.
    applies_units_after_up: bool

    def network_problem(self, network: ipaddress.IPv4Network) -> str | None:
        """Why nodes of this provider cannot use `network` (one line), or None."""

    def host_problem(self) -> str | None:
        """What this host lacks to run the provider at all (one line), or None."""

    def up(self, yaml: str, *, timeout: float) -> None:
        """Render the cluster and bring every node up; returns once all are healthy."""

    def down(self, ref: ClusterRef, *, purge: bool, timeout: float) -> str:
        """Take every node down (`purge`: and forget the cluster); what to print."""

    def status(self, ref: ClusterRef, *, full: bool) -> StatusReport: ...

    def node(self, ref: ClusterRef, action: str, node: str, *, timeout: float) -> str:
        """`node stop|start|reset NODE`; what to print."""

    def env(self, ref: ClusterRef) -> str:
        """Shell lines (exports, comments) to reach the cluster with fleetctl / etcdctl."""

    def namespace(self, cluster_name: str) -> str | None:
        """The network namespace the cluster's etcd is reachable in, or None (the host's)."""

    def known_down(self, cluster_name: str) -> Callable[[], bool]:
        """A probe that says True once the cluster is known to be down (apply stops waiting)."""

    def rendered_dir(self, cluster_name: str) -> Path | None:
        """Where the provider keeps the cluster's rendered user-data and manifest.json (the
        cluster file named there is the cluster's), or None when it has none."""

    def rotation_problem(self, ref: ClusterRef) -> str | None:
        """Why `provision certs rotate` cannot roll new certificates onto the cluster now
        (one line), or None; asked before any certificate is issued."""

    def rotate(self, ref: ClusterRef, rollout: CertRollout, *, timeout: float) -> int | None:
        """`provision certs rotate`: roll the new certificates onto the running nodes one at a
        time, publish the revocation list once every node has them, and end the connections
        made with the old ones, restarting no unit; the number of nodes rolled. None when
        the cluster does not run here (its rendered user-data, if kept, is rendered again)."""


def provider_names() -> tuple[str, ...]:
    return tuple(PROVIDERS)


def get_provider(name: str) -> ClusterProvider:
    """The provider called `name` (one of PROVIDERS; the schema has refused any other)."""
    module, _, cls = PROVIDERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


def format_progress(node: str, phase: str, detail: str) -> str:
    return f"{node}: {phase}" + (f" ({detail})" if detail else "")
