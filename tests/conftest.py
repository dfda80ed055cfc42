"""Shared fixtures: write cluster files into a temporary directory and run the CLI in-process."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from provision.cli.root import main

REPO = Path(__file__).resolve().parent.parent
CLUSTERS = REPO / "clusters"


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys):
    def run(*argv: str) -> Run:
        code = main(list(argv))
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


@pytest.fixture
def cluster_file(tmp_path):
    def write(text: str, name: str = "cluster.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture(scope="module")
def etcd_server():
    """One real etcd per test module (tests in a module use distinct key prefixes)."""
    from tests.support.etcd import EtcdServer

    server = EtcdServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def _session_state_root(tmp_path_factory):
    """Module-scoped fixtures that render run before `_state_root`: their state too."""
    import os

    before = os.environ.get("PROVISION_STATE")
    os.environ["PROVISION_STATE"] = str(tmp_path_factory.mktemp("session-state"))
    yield
    if before is None:
        os.environ.pop("PROVISION_STATE", None)
    else:
        os.environ["PROVISION_STATE"] = before


@pytest.fixture(autouse=True)
def _state_root(tmp_path_factory, monkeypatch):
    """Every test keeps the cluster state `provision` writes (a TLS cluster's CA and
    certificates, made at render) in a directory of its own, never in ~/.local/state."""
    monkeypatch.setenv("PROVISION_STATE", str(tmp_path_factory.mktemp("state")))


def cluster_pki(cluster):  # Cluster -> ClusterPKI | None
    """The certificates `provision render` used (or would use) for this cluster."""
    from provision.pki import for_cluster

    return for_cluster(cluster)


def node_tls(cluster, node):  # (Cluster, Node) -> NodeTLS | None
    pki = cluster_pki(cluster)
    return pki.node(node.name) if pki is not None else None
