"""Time `provision up` of the 3-node local example until every node is healthy.

    python bench/up.py [--repeat 3] [--network 127.77.0.0/24]

Each round runs `provision up` as a fresh process (Python start-up included) on a
copy of clusters/local.yaml with its own state directory, and stops the clock
when it returns 0: every node's etcd answers, its fleet machine is registered,
its node units are active, and (up ends with apply) the example's declared
web units are active and announced in etcd. Then `provision down --purge`. The baseline,
measured in the same run, is three bare etcd processes forming the same static
cluster (no fleetd, no supervisor), timed to all three answering a read.
Last line: `up_s=… baseline_s=… ratio=… down_s=…` (best of the rounds). Goal: up_s < 10.

`--compare-tls`: the price of TLS instead. Each round brings the example up twice, as it
is (mutual TLS, the default) and with `tls: false`, and on each times `provision up` and
then `provision apply` of 20 more units (until they are active). Last line:
`up_tls_s=… up_plain_s=… up_ratio=… apply_tls_s=… apply_plain_s=… apply_ratio=…` (best of
the rounds).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from provision.providers.local.etcdbin import find_etcd  # noqa: E402
from provision.providers.local.health import etcd_healthy  # noqa: E402


def provision(args: list[str], state_root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROVISION_STATE": str(state_root), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "provision.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True)


def one_up(cluster: Path, name: str, state_root: Path) -> tuple[float, float]:
    """(up_s, down_s): `provision up` until it returns 0 (nodes healthy, the declared units
    active and announced); then `provision down --purge`."""
    start = time.perf_counter()
    result = provision(["up", str(cluster)], state_root)
    up_s = time.perf_counter() - start
    down_start = time.perf_counter()
    provision(["down", name, "--purge"], state_root)
    down_s = time.perf_counter() - down_start
    if result.returncode != 0:
        raise SystemExit(f"provision up failed ({result.returncode}):\n{result.stderr}")
    return up_s, down_s


def bare_etcd(network: str, work: Path) -> float:
    etcd = find_etcd().etcd
    prefix = network.rsplit(".", 1)[0]
    ips = [f"{prefix}.{i}" for i in (1, 2, 3)]
    initial = ",".join(f"b{i}=http://{ip}:2380" for i, ip in enumerate(ips))
    start = time.perf_counter()
    procs = [subprocess.Popen(
        [etcd, f"--name=b{i}", f"--data-dir={work / f'b{i}'}",
         f"--listen-client-urls=http://{ip}:2379", f"--advertise-client-urls=http://{ip}:2379",
         f"--listen-peer-urls=http://{ip}:2380", f"--initial-advertise-peer-urls=http://{ip}:2380",
         f"--initial-cluster={initial}", "--initial-cluster-state=new", "--log-level=error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i, ip in enumerate(ips)]
    try:
        deadline = time.monotonic() + 30
        pending = list(ips)
        while pending and time.monotonic() < deadline:
            pending = [ip for ip in pending if not etcd_healthy(f"http://{ip}:2379")]
        took = time.perf_counter() - start
        if pending:
            raise SystemExit(f"baseline etcd cluster not healthy: {pending}")
        return took
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


APPLY_UNITS = 20


def tls_price(data: dict, work: Path, repeat: int) -> None:
    """`provision up` and `apply`, with TLS and without, alternating within each round."""
    times: dict[tuple[str, bool], list[float]] = {}
    for round_no in range(1, repeat + 1):
        for tls in (True, False):
            copy = {**data, "tls": tls, "name": f"{data['name']}-{'tls' if tls else 'plain'}"}
            cluster = work / f"{copy['name']}.yaml"
            cluster.write_text(yaml.safe_dump(copy, sort_keys=False))
            more = {**copy, "units": list(copy.get("units") or []) + [
                {"name": "bench@.service", "instances": APPLY_UNITS,
                 "content": "[Service]\nExecStart=/bin/sleep infinity\n"}]}
            bigger = work / f"{copy['name']}-more.yaml"
            bigger.write_text(yaml.safe_dump(more, sort_keys=False))
            state_root = work / "state"
            start = time.perf_counter()
            up = provision(["up", str(cluster)], state_root)
            up_s = time.perf_counter() - start
            start = time.perf_counter()
            applied = provision(["apply", str(bigger)], state_root) if up.returncode == 0 \
                else up
            apply_s = time.perf_counter() - start
            provision(["down", copy["name"], "--purge"], state_root)
            if applied.returncode != 0:
                raise SystemExit(f"up/apply failed ({applied.returncode}):\n{applied.stderr}")
            times.setdefault(("up", tls), []).append(up_s)
            times.setdefault(("apply", tls), []).append(apply_s)
            print(f"round {round_no} {'tls' if tls else 'plain'}: up {up_s:.2f}s, "
                  f"apply of {APPLY_UNITS} units {apply_s:.2f}s", flush=True)
    best = {key: min(values) for key, values in times.items()}
    print(" ".join(f"{step}_tls_s={best[(step, True)]:.2f} "
                   f"{step}_plain_s={best[(step, False)]:.2f} "
                   f"{step}_ratio={best[(step, True)] / best[(step, False)]:.2f}"
                   for step in ("up", "apply")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--network", default="127.77.0.0/24",
                        help="network of the cluster copy (default: the example's own)")
    parser.add_argument("--compare-tls", action="store_true",
                        help="time up and apply with TLS (the default) and with tls: false")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pvb", dir="/tmp"))
    try:
        if args.compare_tls:
            shutil.copytree(REPO / "clusters" / "units", work / "units")
            data = yaml.safe_load((REPO / "clusters" / "local.yaml").read_text())
            data["network"]["cidr"] = args.network
            tls_price(data, work, args.repeat)
            return 0
        shutil.copytree(REPO / "clusters" / "units", work / "units")
        data = yaml.safe_load((REPO / "clusters" / "local.yaml").read_text())
        data["network"]["cidr"] = args.network
        cluster = work / "local.yaml"
        cluster.write_text(yaml.safe_dump(data, sort_keys=False))
        ups, downs, bases = [], [], []
        for round_no in range(1, args.repeat + 1):
            up_s, down_s = one_up(cluster, data["name"], work / "state")
            base_s = bare_etcd(args.network, work / f"bare{round_no}")
            ups.append(up_s)
            downs.append(down_s)
            bases.append(base_s)
            print(f"round {round_no}: up {up_s:.2f}s, down {down_s:.2f}s, "
                  f"bare etcd {base_s:.2f}s", flush=True)
        print(f"up_s={min(ups):.2f} baseline_s={min(bases):.2f} "
              f"ratio={min(ups) / min(bases):.1f} down_s={min(downs):.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
