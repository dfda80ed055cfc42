"""Which etcd member leads, asked by threads that join a network namespace (`down` stops
the leader's machine last). A real etcd; the namespace is this process's own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from provision.providers.nspawn.leader import leader, leads
from tests.support.etcd import free_port

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="joining a network namespace "
                                "(setns) needs root")
OWN_NAMESPACE = Path("/proc/self/ns/net")


def test_the_member_that_leads_is_named(etcd_server):
    assert leads(etcd_server.url, None)
    silent = f"http://127.0.0.1:{free_port()}"
    assert leader(OWN_NAMESPACE, {"core-01": silent, "core-02": etcd_server.url},
                  None) == "core-02"


def test_no_leader_when_no_member_answers():
    silent = f"http://127.0.0.1:{free_port()}"
    assert not leads(silent, None, timeout=1)
    assert leader(OWN_NAMESPACE, {"core-01": silent}, None, timeout=1) is None


def test_a_namespace_that_cannot_be_joined_knows_no_leader(etcd_server, tmp_path):
    assert leader(tmp_path / "no-such-namespace", {"core-01": etcd_server.url}, None) is None
