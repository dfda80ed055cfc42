"""A buggy local client against fleetd's API: thousands of idle connections, held, then
closed at once, while the machine's lease and other requests are watched.

    python bench/api_connections.py --connections 3000 [--busy 2]

Starts a real etcd and one real fleetd (process runner, agent TTL 5 s). A prober asks
GET /fleet/v1/machines on a fresh unix-socket connection every 50 ms throughout.
Phases: baseline (no idle connections), held (N connections open, half with a request
head that never ends), after close (all N closed at once), burst (N opened and closed
at once without holding). Each phase prints the prober's latency (p50/p95/max) and how
many probes failed, with the ratio of its p95 to the baseline's. Then whether the
machine's key ever disappeared (a lost lease), fleetd's peak thread count and RSS, and
how much its log grew (tracebacks counted). `--busy N` runs N CPU-bound processes
throughout (one per core makes the machine as busy as a shared one gets). Last line:

    lease_lost=<0|1> failed_probes=<n> held_p95_ratio=<x> after_close_p95_ratio=<y> ...
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleetd.api.server import raise_open_files_limit
from tests.support.api_storm import (
    IdleStorm,
    MachineKeyWatch,
    Prober,
    process_rss_mb,
    process_threads,
    summary,
)
from tests.support.etcd import EtcdServer
from tests.support.fleet import FleetHarness

TTL = 5


class Peaks:
    """fleetd's thread count and RSS, sampled every 100 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.threads, self.rss_mb = pid, 0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.threads = max(self.threads, process_threads(self.pid))
            self.rss_mb = max(self.rss_mb, process_rss_mb(self.pid))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def phase(prober: Prober, name: str, start: float, end: float,
          baseline_p95: float | None) -> dict:
    figures = summary(prober.between(start, end))
    shown = " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in figures.items())
    ratio = ""
    if baseline_p95 and "p95_ms" in figures:
        ratio = f" p95_vs_baseline={figures['p95_ms'] / baseline_p95:.2f}"
    print(f"{name:12s} {shown}{ratio}", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--hold", type=float, default=5.0, help="seconds to hold them open")
    parser.add_argument("--busy", type=int, default=0, help="CPU-bound processes meanwhile")
    args = parser.parse_args()
    raise_open_files_limit(args.connections + 1024)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(args.busy)]

    etcd = EtcdServer().start()
    base = Path(tempfile.mkdtemp(prefix="bapi-"))
    harness = FleetHarness(etcd.url, "/bench-api/", base, ttl=TTL)
    try:
        fleetd = harness.start("n1")
        machine = fleetd.machine_id
        sock = fleetd.state_dir / "fleet.sock"
        watch = MachineKeyWatch(harness.etcd, harness.registry.keys.machine(machine))
        log_before = fleetd.log_path.stat().st_size
        peaks = Peaks(fleetd.process.pid)
        prober = Prober(sock).start()
        marks = {"baseline": time.monotonic()}
        time.sleep(3.0)  # the baseline: the same probes with no idle connections

        marks["held"] = time.monotonic()
        storm = IdleStorm(sock, args.connections).open()
        time.sleep(args.hold)
        server_closed = storm.closed_by_server()
        marks["close"] = time.monotonic()
        storm.close()
        time.sleep(5.0)

        marks["burst"] = time.monotonic()
        burst = IdleStorm(sock, args.connections).open()
        burst.close()
        time.sleep(5.0)
        marks["settle"] = time.monotonic()
        time.sleep(TTL + 1.0)  # a lease lost during the storm shows by now
        marks["end"] = time.monotonic()
        prober.stop()
        peaks.stop()

        deletes = watch.poll()
        same = watch.same_registration()
        watch.close()
        print(f"busy_processes={args.busy} connections={args.connections} "
              f"open_s={storm.open_s:.2f} "
              f"close_s={storm.close_s:.3f} refused={storm.refused} "
              f"burst_open_s={burst.open_s:.2f} burst_refused={burst.refused} "
              f"closed_by_server_while_held={server_closed}")
        base_fig = phase(prober, "baseline", marks["baseline"], marks["held"], None)
        base_p95 = base_fig.get("p95_ms")
        held = phase(prober, "held", marks["held"], marks["close"], base_p95)
        after = phase(prober, "after_close", marks["close"], marks["burst"], base_p95)
        burst_fig = phase(prober, "burst", marks["burst"], marks["settle"], base_p95)
        settle = phase(prober, "settle", marks["settle"], marks["end"], base_p95)
        failed = sum(f.get("failed", 0) for f in (base_fig, held, after, burst_fig, settle))
        log_text = fleetd.log_path.read_text(errors="replace")
        grew = fleetd.log_path.stat().st_size - log_before
        tracebacks = log_text.count("Traceback")
        for line in fleetd.log_path.read_bytes()[log_before:].decode(
                errors="replace").splitlines()[:5]:
            print(f"fleetd log: {line}")
        lost = int(deletes > 0 or not same)
        print(f"machine_key_deletes={deletes} same_registration={same} "
              f"fleetd_peak_threads={peaks.threads} fleetd_peak_rss_mb={peaks.rss_mb:.0f} "
              f"log_grew_bytes={grew} tracebacks={tracebacks}")

        def ratio(figures: dict) -> str:
            if base_p95 and "p95_ms" in figures:
                return f"{figures['p95_ms'] / base_p95:.2f}"
            return "n/a"
        print(f"lease_lost={lost} failed_probes={failed} "
              f"baseline_p95_ms={base_p95 or 0:.1f} "
              f"held_p95_ratio={ratio(held)} after_close_p95_ratio={ratio(after)} "
              f"burst_p95_ratio={ratio(burst_fig)} "
              f"worst_probe_ms={max(f.get('max_ms', 0.0) for f in (held, after, burst_fig)):.0f}")
    finally:
        for process in busy:
            process.kill()
            process.wait()
        harness.close()
        etcd.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
