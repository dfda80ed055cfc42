"""A Vagrant cluster seen through its etcd (a real one here, the registry written as
fleetd writes it): `wait_ready` and the per-node health `provision status` shows."""

from __future__ import annotations

import threading
import uuid
from urllib.parse import urlsplit

import pytest

from fleetd.machine import Machine
from fleetd.registry.etcd import Etcd
from fleetd.registry.registry import Registry
from fleetd.runner.base import UnitStatus
from provision.errors import OperationFailed
from provision.providers.vagrant_cluster import ClusterAccess, NodeHealth, node_rows, wait_ready

A, B = "a" * 32, "b" * 32


@pytest.fixture
def access(etcd_server):
    port = urlsplit(etcd_server.url).port
    # node-1's etcd is this one; node-2's address answers nothing
    return ClusterAccess((etcd_server.url,), f"/vc-{uuid.uuid4().hex[:8]}/", port,
                         (("node-1", "127.0.0.1"), ("node-2", "127.0.0.2")))


@pytest.fixture
def registry(access):
    etcd = Etcd(list(access.etcd_endpoints))
    yield Registry(etcd, access.fleet_prefix)
    etcd.close()


def register(registry: Registry, machine: str, ip: str) -> int:
    lease = registry.etcd.grant(60)
    registry.register_machine(Machine(id=machine, public_ip=ip), lease)
    return lease


def test_node_health_etcd_fleet_machine_and_its_units(access, registry):
    lease = register(registry, A, "127.0.0.1")
    registry.write_states(A, lease, {
        "web@1.service": ("h1", UnitStatus("loaded", "active", "running"), True),
        "web-announce@1.service": ("h2", UnitStatus("loaded", "failed", "failed"), True)})
    assert node_rows(access, [True, True]) == [NodeHealth("healthy", A, "1/2"),
                                               NodeHealth("unhealthy", "", "-")]
    # a node Vagrant says is not running is not probed
    assert node_rows(access, [True, False])[1] == NodeHealth("-", "", "-")


def test_ready_once_every_node_has_etcd_and_a_registered_fleet_machine(access, registry):
    one = ClusterAccess(access.etcd_endpoints, access.fleet_prefix, access.client_port,
                        access.nodes[:1])
    seen: list[tuple[str, str]] = []
    timer = threading.Timer(1.5, register, (registry, A, "127.0.0.1"))
    timer.start()
    try:
        wait_ready(one, 60, lambda node, phase, detail: seen.append((node, phase)))
    finally:
        timer.cancel()
    assert seen == [("node-1", "etcd healthy"), ("node-1", "fleet registered")]


def test_not_ready_at_the_deadline_names_what_is_missing(access, registry):
    register(registry, A, "127.0.0.1")
    with pytest.raises(OperationFailed, match=r"node-2: etcd not healthy, fleet not "
                                              r"registered \("):
        wait_ready(access, 1, lambda *_: None)
