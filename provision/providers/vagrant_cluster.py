"""A Vagrant cluster seen through its own etcd: ready after `up`, and each machine's status.

Run from where the machines' private addresses are reachable (the host of a
VirtualBox/libvirt private network; inside the namespace of an lxc bridge).

- `wait_ready`: polls until every node's etcd answers a read through its own client URL
  and every node's fleetd has registered its machine (a machine record with the node's
  address under fleet's prefix), reporting each node once as it gets there; raises
  `OperationFailed` naming what is missing at the deadline.
- `node_rows`: per node, etcd health, the fleet machine registered with its address and
  the units fleet states for that machine (active/total).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from provision.errors import OperationFailed

POLL_S = 1.0
PROBE_TIMEOUT_S = 2.0

Report = Callable[[str, str, str], None]


@dataclass(frozen=True)
class ClusterAccess:
    etcd_endpoints: tuple[str, ...]   # fleet's registry
    fleet_prefix: str
    client_port: int                   # each node's own etcd client port
    nodes: tuple[tuple[str, str], ...]  # (name, ip) in manifest order
    tls: Any = None                    # EtcdTLS: the admin certificate, when etcd wants one

    def node_url(self, ip: str) -> str:
        return f"{'https' if self.tls else 'http'}://{ip}:{self.client_port}"


def _registry(access: ClusterAccess):  # fleetd Registry, imported lazily
    from fleetd.registry.etcd import Etcd
    from fleetd.registry.registry import Registry

    return Registry(Etcd(list(access.etcd_endpoints), timeout=PROBE_TIMEOUT_S, tls=access.tls),
                    access.fleet_prefix)


def machines_by_ip(access: ClusterAccess) -> dict[str, str] | None:
    """{public ip: machine id} fleet has registered, None when etcd does not answer."""
    registry = _registry(access)
    try:
        _, machines = registry.machines()
    except Exception:  # not reachable (yet)
        return None
    finally:
        registry.etcd.close()
    return {m.public_ip: m.id for m in machines.values() if m.public_ip}


def _etcd_health(access: ClusterAccess) -> list[bool]:
    from concurrent.futures import ThreadPoolExecutor

    from provision.providers.local.health import etcd_healthy

    urls = [access.node_url(ip) for _, ip in access.nodes]
    with ThreadPoolExecutor(max_workers=len(urls)) as pool:
        return list(pool.map(lambda url: etcd_healthy(url, PROBE_TIMEOUT_S, access.tls), urls))


def wait_ready(access: ClusterAccess, timeout: float, report: Report) -> None:
    deadline = time.monotonic() + timeout
    etcd_done: set[str] = set()
    fleet_done: set[str] = set()
    names = [name for name, _ in access.nodes]
    while True:
        for (name, _), healthy in zip(access.nodes, _etcd_health(access), strict=True):
            if healthy and name not in etcd_done:
                etcd_done.add(name)
                report(name, "etcd healthy", "")
        machines = machines_by_ip(access) or {}
        for name, ip in access.nodes:
            if ip in machines and name not in fleet_done:
                fleet_done.add(name)
                report(name, "fleet registered", f"machine {machines[ip][:8]}")
        if len(etcd_done) == len(fleet_done) == len(names):
            return
        if time.monotonic() >= deadline:
            missing = [f"{n}: " + ", ".join(what for what, done in
                                            (("etcd not healthy", n in etcd_done),
                                             ("fleet not registered", n in fleet_done))
                                            if not done)
                       for n in names if n not in etcd_done or n not in fleet_done]
            raise OperationFailed(f"the machines are up but not ready after {timeout:g}s: "
                                  + "; ".join(missing) + " (`vagrant ssh NODE -c 'journalctl "
                                  "-u etcd2 -u fleet'` shows why)")
        time.sleep(POLL_S)


@dataclass(frozen=True)
class NodeHealth:
    etcd: str        # healthy | unhealthy
    machine: str     # fleet machine id, '' when not registered
    units: str       # "active/total" of the units fleet states for that machine


def node_rows(access: ClusterAccess, reachable: Sequence[bool]) -> list[NodeHealth]:
    """Health of each node; nodes not `reachable` (not running) are not probed."""
    health = _etcd_health(access) if any(reachable) else [False] * len(access.nodes)
    machines = machines_by_ip(access) or {}
    states = _states(access)
    rows = []
    for (_, ip), up, healthy in zip(access.nodes, reachable, health, strict=True):
        machine = machines.get(ip, "") if up else ""
        mine = [s for s in states if machine and s.machine == machine]
        active = sum(s.status.is_active for s in mine)
        rows.append(NodeHealth("healthy" if up and healthy else "unhealthy" if up else "-",
                               machine, f"{active}/{len(mine)}" if machine else "-"))
    return rows


def _states(access: ClusterAccess) -> list:
    registry = _registry(access)
    try:
        return list(registry.states())
    except Exception:  # etcd not reachable: no states to show
        return []
    finally:
        registry.etcd.close()
