"""Scheduling throughput of the fleetd engine against a real etcd it starts itself.

    python bench/schedule.py --machines 1000 --units 10000

Registers N machines (presence keys bound to leases, no processes) and M units,
then times one engine pass that places every unit and commits the placements
to etcd. Beside it, in the same run, the raw etcd write rate in 128-op
transactions (the ceiling for any engine). Then, with a fresh engine running its
loop: etcd requests per reconcile interval when idle and for one changed unit
(counted by the registry client), and the time to converge after 10 % of the
machines die at once (their lease revoked) until every unit is committed to a live
machine. Engine RSS is the process's peak. Last lines:

    placements_per_s=<x> raw_txn_keys_per_s=<y> ratio=<x/y> engine_rss_mb=<z> ...
    converge_after_10pct_death_s=<t> moved=<n> idle_requests_per_interval=<a>
    one_change_requests=<b>
    one_machine_failover_s=<f> its_units=<k>   (one machine dying alone, after that)

`--tls`: the etcd asks for client certificates (mutual TLS, as every cluster runs by
default) and everything above goes over it; one more line compares with a plain-http etcd
started in the same run: `tls_placements_per_s=… plain_placements_per_s=… ratio=…`
(one engine pass each) and the same for the raw writes.
"""

from __future__ import annotations

import argparse
import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleetd.engine.engine import Engine
from fleetd.machine import Machine
from fleetd.registry.etcd import Etcd, Txn
from fleetd.registry.registry import MAX_TXN_OPS, Registry, encode
from fleetd.unit.unitfile import content_hash, parse_unit_file, serialize
from tests.support.etcd import EtcdServer

UNIT = "[Service]\nExecStart=/bin/sleep 1000\n"


def bulk(etcd: Etcd, pairs: list[tuple[str, bytes]], lease: int = 0) -> float:
    """Seconds to write `pairs` one 128-op transaction after another, each written as the
    engine writes its placements (straight into etcd's request): the raw rate the engine
    is held to."""
    start = time.perf_counter()
    for i in range(0, len(pairs), MAX_TXN_OPS):
        txn = Txn()
        for key, value in pairs[i:i + MAX_TXN_OPS]:
            txn.put(key, value, lease)
        etcd.commit(txn)
    return time.perf_counter() - start


def wait_until(condition, timeout: float, what: str) -> None:  # a callable
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


