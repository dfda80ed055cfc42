"""Figures of `provider: nspawn` (as root): image build, `up` of 3 machines, `down`, memory.

    python bench/nspawn.py [--cold] [--repeat 1]

- image: `ensure_image()` as `provision up` calls it — cached (a lookup), or, with
  `--cold`, built anew, both layers (`force`).
- up_s: `provision up` of a copy of clusters/nspawn.yaml as a fresh process, first boot
  (new overlays), until it returns 0: every machine's systemd up, etcd healthy, fleetd
  registered, web@1-2 and their sidekicks active in the machines' systemd and announced.
- off_s: `provision down` (every machine powered off, overlays kept); reboot_up_s: `up`
  again after it: warm.
- down_s: `provision down --purge` (power-off, namespace and overlays removed).
  With --repeat N, each figure is printed as min/median/max (a power-off that waits
  out a timeout shows in the max).
- rss_mib / pss_mib per machine: summed over the processes in the machine's cgroups.
- baseline, same run: `provision up` / `down --purge` of clusters/local.yaml (processes).
Last line: `image_s=… up_s=… reboot_up_s=… down_s=… pss_mib=… local_up_s=… ratio=…`.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from provision.image import ensure_image  # noqa: E402
from provision.providers.nspawn import layout  # noqa: E402
from provision.providers.nspawn.machines import Machine  # noqa: E402
from provision.providers.nspawn.provider import state_dir_of  # noqa: E402


def provision(args: list[str], state_root: Path, cwd: Path) -> tuple[float, str]:
    env = {**os.environ, "PROVISION_STATE": str(state_root), "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "provision.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"provision {' '.join(args)} failed ({done.returncode}):\n"
                         f"{done.stdout}{done.stderr}")
    return took, done.stdout


def memory(machine: Machine) -> tuple[float, float]:
    """(RSS, PSS) in MiB of every process of the machine."""
    rss = pss = 0
    for pid in machine.pids():
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss / 1024, pss / 1024


def copy_cluster(example: str, base: Path, name: str) -> Path:
    data = yaml.safe_load((REPO / "clusters" / example).read_text())
    data["name"] = name
    if example == "local.yaml":
        data["network"]["cidr"] = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.0/24"
    path = base / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{min(values):.2f}/{statistics.median(values):.2f}/{max(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="build the image anew first")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="pvn-bench-"))
    shutil.copytree(REPO / "clusters" / "units", base / "units")
    state = base / "state"
    made: list[str] = []  # taken down whatever happens
    try:
        start = time.perf_counter()
        image = ensure_image(force=args.cold, say=lambda line: print(f"  image: {line}"))
        image_s = time.perf_counter() - start
        print(f"image {image.key}: {'built' if image.built else 'cached'} in {image_s:.2f}s")
        ups, offs, reboots, downs, pss_all, rss_all, local_ups, local_downs = (
            [] for _ in range(8))
        for _ in range(args.repeat):
            name = f"bn{random.randrange(16**5):05x}"
            path = copy_cluster("nspawn.yaml", base, name)
            made.append(name)
            up_s, _ = provision(["up", str(path), "--timeout", "600"], state, base)
            machines = [Machine(layout.machine_name(name, f"core-0{i}"),
                                state_dir_of(name, state) / "nodes" / f"core-0{i}")
                        for i in (1, 2, 3)]
            mem = [memory(m) for m in machines]
            off_s, _ = provision(["down", name], state, base)
            reboot_s, _ = provision(["up", str(path), "--timeout", "600"], state, base)
            down_s, _ = provision(["down", name, "--purge"], state, base)
            ups.append(up_s)
            offs.append(off_s)
            reboots.append(reboot_s)
            downs.append(down_s)
            rss_all += [r for r, _ in mem]
            pss_all += [p for _, p in mem]
            print(f"nspawn: up {up_s:.2f}s, down {off_s:.2f}s, up after power-off "
                  f"{reboot_s:.2f}s, down --purge {down_s:.2f}s, per machine RSS "
                  f"{max(r for r, _ in mem):.0f} MiB, PSS {max(p for _, p in mem):.0f} MiB")
            local_name = f"bl{random.randrange(16**5):05x}"
            local = copy_cluster("local.yaml", base, local_name)
            made.append(local_name)
            local_up, _ = provision(["up", str(local)], state, base)
            local_down, _ = provision(["down", local_name, "--purge"], state, base)
            local_ups.append(local_up)
            local_downs.append(local_down)
            print(f"local (baseline): up {local_up:.2f}s, down {local_down:.2f}s")
        print(f"image_s={image_s:.2f} image_built={image.built} up_s={spread(ups)} "
              f"off_s={spread(offs)} reboot_up_s={spread(reboots)} down_s={spread(downs)} "
              f"rss_mib={max(rss_all):.0f} pss_mib={max(pss_all):.0f} "
              f"local_up_s={spread(local_ups)} local_down_s={spread(local_downs)} "
              f"ratio={min(ups) / min(local_ups):.1f}")
    finally:
        for name in made:  # a failed run leaves no machine or namespace behind
            subprocess.run([sys.executable, "-m", "provision.cli", "down", name, "--purge"],
                           env={**os.environ, "PROVISION_STATE": str(state),
                                "PYTHONPATH": str(REPO)}, cwd=base, capture_output=True,
                           stdin=subprocess.DEVNULL, check=False)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
