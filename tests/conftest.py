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