def one_pass(machines: int, units: int, tls: bool) -> tuple[float, float]:
    """(placements/s of one engine pass, raw 128-op txn keys/s) on an etcd of its own."""
    server = EtcdServer(tls=tls).start()
    try:
        etcd = Etcd([server.url], timeout=30, tls=server.tls)
        registry = Registry(etcd, "/bench/")
        keys = registry.keys
        raw_rate = units / bulk(etcd, [(f"/raw/{i:07d}", b"x" * 100) for i in range(units)])
        lease = etcd.grant(600)
        bulk(etcd, [(keys.machine(f"{i:032x}"), encode(Machine(
            f"{i:032x}", f"10.0.{i // 250}.{i % 250 + 1}", {}).to_json()))
                    for i in range(machines)], lease)
        unit = parse_unit_file(UNIT)
        digest = content_hash(unit)
        etcd.put(keys.unit(digest), serialize(unit))
        bulk(etcd, [(keys.job(f"load@{i}.service"),
                     encode({"name": f"load@{i}.service", "hash": digest,
                             "desired": "launched"})) for i in range(units)])
        engine = Engine(registry, "bench-engine", ttl=60, reconcile_interval=3600)
        assert engine.leadership.ensure()
        engine._load()
        start = time.perf_counter()
        engine.reconcile()
        rate = engine.placements / (time.perf_counter() - start)
        etcd.close()
        return rate, raw_rate
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--units", type=int, default=10000)
    parser.add_argument("--tls", action="store_true",
                        help="mutual TLS to etcd, compared with plain http in the same run")
    args = parser.parse_args()

    plain = one_pass(args.machines, args.units, tls=False) if args.tls else None
    server = EtcdServer(tls=args.tls).start()
    try:
        etcd = Etcd([server.url], timeout=30, tls=server.tls)
        registry = Registry(etcd, "/bench/")
        keys = registry.keys

        raw_s = bulk(etcd, [(f"/raw/{i:07d}", b"x" * 100) for i in range(args.units)])
        raw_rate = args.units / raw_s

        lease = etcd.grant(600)
        doomed_lease = etcd.grant(600)  # the 10 % that die at once later
        machines = [Machine(f"{i:032x}", f"10.0.{i // 250}.{i % 250 + 1}", {"rack": str(i % 7)})
                    for i in range(args.machines)]
        doomed = {m.id for m in machines[: max(1, args.machines // 10)]}
        solo_lease = etcd.grant(600)  # one more machine that dies alone, after the 10 %
        solo = machines[-1].id
        bulk(etcd, [(keys.machine(m.id), encode(m.to_json())) for m in machines
                    if m.id not in doomed and m.id != solo], lease)
        etcd.put(keys.machine(solo), encode(machines[-1].to_json()), lease=solo_lease)
        bulk(etcd, [(keys.machine(m.id), encode(m.to_json())) for m in machines
                    if m.id in doomed], doomed_lease)
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

        # A fresh engine running its loop: idle cost, one change, then 10 % of machines die.
        engine_idle = Engine(registry, "bench-engine-2", ttl=3, reconcile_interval=1.0)
        stop = threading.Event()
        engine.leadership.resign()
        thread = threading.Thread(target=engine_idle.run, args=(stop,), daemon=True)
        thread.start()
        wait_until(lambda: engine_idle.passes > 0, 60, "the looping engine's first pass")
        before, idle_window = etcd.requests, 5.0
        time.sleep(idle_window)  # measuring an interval, not waiting for a condition
        idle_per_interval = (etcd.requests - before) / idle_window * engine_idle.reconcile_interval

        placements = engine_idle.placements
        before = etcd.requests
        started = time.perf_counter()
        etcd.put(keys.job("load@new.service"), encode({"name": "load@new.service",
                                                       "hash": digest, "desired": "launched"}))
        wait_until(lambda: engine_idle.placements > placements, 30, "the new unit placed")
        change_s = time.perf_counter() - started
        one_change = etcd.requests - before - idle_per_interval * change_s

        on_doomed = sum(1 for m in engine_idle.cache.assignments.values() if m in doomed)
        started = time.perf_counter()
        etcd.revoke(doomed_lease)

        def converged() -> bool:
            cache = engine_idle.cache
            try:  # the engine's thread changes its cache as we read it
                if cache is None or any(m in doomed for m in cache.assignments.values()):
                    return False
            except RuntimeError:
                return False
            return len(cache.assignments) >= args.units + 1 and not cache.pending
        wait_until(converged, 300, "every unit back on a live machine")

        def committed() -> bool:  # the cache leads; etcd is the truth agents act on
            found = registry.assignments()[1]
            return (len(found) >= args.units + 1
                    and not any(a.machine in doomed for a in found))
        wait_until(committed, 300, "the moves committed to etcd")
        converge_s = time.perf_counter() - started

        # One machine dies alone: failover should not grow with the cluster.
        on_solo = sum(1 for m in engine_idle.cache.assignments.values() if m == solo)
        started = time.perf_counter()
        etcd.revoke(solo_lease)
        def solo_moved() -> bool:
            try:
                return (all(m != solo for m in engine_idle.cache.assignments.values())
                        and not engine_idle.cache.pending)
            except RuntimeError:  # changed as we read it
                return False
        wait_until(solo_moved, 120, "the lone machine's units moved")
        wait_until(lambda: not registry.assignments(machine=solo)[1], 120,
                   "the lone machine's moves committed")
        solo_s = time.perf_counter() - started
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        stop.set()
        thread.join(10)

        rate = placed / pass_s
        print(f"machines={args.machines} units={args.units} load_s={load_s:.2f} "
              f"pass_s={pass_s:.2f} placed={placed} assigned_in_etcd={assigned}")
        print(f"placements_per_s={rate:.0f} raw_txn_keys_per_s={raw_rate:.0f} "
              f"ratio={rate / raw_rate:.2f} engine_rss_mb={rss_mb:.0f}")
        print(f"converge_after_10pct_death_s={converge_s:.2f} moved={on_doomed} "
              f"idle_requests_per_interval={idle_per_interval:.2f} "
              f"one_change_requests={one_change:.1f} one_change_s={change_s:.2f}")
        print(f"one_machine_failover_s={solo_s:.2f} its_units={on_solo}")
        if plain is not None:
            plain_rate, plain_raw = plain
            print(f"tls_placements_per_s={rate:.0f} plain_placements_per_s={plain_rate:.0f} "
                  f"ratio={rate / plain_rate:.2f} tls_raw_txn_keys_per_s={raw_rate:.0f} "
                  f"plain_raw_txn_keys_per_s={plain_raw:.0f} "
                  f"raw_ratio={raw_rate / plain_raw:.2f}")
        etcd.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
