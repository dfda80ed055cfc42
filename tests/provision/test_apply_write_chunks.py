"""apply's transactions: as few as etcd's op limit allows, none over it (real etcd)."""

from __future__ import annotations

import math
import uuid

from fleetd.job import JobState
from fleetd.registry.etcd import Etcd
from fleetd.registry.registry import MAX_TXN_OPS, Registry
from fleetd.unit.unitfile import content_hash, parse_unit_file
from provision.apply.desired import DesiredUnit
from provision.apply.planner import Action, Change
from provision.apply.run import _chunks


def desired(name: str, text: str) -> DesiredUnit:
    return DesiredUnit(name, text, content_hash(parse_unit_file(text)), JobState.LAUNCHED,
                       name.split("@")[0] + "@.service")


def test_instances_of_one_template_share_a_body_and_fill_each_transaction(etcd_server):
    """Each transaction within etcd's limits (at most 128 compares and 128 ops: etcd
    refuses more), and no more transactions than those limits make necessary."""
    template = "[Service]\nExecStart=/bin/sleep infinity\n"
    instances = [desired(f"job@{n}.service", template) for n in range(1, 601)]
    # Sidekick-like units: each its own content, so each costs its body too.
    own = [desired(f"side@{n}.service", f"[Service]\nExecStart=/bin/sleep {n}\n")
           for n in range(1, 61)]
    changes = [Change(Action.CREATE, u.name, u) for u in instances + own]
    guards = 2  # the apply lock's compares
    chunks = _chunks(changes, {}, guards)
    assert [w.name for chunk in chunks for w in chunk] == [c.name for c in changes]
    # A created job: two compares (neither namespace holds it).
    assert len(chunks) == math.ceil(660 * 2 / (MAX_TXN_OPS - guards))
    etcd = Etcd([etcd_server.url], timeout=5)
    try:
        registry = Registry(etcd, f"/test-{uuid.uuid4().hex[:8]}/")
        for number, chunk in enumerate(chunks):
            mark = etcd.ops.put(registry.keys.prefix + "progress", str(number))
            guard = [etcd.ops.version(registry.keys.prefix + f"lock{n}") == 0
                     for n in range(guards)]
            assert registry.write_jobs(chunk, guard=guard, also=[mark])
        _, jobs = registry.jobs()
        assert len(jobs) == 660
    finally:
        etcd.close()
