"""Vagrant machines for real: the lxc box's cold build, `vagrant up` of 3 vagrant-lxc
machines to fleet registered, `vagrant destroy`.

    python bench/vagrant_lxc.py [--no-baseline] [--keep-cache]

Needs root, vagrant + vagrant-lxc, lxc and mmdebstrap (prints the reason and exits 2
otherwise). Builds into fresh temporary caches (never the shared /var/cache/provision),
so "cold" is really cold (pip's own download cache may be warm):

  box        `ensure_box()` on an empty cache: mmdebstrap of the box's Debian base, the
             box layer, packing; then `vagrant box add` into a temporary VAGRANT_HOME;
  payload    the machines' payload on an empty cache: apt resolution, apt-get download,
             the wheelhouse (dependencies + the project's wheel);
  up         `vagrant up` of clusters/vagrant-lxc.yaml (3 machines, in parallel: import,
             boot, payload + user-data upload, offline install, applier) inside a
             network namespace, then until `fleetctl list-machines` in a machine shows 3;
  destroy    `vagrant destroy -f`;
  provision  `provision up` of the same cluster (the same vagrant up, then until every
             etcd is healthy and every fleetd registered, SSH access files, the declared
             units applied and active) and `provision down`;
  baseline   (unless --no-baseline) the same 3 machines `vagrant up --no-provision`
             (boxes booted, nothing installed) and destroyed again, in the same run.

Last line: `box_cold_s=… box_add_s=… payload_cold_s=… up_s=… up_to_fleet_s=…
destroy_s=… provision_up_s=… provision_down_s=… bare_up_s=… up_over_bare=…`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provision.box.build import add_box, ensure_box
from provision.box.payload import CACHE_ENV as PAYLOAD_CACHE_ENV
from provision.box.payload import prepare_machines
from provision.cli.root import main as provision_main
from provision.image.build import CACHE_ENV
from tests.support.etcd import wait_for
from tests.support.vagrant_lxc import lxc_cluster, vagrant_lxc_problem

REPO = Path(__file__).resolve().parent.parent


def timed(call):
    started = time.monotonic()
    value = call()
    return value, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--keep-cache", action="store_true", help="keep the temporary caches")
    args = parser.parse_args()
    problem = vagrant_lxc_problem()
    if problem:
        print(f"bench/vagrant_lxc.py: {problem}", file=sys.stderr)
        return 2
    cache = Path(tempfile.mkdtemp(prefix="provision-bench-box-", dir="/var/tmp"))
    os.environ[CACHE_ENV] = str(cache)
    os.environ[PAYLOAD_CACHE_ENV] = str(cache / "payloads")
    place = Path(tempfile.mkdtemp(prefix="provision-bench-vagrant-"))
    # The cluster's CA and certificates: for the render here and every `provision` run,
    # never root's own state directory.
    os.environ["PROVISION_STATE"] = str(place / "state")
    cluster = None
    figures: dict[str, str] = {}
    try:
        def say(line: str) -> None:
            print(f"  {line}", flush=True)

        print(f"cache: {cache} (temporary)")
        box = ensure_box("lxc", say=say)
        assert box.built
        print(f"box cold build: {box.seconds:.1f}s  ({box.path.stat().st_size / 2**20:.0f} MB)")
        home = place / "vagrant.d"
        _, box_add = timed(lambda: add_box(box, env={"VAGRANT_HOME": str(home)}))
        print(f"vagrant box add: {box_add:.1f}s")
        name = f"vb{os.getpid() % 100000}"
        source = place / f"{name}.yaml"
        source.write_text((REPO / "clusters/vagrant-lxc.yaml").read_text()
                          .replace("\nname: lxc\n", f"\nname: {name}\n"))
        shutil.copytree(REPO / "clusters/units", place / "units")
        assert provision_main(["render", str(source), "-o", str(place / "out")]) == 0
        manifest = place / "out" / "manifest.json"
        payload = prepare_machines(manifest, say=say)
        print(f"payload cold: {payload.seconds:.1f}s ({len(payload.wheels)} wheels, "
              f"{len(payload.debs)} debs, {payload.path.stat().st_size / 2**20:.0f} MB)")
        figures.update(box_cold_s=f"{box.seconds:.1f}", box_add_s=f"{box_add:.1f}",
                       payload_cold_s=f"{payload.seconds:.1f}")
        cluster = lxc_cluster(place, manifest, REPO / "Vagrantfile", f"pb-{name}", home)
        cluster.env["PROVISION_STATE"] = os.environ["PROVISION_STATE"]

        def registered() -> bool:
            out = cluster.ssh("core-01", "sudo fleetctl list-machines --no-legend").stdout
            return len([line for line in out.splitlines() if line.strip()]) == 3

        started = time.monotonic()
        cluster.vagrant("up")
        up = time.monotonic() - started
        wait_for(registered, 180, interval=0.5, message="3 fleet machines")
        to_fleet = time.monotonic() - started
        print(f"vagrant up (3 machines): {up:.1f}s; fleet registered on all 3 after "
              f"{to_fleet:.1f}s")
        _, destroy = timed(lambda: cluster.vagrant("destroy", "-f"))
        print(f"vagrant destroy -f: {destroy:.1f}s")
        figures.update(up_s=f"{up:.1f}", up_to_fleet_s=f"{to_fleet:.1f}",
                       destroy_s=f"{destroy:.1f}")
        started = time.monotonic()
        done = cluster.provision("up", str(source))
        assert done.returncode == 0, done.stderr[-4000:]
        provision_up = time.monotonic() - started
        print(f"provision up (3 machines, units applied and active): {provision_up:.1f}s")
        done, provision_down = timed(lambda: cluster.provision("down", str(source)))
        assert done.returncode == 0, done.stderr[-4000:]
        print(f"provision down: {provision_down:.1f}s")
        figures.update(provision_up_s=f"{provision_up:.1f}",
                       provision_down_s=f"{provision_down:.1f}")
        if not args.no_baseline:
            cluster.ssh_config = None
            _, bare = timed(lambda: cluster.vagrant("up", "--no-provision"))
            cluster.vagrant("destroy", "-f")
            print(f"baseline: vagrant up --no-provision (3 machines): {bare:.1f}s")
            figures.update(bare_up_s=f"{bare:.1f}", up_over_bare=f"{up / bare:.2f}")
        print(" ".join(f"{k}={v}" for k, v in figures.items()))
        return 0
    finally:
        if cluster is not None:
            cluster.teardown()
        shutil.rmtree(place, ignore_errors=True)
        if not args.keep_cache:
            shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
