"""Providers bring a rendered cluster up, report on it and take it down.

Every provider works from the same input: the `manifest.json` that `provision render`
writes beside `user-data-1 … user-data-N` (see `provision.render.pipeline.manifest`). Two exist:

- `local` (`provision.providers.local`): each node is a set of processes on its own loopback IP.
- `vagrant` (`provision.providers.vagrant`): the top-level `Vagrantfile`, driven through
  python-vagrant; one VM per node.

They share this small interface so the CLI (`provision up / status / down`) does not care
which one runs. A provider raises `provision.errors.UserError` for what the user can fix
(exit 2) and `provision.errors.OperationFailed` when the operation itself failed (exit 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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
