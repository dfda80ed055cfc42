"""Reading N unit states from a real systemd: the runner's one batched call vs. a call per unit.

    python bench/systemd_states.py [--units 500] [--repeat 5] [--timeout 600]

Boots Debian's systemd in a systemd-nspawn container (tests/support/systemd_container.py;
needs root; prints the reason and exits 2 where it cannot run) and hands it N trivial
services (`bench-<i>.service`, `ExecStart=/bin/sleep 100000`) through fleetd's systemd
runner: `load` every unit (write + LinkUnitFiles; the runner's one Reload comes with the
first start), then `start` every unit, timed, then waits (condition with a deadline) until
all are active and the runner's state signals have gone quiet.

Then, interleaved, `--repeat` rounds of:
  batched   `runner.units()`: one ListUnitsByNames call for all N units;
  per-unit  the baseline, what fleet's agents did: for each unit `manager.LoadUnit(name)`,
            `bus.get(systemd1, path)` (pydbus introspects the object: one more call) and
            its `ActiveState` and `SubState` properties (a Properties.Get call each);
  getall    for reference, go-systemd's GetUnitProperties: one Properties.GetAll call per
            unit on the object path computed locally (exactly one round trip per unit).
Every read is checked to say active/running for all N. Wall time (perf_counter) and this
process's CPU time (process_time: every thread, so GDBus's worker and the runner's signal
and refresh threads too) are medians over the rounds. Then every unit is unloaded through
the runner (timed), the runner shut down and the container stopped.

Baseline for load+start, in the same run: N other units (`base-<i>.service`) loaded with a
`Reload` after each load — what the runner did before it coalesced reloads — then started
and waited for in the same way, then unloaded.
Last line: `units=N batched_read_s=… per_unit_read_s=… ratio=… load_start_s=…
load_start_reload_each_s=… load_start_ratio=…` (ratio = per_unit_read_s / batched_read_s,
load_start_ratio = load_start_reload_each_s / load_start_s, wall).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleetd.runner.base import RunnerError, UnitStatus
from fleetd.runner.systemd import SystemdRunner
from fleetd.unit.unitfile import parse_unit_file
from tests.support.systemd_container import (
    SystemdContainer,
    new_container_name,
    start_systemd_container,
    systemd_container_problem,
)

UNIT_TEXT = "[Service]\nExecStart=/bin/sleep 100000\n"
SYSTEMD = "org.freedesktop.systemd1"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
QUIET_S = 1.0  # no state change for this long: the runner's signal backlog is drained

States = dict[str, tuple[str, str]]  # unit -> (ActiveState, SubState)


def unit_path(name: str) -> str:
    """systemd's object path for a unit name (sd-bus label escaping), as go-systemd builds it."""
    label = "".join(c if c.isascii() and c.isalnum() else f"_{ord(c):02x}" for c in name)
    return f"/org/freedesktop/systemd1/unit/{label or '_'}"


def timed(read: Callable[[], States]) -> tuple[float, float, States]:
    """(wall_s, cpu_s, result) of one call."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = read()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return wall, cpu, result


def check(what: str, names: list[str], states: States) -> None:
    wrong = {n: states.get(n) for n in names if states.get(n) != ("active", "running")}
    if wrong:
        sample = dict(list(wrong.items())[:5])
        raise SystemExit(f"{what}: {len(wrong)} of {len(names)} units not active/running, "
                         f"e.g. {sample}")


def wait_all_active(runner: SystemdRunner, names: list[str], deadline: float) -> None:
    while True:
        states = runner.units()
        pending = [n for n in names if states[n] != UnitStatus("loaded", "active", "running")]
        if not pending:
            return
        failed = [n for n in pending if states[n].active == "failed"]
        if failed or time.monotonic() > deadline:
            raise SystemExit(f"{len(pending)} of {len(names)} units not active "
                             f"(e.g. {pending[0]}: {states[pending[0]]}; failed: {len(failed)})")
        time.sleep(0.2)


def wait_quiet(last_change: list[float], deadline: float) -> None:
    """Until the runner reported no state change for QUIET_S (its signal thread is idle)."""
    while time.monotonic() - last_change[0] < QUIET_S:
        if time.monotonic() > deadline:
            print("note: state signals still arriving at the deadline; measuring anyway",
                  flush=True)
            return
        time.sleep(0.1)


def compare_reads(runner: SystemdRunner, names: list[str], repeat: int,
                  glib: Any) -> dict[str, float]:  # glib: gi.repository.GLib
    """The median wall time of each way of reading every unit's state, `repeat` rounds."""
    units = len(names)
    bus, manager = runner.bus, runner.manager
    if str(manager.LoadUnit(names[0])) != unit_path(names[0]):
        raise SystemExit(f"object path of {names[0]}: systemd says "
                         f"{manager.LoadUnit(names[0])}, unit_path says {unit_path(names[0])}")

    def batched() -> States:
        return {n: (s.active, s.sub) for n, s in runner.units().items()}

    def per_unit() -> States:
        found = {}
        for name in names:
            obj = bus.get(SYSTEMD, manager.LoadUnit(name))
            found[name] = (obj.ActiveState, obj.SubState)
        return found

    def getall() -> States:
        found = {}
        args = glib.Variant("(s)", (UNIT_IFACE,))
        reply = glib.VariantType.new("(a{sv})")
        for name in names:
            props, = bus.con.call_sync(SYSTEMD, unit_path(name),
                                       "org.freedesktop.DBus.Properties", "GetAll",
                                       args, reply, 0, -1, None).unpack()
            found[name] = (props["ActiveState"], props["SubState"])
        return found

    reads = {"batched": batched, "per-unit": per_unit, "getall": getall}
    walls: dict[str, list[float]] = {k: [] for k in reads}
    cpus: dict[str, list[float]] = {k: [] for k in reads}
    for _ in range(repeat):
        for what, read in reads.items():
            wall, cpu, states = timed(read)
            check(what, names, states)
            walls[what].append(wall)
            cpus[what].append(cpu)
    med = {k: statistics.median(v) for k, v in walls.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpus.items()}
    labels = {
        "batched": "batched read (runner.units(): 1 ListUnitsByNames)",
        "per-unit": "per-unit read (LoadUnit + bus.get + 2 Get: 4 calls/unit)",
        "getall": "per-unit GetAll (go-systemd GetUnitProperties: 1 call/unit)",
    }
    for what, label in labels.items():
        print(f"{label}: wall {med[what]:.4f}s cpu {med_cpu[what]:.4f}s "
              f"({med[what] / units * 1e6:.0f} us/unit wall; median of {repeat}: "
              + " ".join(f"{w:.4f}" for w in walls[what]) + ")", flush=True)
    return med


