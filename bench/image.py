"""The machine image: cold build, project-layer rebuild, warm (cached) lookup, first boot.

    python bench/image.py [--lookups 20] [--no-boot] [--keep]

Needs root, mmdebstrap and systemd-nspawn (prints the reason and exits 2 otherwise).
Builds into a fresh temporary cache (never the shared /var/cache/provision/images), so
"cold" is really cold:

  cold     `ensure_image()` on an empty cache: mmdebstrap of the Debian base, the
           dependencies' wheelhouse (pip's own download cache may be warm), the project
           layer (copy of the base, offline pip install, boot unit);
  layer    the project layer alone, as after a change to the project's sources: the
           image directory removed, base and wheelhouse kept;
  warm     `ensure_image()` with the image cached (median of --lookups calls): what every
           `provision up` pays;
  boot     (unless --no-boot) a machine booted from the image with a rendered one-node
           user-data in its overlay, as a provider boots it: nspawn start -> systemd
           `running`, and -> fleetd registered in its etcd (the boot unit applied the
           user-data, etcd2 and fleet started).

Last line: `cold_s=… layer_s=… warm_s=… cold_over_warm=… image_mb=… boot_running_s=…
boot_fleet_s=…`. The temporary cache is removed unless --keep.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provision.cli.root import main as provision_main
from provision.image.build import CACHE_ENV, ensure_image, image_problem
from tests.support.etcd import wait_for
from tests.support.machine import booted
from tests.support.systemd_container import systemd_container_problem

IP = "172.17.8.101"
CLUSTER = """\
name: bench
provider: vagrant
network: {cidr: 172.17.8.0/24, start: 101}
nodes: {count: 1, name_prefix: core}
etcd: {discovery: {mode: static, cluster_token: bench-etcd}}
fleet: {public_ip: $public_ipv4, agent_ttl: 5s}
"""
ADDRESS_UNIT = f"""\
[Unit]
DefaultDependencies=no
Before=provision-cloudinit.service network.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/ip address add {IP}/32 dev lo
[Install]
WantedBy=multi-user.target
"""


def du_mb(path: Path) -> float:
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True).stdout
    return int(out.split()[0]) / 1024


def boot(image, work: Path) -> tuple[float, float]:  # Image
    (work / "cluster.yaml").write_text(CLUSTER)
    assert provision_main(["render", str(work / "cluster.yaml"), "-o", str(work / "out")]) == 0
    upper = work / "machine" / "upper"
    (upper / "var/lib/provision").mkdir(parents=True)
    shutil.copy(work / "out" / "user-data-1", upper / "var/lib/provision/user-data")
    (upper / "etc").mkdir()
    (upper / "etc/environment").write_text(f"COREOS_PRIVATE_IPV4={IP}\n")
    wants = upper / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants.parent / "bench-address.service").write_text(ADDRESS_UNIT)
    (wants / "bench-address.service").symlink_to("../bench-address.service")
    started = time.monotonic()
    with booted(image, upper=upper) as machine:
        running = time.monotonic() - started
        wait_for(lambda: IP in machine.run("fleetctl", "list-machines", "--no-legend",
                                           check=False).stdout, 120, interval=0.1,
                 message="fleet machine registered")
        fleet = time.monotonic() - started
    return running, fleet


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lookups", type=int, default=20)
    parser.add_argument("--no-boot", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary cache")
    args = parser.parse_args()
    problem = image_problem() or (None if args.no_boot else systemd_container_problem())
    if problem:
        print(f"bench/image.py: {problem}", file=sys.stderr)
        return 2
    cache = Path(tempfile.mkdtemp(prefix="provision-bench-images-", dir="/var/tmp"))
    os.environ[CACHE_ENV] = str(cache)
    work = Path(tempfile.mkdtemp(prefix="provision-bench-image-work-"))
    try:
        def say(line: str) -> None:
            print(f"  {line}", flush=True)

        print(f"cache: {cache} (temporary)")
        cold = ensure_image(say=say)
        assert cold.built
        print(f"cold build: {cold.seconds:.1f}s  image {cold.key}, "
              f"{du_mb(cold.rootfs):.0f} MB")
        shutil.rmtree(cold.directory)
        layer = ensure_image(say=say)
        print(f"project layer rebuild: {layer.seconds:.1f}s")
        lookups = []
        for _ in range(args.lookups):
            found = ensure_image()
            assert not found.built
            lookups.append(found.seconds)
        warm = statistics.median(lookups)
        print(f"warm lookup: median {warm * 1000:.1f} ms over {len(lookups)} "
              f"(max {max(lookups) * 1000:.1f} ms)")
        figures = {"cold_s": f"{cold.seconds:.1f}", "layer_s": f"{layer.seconds:.1f}",
                   "warm_s": f"{warm:.4f}", "cold_over_warm": f"{cold.seconds / warm:.0f}",
                   "image_mb": f"{du_mb(layer.rootfs):.0f}"}
        if not args.no_boot:
            running, fleet = boot(layer, work)
            print(f"first boot: systemd running after {running:.1f}s, fleetd registered "
                  f"(user-data applied at boot, etcd2 + fleet up) after {fleet:.1f}s")
            figures.update(boot_running_s=f"{running:.1f}", boot_fleet_s=f"{fleet:.1f}")
        print(" ".join(f"{k}={v}" for k, v in figures.items()))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
