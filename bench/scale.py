"""Many units on the 3-node local example: apply, rolling replaces, listing, down.

    python bench/scale.py [--instances 100,300] [--repeat 3] [--baseline-ref REF]
                          [--rolling1-max 300] [--network 127.79.0.0/24] [--load]

For each instance count N, each round brings up a copy of clusters/local.yaml (agent TTL
5 s, its own state directory and network) without declared units, then times, each as a
fresh `provision` process:

- create:   `provision apply` of a template `job@.service` (`ExecStart=/bin/sleep
            infinity`) with N instances, until all are active;
- roll50:   the template changed, `max_unavailable: 50`, apply until all replaced;
- roll1:    changed again, `max_unavailable: 1` (only while N <= --rolling1-max: slow);
- list:     `fleetctl list-unit-files` and `fleetctl list-units` against the cluster
            (whole commands: list_files is the first read of an idle cluster, whose
            fleetd then starts following etcd; list_files_again the median of 5 after it;
            beside them `fleetctl version`, fleetctl_floor: what any
            command costs before it asks anything, and python_start: `python -c pass`),
            and every page of /units and /state read by one client
            (milliseconds, best of 5), with the CPU the fleetds spent serving one pass
            of both (`pages_cpu_ms`: a figure a busy machine inflates less than time);
- start_glob: `fleetctl start 'job@1??.service'` (up to 100 instances, stopped first);
- down:     `provision down` (every node stops every unit).

After create it also records the memory of the node processes (fleetd, its runner's
helpers, the units; per unit = growth over the idle cluster / N), counts the unit
processes (`sleep`: more than N means a unit ran twice) and samples the busiest fleetd's
CPU use over 10 s with nothing to do. With `--baseline-ref REF` the same rounds run
first on `git archive REF` of this repository (the old code), in the same run, and every
figure gets a ratio (baseline / this tree: > 1 means faster now). Figures are
min/median/max over the rounds.

`--load`: every round runs beside the fault suite's injected load (a CPU-bound process per
core and a writer fsyncing 64 KiB blocks; `tests.support.faults.Load`), for both trees: the
figures of a busy machine, made the same way every time rather than left to the neighbours.
"""

from __future__ import annotations

import argparse
import contextlib
import os
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
PHASES = ("create", "roll50", "roll1", "list_files", "list_files_again", "list_units",
          "fleetctl_floor", "python_start", "units_pages_ms", "state_pages_ms", "pages_cpu_ms",
          "start_glob", "down")
TEMPLATE = """[Unit]
Description=Sleeper %i

[Service]
Environment=GENERATION={generation}
ExecStart=/bin/sleep infinity
"""


class Failed(Exception):
    pass


def run_tool(tree: Path, args: list[str], state_root: Path, timeout: float = 900,
             env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROVISION_STATE": str(state_root), "PYTHONPATH": str(tree),
           **(env_extra or {})}
    # Measured as installed (pip compiles the modules): compiling every module on every
    # command was ~40 ms of each `fleetctl` figure where the caller's environment said not
    # to keep bytecode.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return subprocess.run([sys.executable, *args], env=env, cwd=tree, capture_output=True,
                          text=True, timeout=timeout)


def provision(tree: Path, args: list[str], state_root: Path) -> tuple[float, str]:
    start = time.perf_counter()
    result = run_tool(tree, ["-m", "provision.cli", *args], state_root)
    took = time.perf_counter() - start
    if result.returncode != 0:
        raise Failed(f"provision {' '.join(args[:1])} failed ({result.returncode}): "
                     f"{result.stderr.strip()[-600:]}")
    return took, result.stdout


def write_cluster(work: Path, base: dict, network: str, instances: int, generation: int,
                  max_unavailable: int) -> Path:
    data = dict(base)
    data["network"] = {**base["network"], "cidr": network}
    units_dir = work / "units"
    units_dir.mkdir(exist_ok=True)
    (units_dir / "job@.service").write_text(TEMPLATE.format(generation=generation))
    if instances:
        data["units"] = [{"file": "units/job@.service", "instances": instances,
                          "max_unavailable": max_unavailable}]
    else:
        data.pop("units", None)
    cluster = work / "scale.yaml"
    cluster.write_text(yaml.safe_dump(data, sort_keys=False))
    return cluster


