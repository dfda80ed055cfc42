"""Scheduling throughput of the fleetd engine against a real etcd it starts itself.

    python bench/schedule.py --machines 1000 --units 10000

Registers N machines (presence keys bound to leases, no processes) and M units,
then times one engine pass that places every unit and commits the placements
to etcd. Beside it, in the same run, the raw etcd write rate in 128-op
transactions (the ceiling for any engine). Also: engine RSS and the number of
etcd requests an idle engine makes per reconcile interval. Last line:

    placements_per_s=<x> raw_txn_keys_per_s=<y> ratio=<x/y> engine_rss_mb=<z> idle_requests=<n>
"""

from __future__ import annotations

import argparse
import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleetd.engine.engine import Engine  # noqa: E402
from fleetd.machine import Machine  # noqa: E402
from fleetd.registry.etcd import Etcd  # noqa: E402
from fleetd.registry.registry import MAX_TXN_OPS, Registry, encode  # noqa: E402
from fleetd.unit.unitfile import content_hash, parse_unit_file, serialize  # noqa: E402
from tests.support.etcd import EtcdServer  # noqa: E402

UNIT = "[Service]\nExecStart=/bin/sleep 1000\n"


def bulk(etcd: Etcd, pairs: list[tuple[str, bytes | str]], lease: int | None = None) -> float:
    ops = etcd.ops
    start = time.perf_counter()
    for i in range(0, len(pairs), MAX_TXN_OPS):
        etcd.txn([], [ops.put(k, v, lease=lease) for k, v in pairs[i:i + MAX_TXN_OPS]])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--units", type=int, default=10000)
    args = parser.parse_args()

    server = EtcdServer().start()
    try:
        etcd = Etcd([server.url], timeout=30)
        registry = Registry(etcd, "/bench/")
        keys = registry.keys

        raw_s = bulk(etcd, [(f"/raw/{i:07d}", "x" * 100) for i in range(args.units)])
        raw_rate = args.units / raw_s

        lease = etcd.grant(600)
        machines = [Machine(f"{i:032x}", f"10.0.{i // 250}.{i % 250 + 1}", {"rack": str(i % 7)})
                    for i in range(args.machines)]
        bulk(etcd, [(keys.machine(m.id), encode(m.to_json())) for m in machines], lease)
        unit = parse_unit_file(UNIT)
        digest = content_hash(unit)
        etcd.put(keys.unit(digest), serialize(unit))
        bulk(etcd, [(keys.job(f"load@{i}.service"),
                     encode({"name": f"load@{i}.service", "hash": digest,
                             "desired": "launched"})) for i in range(args.units)])

        engine = Engine(registry, "bench-engine", ttl=60, reconcile_interval=3600)
        assert engine.leadership.ensure()
        start = time.perf_counter()
        engine._load()
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        engine.reconcile()
        pass_s = time.perf_counter() - start
        placed = engine.placements
        assigned = len(registry.assignments()[1])
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        # Idle: run the engine loop for a few intervals with nothing changing.
        engine_idle = Engine(registry, "bench-engine-2", ttl=3, reconcile_interval=1.0)
        stop = threading.Event()
        engine.leadership.resign()
        thread = threading.Thread(target=engine_idle.run, args=(stop,), daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while engine_idle.passes == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        before, idle_window = etcd.requests, 5.0
        time.sleep(idle_window)  # measuring an interval, not waiting for a condition
        idle_requests = (etcd.requests - before) / idle_window
        stop.set()
        thread.join(10)

        rate = placed / pass_s
        print(f"machines={args.machines} units={args.units} load_s={load_s:.2f} "
              f"pass_s={pass_s:.2f} placed={placed} assigned_in_etcd={assigned}")
        print(f"placements_per_s={rate:.0f} raw_txn_keys_per_s={raw_rate:.0f} "
              f"ratio={rate / raw_rate:.2f} engine_rss_mb={rss_mb:.0f} "
              f"idle_requests_per_s={idle_requests:.2f}")
        etcd.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
