"""The Vagrant provider as the lifecycle CLI drives it (`ClusterProvider`).

The cluster is rendered into out/<name> (the Vagrantfile reads its manifest); the
machines are `provision.providers.vagrant.VagrantProvider`'s. `provision node` is
Vagrant's own `vagrant halt|up NODE`; the declared units are not applied after `up`
(the machines' etcd is reached from them, not from here).
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable
from pathlib import Path

from provision.errors import UserError
from provision.providers import ClusterRef, StatusReport, format_progress


def driver():  # noqa: ANN201 - VagrantProvider, imported lazily
    """The Vagrant driver (tests replace it with one over a fake `vagrant`)."""
    from provision.providers.vagrant import VagrantProvider

    return VagrantProvider()


def _print_progress(node: str, phase: str, detail: str) -> None:
    print(format_progress(node, phase, detail), file=sys.stderr, flush=True)


class VagrantLifecycle:
    name = "vagrant"
    default_network = ("172.17.8.0/24", 101)
    applies_units_after_up = False

    def network_problem(self, network: ipaddress.IPv4Network) -> str | None:
        if network.is_loopback:
            return ("Vagrant machines need a private network such as 172.17.8.0/24, not a "
                    "loopback range")
        return None

    def host_problem(self) -> str | None:
        return None  # the driver says it when `vagrant` is missing

    def up(self, yaml: str, *, timeout: float) -> None:
        from provision.render.cluster import render_to
        from provision.render.pipeline import MANIFEST

        rendered = render_to(yaml)
        cluster = rendered.cluster
        driver().up(rendered.out_dir / MANIFEST, _print_progress)
        print(f"{cluster.name} is up: {len(cluster.nodes)} Vagrant machines running "
              f"(`vagrant ssh {cluster.nodes[0].name}` from this checkout)")

    def down(self, ref: ClusterRef, *, purge: bool, timeout: float) -> str:
        from provision.render import discovery

        manifest = self._manifest(ref)
        driver().down(manifest, purge=purge, progress=_print_progress)
        if purge:
            discovery.mark_spent(manifest.parent)
        return f"{ref.name}: destroyed"

    def status(self, ref: ClusterRef, *, full: bool) -> StatusReport:
        rows = [{"name": s.name, "ip": s.ip, "state": s.state, "vm_provider": s.detail}
                for s in driver().status(self._manifest(ref))]
        return StatusReport(
            ["NODE", "IP", "STATE", "VM PROVIDER"],
            [[r["name"], r["ip"], r["state"], r["vm_provider"]] for r in rows],
            {"cluster": ref.name, "provider": self.name, "nodes": rows})

    def node(self, ref: ClusterRef, action: str, node: str, *, timeout: float) -> str:
        raise UserError(f"`provision node {action}` works on local and nspawn clusters; "
                        f"{ref.name} uses the vagrant provider (use `vagrant halt|up {node}`)")

    def env(self, ref: ClusterRef) -> str:
        return "".join(f"export {key}={value}\n"
                       for key, value in driver().user_env(self._manifest(ref)).items())

    def namespace(self, cluster_name: str) -> str | None:
        return None

    def known_down(self, cluster_name: str) -> Callable[[], bool]:
        return lambda: False  # Vagrant cannot tell cheaply

    @staticmethod
    def _manifest(ref: ClusterRef) -> Path:
        from provision.render.output import default_output_dir
        from provision.render.pipeline import MANIFEST

        manifest = default_output_dir(ref.name) / MANIFEST
        if not manifest.is_file():
            raise UserError(f"{manifest}: not found; bring the cluster up with "
                            f"`provision up --provider vagrant CLUSTER.yaml` first")
        return manifest