def processes_of(state_root: Path) -> list[tuple[int, int, str]]:
    """(pid, rss_kb, comm) of every process started for the cluster under `state_root`."""
    children: dict[int, list[int]] = {}
    roots = []
    marker = str(state_root).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
        if marker in cmdline:
            roots.append(int(entry))
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        stack.extend(children.get(pid, ()))
    found = []
    for pid in sorted(seen):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss = int(fields.get("VmRSS", "0 kB").split()[0]) if "VmRSS" in fields else 0
        found.append((pid, rss, fields.get("Name", "?").strip()))
    return found


def memory(state_root: Path, instances: int, idle: dict[str, float]) -> dict[str, float]:
    """Process counts and RSS of the cluster; per unit: the growth over the idle cluster
    (`idle`, measured before the units existed) divided by the number of units, for the
    node's own processes (fleetd, runner helpers: `node_kb_per_unit`) and all of it
    (`total_kb_per_unit`, the units' own `sleep` processes included)."""
    procs = processes_of(state_root)
    sleepers = sum(1 for _, _, name in procs if name == "sleep")
    python_mb = sum(rss for _, rss, name in procs if name.startswith("python")) / 1024
    total_mb = sum(rss for _, rss, _ in procs) / 1024
    pythons = sum(1 for _, _, name in procs if name.startswith("python"))
    figures = {"unit_processes": sleepers, "python_processes": pythons,
               "python_rss_mb": python_mb, "total_rss_mb": total_mb}
    if idle:
        per = max(instances, 1)
        figures["node_kb_per_unit"] = (python_mb - idle["python_rss_mb"]) * 1024 / per
        figures["total_kb_per_unit"] = (total_mb - idle["total_rss_mb"]) * 1024 / per
    return figures


