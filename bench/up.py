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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--network", default="127.77.0.0/24",
                        help="network of the cluster copy (default: the example's own)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pvb", dir="/tmp"))
    try:
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