def bench(container: SystemdContainer, units: int, repeat: int, timeout: float) -> None:
    version = container.run("systemctl", "--version").stdout.splitlines()[0]
    print(f"container {container.name}: {version} ({container.boot_state})", flush=True)
    names = [f"bench-{i}.service" for i in range(units)]
    unit = parse_unit_file(UNIT_TEXT)
    deadline = time.monotonic() + timeout
    try:
        runner = SystemdRunner(container.units_dir, bus_address=container.bus_address)
    except RunnerError as err:  # no pydbus/PyGObject, or the bus does not answer
        print(f"systemd runner: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    from gi.repository import GLib  # there: SystemdRunner imported it

    loaded: list[str] = []
    try:
        last_change = [time.monotonic()]
        lock = threading.Lock()

        def changed(_name: str, _status: UnitStatus) -> None:
            with lock:
                last_change[0] = time.monotonic()

        runner.subscribe(changed)

        wall0, cpu0 = time.perf_counter(), time.process_time()
        for name in names:
            runner.load(name, unit)
            loaded.append(name)
        load_s, load_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        print(f"load {units} units: wall {load_s:.3f}s cpu {load_cpu:.3f}s", flush=True)
        wall1, cpu1 = time.perf_counter(), time.process_time()
        for name in names:
            runner.start(name)
        wait_all_active(runner, names, deadline)
        start_s, start_cpu = time.perf_counter() - wall1, time.process_time() - cpu1
        print(f"start {units} units until all active: wall {start_s:.3f}s "
              f"cpu {start_cpu:.3f}s", flush=True)
        load_start_s = load_s + start_s
        print(f"load+start: wall {load_start_s:.3f}s cpu {load_cpu + start_cpu:.3f}s",
              flush=True)
        wait_quiet(last_change, min(deadline, time.monotonic() + 60))

        med = compare_reads(runner, names, repeat, GLib)

        wall2, cpu2 = time.perf_counter(), time.process_time()
        while loaded:
            runner.unload(loaded[-1])
            loaded.pop()
        runner.units()  # the unloads' one Reload
        print(f"unload {units} units: wall {time.perf_counter() - wall2:.3f}s "
              f"cpu {time.process_time() - cpu2:.3f}s", flush=True)

        base_names = [f"base-{i}.service" for i in range(units)]
        wall3 = time.perf_counter()
        for name in base_names:
            runner.load(name, unit)
            loaded.append(name)
            runner.manager.Reload()  # the baseline: a Reload per load
        for name in base_names:
            runner.start(name)
        wait_all_active(runner, base_names, deadline)
        base_s = time.perf_counter() - wall3
        print(f"baseline load (Reload each) + start: wall {base_s:.3f}s", flush=True)
        wait_quiet(last_change, min(deadline, time.monotonic() + 60))
        while loaded:
            runner.unload(loaded[-1])
            loaded.pop()
        runner.units()
        print(f"units={units} batched_read_s={med['batched']:.4f} "
              f"per_unit_read_s={med['per-unit']:.4f} "
              f"ratio={med['per-unit'] / med['batched']:.1f} load_start_s={load_start_s:.2f} "
              f"load_start_reload_each_s={base_s:.2f} "
              f"load_start_ratio={base_s / load_start_s:.1f}")
    finally:
        for name in reversed(loaded):  # only when something above failed
            try:
                runner.unload(name)
            except RunnerError as err:
                print(f"unload {name}: {err}", file=sys.stderr)
        runner.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="deadline for loading, starting and activating all units")
    args = parser.parse_args()
    problem = systemd_container_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    # Under /tmp and named after the container (as the test fixture does), so a later
    # start sweeps it up if this run is killed before its cleanup.
    name = new_container_name()
    units_dir = Path(tempfile.mkdtemp(prefix=f"{name}-units-"))
    container = None
    try:
        boot0 = time.perf_counter()
        container = start_systemd_container(units_dir, name=name)
        print(f"container booted in {time.perf_counter() - boot0:.2f}s", flush=True)
        try:
            bench(container, args.units, args.repeat, args.timeout)
        except RunnerError as err:
            print(f"systemd runner: {err}", file=sys.stderr)
            return 1
    finally:
        if container is not None:
            container.stop()
        shutil.rmtree(units_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