def fleetd_pids(state_root: Path) -> list[int]:
    pids = []
    for pid, _, _ in processes_of(state_root):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"fleetd.cli" in cmdline.split(b"\0"):
            pids.append(pid)
    return pids


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    fields = stat[stat.rfind(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(state_root: Path, window: float = 10.0) -> float:
    """The busiest fleetd's CPU use (% of one core) over `window` seconds of nothing to do."""
    pids = fleetd_pids(state_root)
    try:
        before = {pid: cpu_seconds(pid) for pid in pids}
        time.sleep(window)
        return max((cpu_seconds(pid) - before[pid]) / window * 100 for pid in pids)
    except (OSError, ValueError):
        return float("nan")


def fleetctl_env(tree: Path, name: str, state_root: Path) -> dict[str, str]:
    _, out = provision(tree, ["env", name], state_root)
    env = {}
    for line in out.splitlines():
        line = line.removeprefix("export ").strip()
        if "=" in line:
            key, _, value = line.partition("=")
            env[key] = value.strip("'\"")
    return env


def fleetctl(tree: Path, args: list[str], state_root: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = run_tool(tree, ["-m", "fleetd.fleetctl.main", *args], state_root, env_extra=env)
    took = time.perf_counter() - start
    if result.returncode != 0:
        raise Failed(f"fleetctl {' '.join(args)} failed: {result.stderr.strip()[-400:]}")
    return took


def python_start(tree: Path, state_root: Path) -> float:
    """Seconds for the interpreter to start and exit (`python -c pass`), as the commands
    above run: the share of every command figure no code of ours can change."""
    start = time.perf_counter()
    run_tool(tree, ["-c", "pass"], state_root)
    return time.perf_counter() - start


# Pages of 100, as fleet's own fleetctl reads them (ours asks for 1,000 a page; the code
# of a baseline may not, and a fleetd that does not know pageSize ignores it).
API_PAGES = """
import sys, time
from fleetd.fleetctl.client import Client, parse_endpoint
client = Client(parse_endpoint(sys.argv[1]), timeout=30)
best = {}
for _ in range(5):
    for path, key in (("/fleet/v1/units", "units"), ("/fleet/v1/state", "states")):
        start = time.perf_counter()
        items = client.paged(path, key, {"pageSize": "100"})
        took = time.perf_counter() - start
        best[key] = min(best.get(key, took), took)
print(f"{best['units'] * 1000:.1f} {best['states'] * 1000:.1f} {len(items)}")
"""


def api_pages(tree: Path, state_root: Path, env: dict[str, str]
              ) -> tuple[float, float, float]:
    """Milliseconds to read every page of /units and of /state (best of 5), from a client
    already started (no interpreter start-up in the figure), and the fleetds' CPU
    milliseconds per pass of both (their whole use meanwhile, idle work included)."""
    pids = fleetd_pids(state_root)
    try:
        before = sum(cpu_seconds(pid) for pid in pids)
    except (OSError, ValueError):
        before = float("nan")
    result = run_tool(tree, ["-c", API_PAGES, env["FLEETCTL_ENDPOINT"]], state_root)
    try:
        cpu_ms = (sum(cpu_seconds(pid) for pid in pids) - before) * 1000 / 5
    except (OSError, ValueError):
        cpu_ms = float("nan")
    if result.returncode != 0:
        print(f"API pages not measured: {result.stderr.strip()[-400:]}", flush=True)
        return float("nan"), float("nan"), float("nan")
    units_ms, states_ms, _ = result.stdout.split()
    return float(units_ms), float(states_ms), cpu_ms


def one_round(tree: Path, work: Path, base: dict, network: str, instances: int,
              rolling1: bool, figures: dict[str, float]) -> dict[str, float]:
    """Fills `figures` as it goes (a failure keeps what was measured before it)."""
    state_root = work / "state"
    name = base["name"]
    cluster = write_cluster(work, base, network, 0, 1, 50)
    provision(tree, ["up", str(cluster)], state_root)
    try:
        idle = memory(state_root, instances, {})
        cluster = write_cluster(work, base, network, instances, 1, 50)
        figures["create"], _ = provision(tree, ["apply", str(cluster), "--timeout", "600"],
                                         state_root)
        figures.update(memory(state_root, instances, idle))
        figures["idle_cpu_pct"] = idle_cpu(state_root)
        env = fleetctl_env(tree, name, state_root)
        figures["list_files"] = fleetctl(tree, ["list-unit-files", "--no-legend"], state_root,
                                         env)
        figures["list_files_again"] = statistics.median(
            fleetctl(tree, ["list-unit-files", "--no-legend"], state_root, env)
            for _ in range(5))
        figures["list_units"] = fleetctl(tree, ["list-units", "--no-legend"], state_root, env)
        # What any command costs before it asks the cluster anything, measured the same way:
        # a listing's own cost is list_files - fleetctl_floor.
        figures["fleetctl_floor"] = fleetctl(tree, ["version"], state_root, env)
        figures["python_start"] = python_start(tree, state_root)
        (figures["units_pages_ms"], figures["state_pages_ms"],
         figures["pages_cpu_ms"]) = api_pages(tree, state_root, env)
        # Up to 100 instances by glob (job@100 … job@199), stopped and started again; each
        # command waits as fleet's does (until the units are inactive / launched).
        glob = "job@1??.service"
        fleetctl(tree, ["stop", glob], state_root, env)
        figures["start_glob"] = fleetctl(tree, ["start", glob], state_root, env)
        cluster = write_cluster(work, base, network, instances, 2, 50)
        figures["roll50"], _ = provision(tree, ["apply", str(cluster), "--timeout", "900"],
                                         state_root)
        if rolling1:
            cluster = write_cluster(work, base, network, instances, 3, 1)
            figures["roll1"], _ = provision(tree, ["apply", str(cluster), "--timeout", "900"],
                                            state_root)
        figures["down"], _ = provision(tree, ["down", name], state_root)
    finally:
        run_tool(tree, ["-m", "provision.cli", "down", name, "--purge"], state_root)
        shutil.rmtree(state_root, ignore_errors=True)
    return figures


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{min(values):.2f}/{statistics.median(values):.2f}/{max(values):.2f}"


def measure(tree: Path, label: str, counts: list[int], repeat: int, network: str,
            rolling1_max: int) -> dict[int, dict[str, list[float]]]:
    base = yaml.safe_load((REPO / "clusters" / "local.yaml").read_text())
    results: dict[int, dict[str, list[float]]] = {}
    for count in counts:
        results[count] = {}
        for round_no in range(1, repeat + 1):
            work = Path(tempfile.mkdtemp(prefix="pvs", dir="/tmp"))
            figures: dict[str, float] = {}
            try:
                one_round(tree, work, base, network, count, count <= rolling1_max, figures)
            except (Failed, subprocess.TimeoutExpired) as err:
                print(f"{label} N={count} round {round_no}: FAILED: {str(err)[-300:]}",
                      flush=True)
                results[count].setdefault("failed", []).append(1)
                for key, value in figures.items():  # what was measured before it failed
                    results[count].setdefault(key, []).append(float(value))
                continue
            finally:
                shutil.rmtree(work, ignore_errors=True)
            shown = " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in figures.items())
            print(f"{label} N={count} round {round_no}: {shown}", flush=True)
            for key, value in figures.items():
                results[count].setdefault(key, []).append(float(value))
    return results


def archive(ref: str, into: Path) -> Path:
    tree = into / "baseline"
    tree.mkdir()
    data = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True,
                          capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=data, check=True)
    return tree


def table(label: str, results: dict[int, dict[str, list[float]]],
          baseline: dict[int, dict[str, list[float]]] | None) -> None:
    print(f"\n{label}: seconds min/median/max" + (" (ratio = baseline median / this "
                                                  "median)" if baseline else ""))
    print("| instances | " + " | ".join(PHASES) + " | unit procs | python procs | "
          "cluster RSS MB | node KB/unit | total KB/unit | idle fleetd CPU % | failed |")
    print("|---" * (len(PHASES) + 8) + "|")
    for count, figures in results.items():
        cells = []
        for phase in PHASES:
            cell = spread(figures.get(phase, []))
            old = (baseline or {}).get(count, {}).get(phase)
            new = figures.get(phase)
            if old and new:
                cell += f" (x{statistics.median(old) / statistics.median(new):.1f})"
            cells.append(cell)
        extra = [spread(figures.get(k, [])) for k in ("unit_processes", "python_processes",
                                                      "total_rss_mb", "node_kb_per_unit",
                                                      "total_kb_per_unit", "idle_cpu_pct")]
        cells += extra + [str(len(figures.get("failed", [])))]
        print(f"| {count} | " + " | ".join(cells) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", default="100,300",
                        help="comma-separated instance counts (default 100,300)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rolling1-max", type=int, default=300,
                        help="run the max_unavailable 1 replace only up to this many units")
    parser.add_argument("--baseline-ref", default=None,
                        help="also measure `git archive REF` of this repository (old code)")
    parser.add_argument("--network", default="127.79.0.0/24")
    parser.add_argument("--tree", type=Path, default=REPO,
                        help="source tree to measure as `this tree` (default: this checkout)")
    parser.add_argument("--load", action="store_true",
                        help="run every round beside injected load (a busy process per core "
                             "and an fsync writer)")
    args = parser.parse_args()
    if args.load:
        from tests.support.faults import Load

        loaded: contextlib.AbstractContextManager = Load()
    else:
        loaded = contextlib.nullcontext()
    counts = [int(c) for c in args.instances.split(",") if c]
    baseline = None
    scratch = Path(tempfile.mkdtemp(prefix="pvsb", dir="/tmp"))
    try:
        with loaded:
            if args.baseline_ref:
                old_tree = archive(args.baseline_ref, scratch)
                baseline = measure(old_tree, f"baseline {args.baseline_ref}", counts,
                                   args.repeat, args.network, args.rolling1_max)
            results = measure(args.tree.resolve(), "this tree", counts, args.repeat,
                              args.network, args.rolling1_max)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if baseline is not None:
        table(f"baseline {args.baseline_ref}", baseline, None)
    table("this tree", results, baseline)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
