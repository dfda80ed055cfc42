"""What the API's unit reads cost, served from the in-memory view vs. read from etcd.

    python bench/api_reads.py [--units 100,1000] [--tls] [--repeat 5]

Starts a real etcd (mutual TLS with --tls, as the local example runs it), stores N units
(each assigned to one of 3 machines and reported by two), and runs the API's handlers in
this process (no HTTP: the figure is fleetd's own cost) two ways in the same run: with a
`UnitsView` (what fleetd serves) and reading etcd directly (the fallback, and the old
code's only path). For each: every page of /units and of /state, and GET of 100 units
one by one, in milliseconds (best of --repeat), with the etcd requests and keys each
costs; then the ratio direct / view (> 1: the view is faster). Also the CPU the view
spends following a burst of 5 writes per unit (jobs, assignments, three states each).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleetd.api import Api
from fleetd.registry.etcd import Etcd
from fleetd.registry.registry import Registry, encode
from fleetd.registry.view import UnitsView
from fleetd.unit.unitfile import content_hash, parse_unit_file, serialize
from tests.support.etcd import EtcdServer, wait_for


def stored(server: EtcdServer, units: int) -> Registry:
    registry = Registry(Etcd([server.url], tls=server.tls), f"/bench-{uuid.uuid4().hex[:8]}/")
    keys, ops = registry.keys, registry.etcd.ops
    unit = parse_unit_file("[Unit]\nDescription=Sleeper %i\n[Service]\n"
                           "ExecStart=/bin/sleep infinity\n")
    digest = content_hash(unit)
    state = encode({"hash": digest, "load": "loaded", "active": "active", "sub": "running",
                    "launched": True})
    writes = [ops.put(keys.unit(digest), serialize(unit))]
    writes += [ops.put(keys.machine(f"m{i}"), encode({"id": f"m{i}"})) for i in range(3)]
    for i in range(units):
        name = f"job@{i}.service"
        writes += [ops.put(keys.job(name), encode({"name": name, "hash": digest,
                                                   "desired": "launched"})),
                   ops.put(keys.assignment(f"m{i % 3}", name),
                           encode({"hash": digest, "desired": "launched"})),
                   ops.put(keys.state(name, f"m{i % 3}"), state),
                   ops.put(keys.state(name, f"m{(i + 1) % 3}"), state)]
    assert registry.commit_batches([], writes) == 0
    return registry


def all_pages(api: Api, route: str) -> int:
    count, token = 0, None
    while True:
        query = {"nextPageToken": [token]} if token else {}
        reply = api.list_units(query) if route == "units" else api.list_states(query)
        count += len(reply.body[route])
        token = reply.body.get("nextPageToken")
        if token is None:
            return count


def measure(api: Api, registry: Registry, units: int, repeat: int) -> dict[str, tuple]:
    names = [f"job@{i}.service" for i in range(0, units, max(1, units // 100))][:100]
    calls = {"units pages": lambda: all_pages(api, "units"),
             "state pages": lambda: all_pages(api, "states"),
             "100 units": lambda: [api.get_unit(n) for n in names]}
    figures = {}
    for label, call in calls.items():
        call()  # unit bodies read once per fleetd
        best = float("inf")
        for _ in range(repeat):
            requests, keys = registry.etcd.requests, registry.etcd.keys_read
            start = time.perf_counter()
            call()
            best = min(best, time.perf_counter() - start)
            requests, keys = (registry.etcd.requests - requests,
                              registry.etcd.keys_read - keys)
        figures[label] = (best * 1000, requests, keys)
    return figures


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def follow_cost(server: EtcdServer, units: int, with_view: bool) -> float:
    """Process CPU (ms) while another client writes 5 keys per unit, with or without a
    view following them."""
    reader = Registry(Etcd([server.url], tls=server.tls), f"/burst-{uuid.uuid4().hex[:8]}/")
    writer = Registry(Etcd([server.url], tls=server.tls), reader.keys.prefix)
    view = UnitsView(reader) if with_view else None
    try:
        if view is not None:
            view.start()
            wait_for(lambda: view.live, 30, message="view built")
        keys, ops = writer.keys, writer.etcd.ops
        rounds: list[list] = [[], [], [], [], []]
        for i in range(units):
            name = f"job@{i}.service"
            rounds[0].append(ops.put(keys.job(name), encode({"name": name, "hash": "h",
                                                             "desired": "launched"})))
            rounds[1].append(ops.put(keys.assignment("m1", name),
                                     encode({"hash": "h", "desired": "launched"})))
            for n, sub in enumerate(("start", "running", "exited"), 2):
                rounds[n].append(ops.put(keys.state(name, "m1"), encode(
                    {"hash": "h", "load": "loaded", "active": "active", "sub": sub})))
        before = cpu_seconds()
        for batch in rounds:
            writer.commit_batches([], batch, in_flight=1)
        if view is not None:
            target = writer.etcd.revision()
            wait_for(lambda: view.revision >= target, 120, message="view caught up")
        return (cpu_seconds() - before) * 1000
    finally:
        if view is not None:
            view.close()
        reader.etcd.close()
        writer.etcd.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", default="100,1000")
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    server = EtcdServer(tls=args.tls).start()
    try:
        for units in [int(n) for n in args.units.split(",") if n]:
            registry = stored(server, units)
            view = UnitsView(registry)
            view.start()
            try:
                wait_for(lambda v=view: v.live, 30, message="view built")
                direct = measure(Api(registry, None, "m0"), registry, units, args.repeat)
                viewed = measure(Api(registry, None, "m0", view=view), registry, units,
                                 args.repeat)
            finally:
                view.close()
                registry.etcd.close()
            for label in direct:
                (d_ms, d_req, d_keys), (v_ms, v_req, v_keys) = direct[label], viewed[label]
                print(f"N={units} {label}: view {v_ms:.1f} ms ({v_req} requests, {v_keys} "
                      f"keys), direct {d_ms:.1f} ms ({d_req} requests, {d_keys} keys), "
                      f"ratio x{d_ms / v_ms:.1f}", flush=True)
            without = min(follow_cost(server, units, False) for _ in range(2))
            with_view = min(follow_cost(server, units, True) for _ in range(2))
            print(f"N={units} following {5 * units} writes: {with_view - without:.0f} ms of "
                  f"CPU ({(with_view - without) * 1000 / (5 * units):.0f} us per event)",
                  flush=True)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
