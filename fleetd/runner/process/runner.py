"""The process runner: units as real child processes, where there is no systemd.

Used by local clusters and tests. It speaks systemd's language (states, the
`[Service]` settings that matter for fleet units, BindsTo=/Requires=/After=
between units of one node, a journal per unit) without needing systemd.

Threads: one host loop forks and watches every process (procs.py), one worker
per active unit runs its state machine (service.py), one notifier delivers
state changes to subscribers in order. All unit state sits under one condition
lock; nothing blocks on a process while holding it.

Orphan safety: one supervisor process per runner (supervisor.py) starts every
command in its own session and process group, is the child subreaper for
everything the commands spawn, and SIGKILLs all of it when fleetd dies
(parent-death signal), so a SIGKILLed fleetd never leaves units running on a
node; no process per unit besides the unit's own.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path

from fleetd.runner.base import RunnerError, StateListener, UnitStatus
from fleetd.runner.process.environment import NodeEnvironment
from fleetd.runner.process.journal import JournalLines, status_lines, tail
from fleetd.runner.process.procs import LogLimits, OpenLogs, ProcessHost, UnitLog
from fleetd.runner.process.service import ServiceWorker
from fleetd.runner.process.settings import ConfigError, ServiceConfig, parse_service_config
from fleetd.runner.process.state import Unit, UnitGraph
from fleetd.runner.process.supervisor import below, process_table
from fleetd.unit.names import UnitNameError, parse_unit_name
from fleetd.unit.unitfile import UnitFile, serialize

_LOG = logging.getLogger(__name__)
_STATUS_JOURNAL_LINES = 10
# Unit logs kept open at once: a running unit's log is written at its start and stop and
# whenever it prints; beyond this many, a write opens the file for itself.
OPEN_LOGS = 512


class ProcessRunner:
    """A `Runner` (fleetd.runner.base) that runs units as child processes.

    `state_dir` holds `units/<unit>` (the loaded unit files) and `logs/<unit>.log`
    (each unit's journal). `env` is the environment every unit starts from (by
    default PATH, LANG, LC_ALL and TZ of this process). With `root_dir`, absolute
    paths in EnvironmentFile= and WorkingDirectory= are looked up inside it (it
    acts as the node's `/`); paths that resolve outside it are refused. Logs rotate
    by size (`log_limits`, default 10 MiB, 3 old files kept).
    """

    def __init__(self, state_dir: Path, machine_id: str, hostname: str,
                 env: Mapping[str, str] | None = None, root_dir: Path | None = None,
                 log_limits: LogLimits | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.machine_id = machine_id
        self.hostname = hostname
        self.log_limits = log_limits or LogLimits()
        self._units_dir = self.state_dir / "units"
        self._logs_dir = self.state_dir / "logs"
        try:
            self._units_dir.mkdir(parents=True, exist_ok=True)
            self._logs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunnerError(f"cannot create the runner state directory {self.state_dir}: "
                              f"{err.strerror or err}") from None
        self._node = NodeEnvironment(machine_id, hostname, env, root_dir)
        # One lock for all unit state; each unit's worker waits on its own condition of it
        # (`Unit.changed`), so an event wakes one worker, not all of them.
        self._lock = threading.RLock()
        self.cond = threading.Condition(self._lock)
        self.aborting = False
        self._closing = False
        self._closed = threading.Event()
        self._followers: weakref.WeakSet[threading.Event] = weakref.WeakSet()  # journals read
        self._units: dict[str, Unit] = {}
        self._graph = UnitGraph()
        self._listeners: list[StateListener] = []
        self._workers: set[ServiceWorker] = set()
        # Notified when the last worker ends (shutdown waits for that, and only that).
        self._idle = threading.Condition(self._lock)
        self._open_logs = OpenLogs(OPEN_LOGS)
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self.host = ProcessHost(self.cond)
        self._notifier = threading.Thread(target=self._notify_loop, name="fleetd-runner-events",
                                          daemon=True)
        self._notifier.start()

    # -- the Runner interface ---------------------------------------------------------------

    def load(self, name: str, unit: UnitFile) -> None:
        parsed = _unit_name(name)
        if not isinstance(unit, UnitFile):
            raise RunnerError(f"cannot load {name}: expected a UnitFile, got "
                              f"{type(unit).__name__}")
        try:
            config: ServiceConfig | None = parse_service_config(unit, parsed, self._node.context)
            error = None
        except ConfigError as err:
            config, error = None, str(err)
        text = serialize(unit)
        with self.cond:
            if self._closing:
                raise RunnerError(f"cannot load {name}: the process runner is shut down")
            path = self._units_dir / parsed.full
            _write_atomically(path, text)
            record = self._units.get(parsed.full)
            if record is None:
                record = Unit(parsed, path, UnitLog(self._logs_dir / f"{parsed.full}.log",
                                                    self.hostname, self.log_limits,
                                                    self._open_logs),
                              self._lock)
                self._units[parsed.full] = record
            changed = record.content != unit
            if changed or record.unload_pending:
                # A new version (a rolling replace, an unload and load) is a new unit, as
                # systemd forgets an unloaded unit's start limit: only restarts of one
                # version count towards it.
                record.start_times.clear()
            record.content, record.config, record.load_error = unit, config, error
            self._graph.update(parsed.full, config)
            record.unload_pending = False
            if changed:
                for warning in (config.warnings if config else ()):
                    record.say(f"{parsed.full}: {warning}")
                if error:
                    record.say(f"{parsed.full}: {error}")
            self._emit(record)

    def unload(self, name: str) -> None:
        """Stop `name` (returns at once) and forget it once stopped; unknown names are fine."""
        with self.cond:
            unit = self._units.get(name)
            if unit is None:
                return
            self._stop_locked(unit, set())
            unit.unload_pending = True
            if unit.worker is None:
                self._forget_locked(unit)

    def start(self, name: str) -> None:
        with self.cond:
            unit = self._units.get(name)
            if unit is None:
                raise RunnerError(f"Unit {name} not found.")
            self._start_locked(unit)

    def stop(self, name: str) -> None:
        """Stop `name` and what Requires=/BindsTo= it; a unit not loaded is already stopped."""
        with self.cond:
            unit = self._units.get(name)
            if unit is not None:
                self._stop_locked(unit, set())

    def units(self) -> dict[str, UnitStatus]:
        with self.cond:
            return {name: unit.status() for name, unit in self._units.items()}

    def subscribe(self, listener: StateListener) -> None:
        with self.cond:
            self._listeners.append(listener)

    def status_text(self, name: str) -> str:
        with self.cond:
            unit = self._units.get(name)
            if unit is None:
                raise RunnerError(f"Unit {name} does not exist.")
            lines = status_lines(unit)
            log_path = unit.log.path
        recent, _ = tail(log_path, _STATUS_JOURNAL_LINES)
        return "\n".join(lines + [""] + recent) + "\n"

    def journal(self, name: str, lines: int = 10, follow: bool = False) -> Iterator[str]:
        """The last `lines` journal lines; with `follow`, new lines as they come, until
        the iterator is closed or the runner shuts down."""
        parsed = _unit_name(name)
        stop = threading.Event()
        with self.cond:
            if self._closed.is_set():
                stop.set()
            self._followers.add(stop)
        return JournalLines(self._logs_dir / f"{parsed.full}.log", max(lines, 0), follow, stop)

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop every unit (dependents first, each within its TimeoutStopSec=, all within
        `timeout`; then SIGKILL), and end every thread of the runner."""
        deadline = time.monotonic() + timeout
        with self.cond:
            if not self._closing:
                self._closing = True
                seen: set[Unit] = set()
                for unit in list(self._units.values()):
                    self._stop_locked(unit, seen)
            self._idle.wait_for(lambda: not self._workers,
                                max(0.0, deadline - time.monotonic()))
            if self._workers:
                _LOG.warning("runner shutdown: units still stopping after %ss; killing them",
                             timeout)
                self.aborting = True
                self.cond.notify_all()
                for unit in self._units.values():
                    unit.changed.notify_all()
                self._idle.wait_for(lambda: not self._workers, 30.0)
            if self._workers:
                _LOG.error("runner shutdown: %d unit workers did not end", len(self._workers))
        self.host.close()
        if threading.current_thread() is not self._notifier:
            self._events.put(None)
            self._notifier.join(timeout=10)
        with self.cond:
            self._closed.set()
            followers = list(self._followers)
            logs = [unit.log for unit in self._units.values()]
        for stop in followers:
            stop.set()
        for log in logs:
            log.close()

    # -- extras (diagnostics and tests) -----------------------------------------------------

    def __enter__(self) -> ProcessRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def main_pid(self, name: str) -> int | None:
        """The pid of the unit's running main process, if any."""
        with self.cond:
            unit = self._units.get(name)
            main = unit.main if unit is not None else None
            if main is None or main.exit is not None:
                return None
            return main.main_pid

    def processes(self, name: str) -> list[int]:
        """Every live process the unit's commands started (one scan of /proc)."""
        with self.cond:
            unit = self._units.get(name)
            procs = unit.live_procs() if unit is not None else []
            groups = {proc.pgid for proc in procs if proc.pgid}
        table = process_table()
        members = {pid for pid, (_, pgid, _) in table.items() if pgid in groups}
        return sorted(members | below(members, table))

    # -- what the unit workers call (under self.cond) ---------------------------------------

    def set_state(self, unit: Unit, active: str, sub: str) -> None:
        if (unit.active, unit.sub) == (active, sub):
            return
        if unit.active != active:
            unit.state_since = time.time()
        unit.active, unit.sub = active, sub
        ended = active in ("inactive", "failed")
        if unit.job == "start" and (ended or active == "active" or sub == "auto-restart"):
            unit.job = None
        if unit.job == "stop" and ended:
            unit.job = None
        self._emit(unit)
        self.cond.notify_all()
        # As systemd: a BindsTo= unit goes down with this one only when this one has no
        # start queued (a restart, or new content being started) and the bound unit is
        # already active; one still starting sees the outcome in start_dependencies.
        if ended and not unit.start_pending and unit.job != "start":
            for other in self._graph.bound_to(unit, self._units):
                if (other.worker is not None and not other.stop_requested
                        and other.active == "active"):
                    other.say(f"{other.full}: Bound to unit {unit.full}, but unit isn't "
                              "active.")
                    self._stop_locked(other, set())

    def start_dependencies(self, unit: Unit, config: ServiceConfig) -> str:
        """Start what `unit` pulls in and wait for what it is ordered after.

        Returns ok, dependency (a Requires=/BindsTo= unit did not become active) or
        stop (a stop or shutdown came first). Requires= and BindsTo= imply ordering
        here: the dependency must be active before this unit starts.
        """
        hard = set(config.requires + config.binds_to)
        with self.cond:
            for dep in config.pulls_in():
                other = self._units.get(dep)
                if other is None or other.unload_pending:
                    if dep in hard:
                        unit.say(f"{unit.full}: {dep} is not loaded here; starting without it.")
                    continue
                try:
                    self._start_locked(other)
                except RunnerError as err:
                    unit.say(f"{unit.full}: cannot start {dep}: {err}")
            waits = []
            for other in self._graph.ordered_after(unit, self._units):
                if self._graph.reaches(other, unit, self._units):
                    unit.say(f"{unit.full}: Found ordering cycle with {other.full}; not waiting "
                             "for it.")
                else:
                    waits.append(other)
            while any(other.job == "start" or other.start_pending for other in waits):
                if self.aborting or unit.stop_requested:
                    return "stop"
                self.cond.wait(1.0)
            if self.aborting or unit.stop_requested:
                return "stop"
            for dep in sorted(hard):
                other = self._units.get(dep)
                if other is not None and not other.unload_pending and other.active != "active":
                    unit.say(f"{unit.full}: {dep} is {other.active} ({other.sub}), but this unit "
                             "needs it active.")
                    return "dependency"
        return "ok"

    def wait_stop_order(self, unit: Unit) -> None:
        """Stop in reverse order: wait while units ordered after `unit` are stopping."""
        with self.cond:
            later = [other for other in self._graph.ordered_before(unit, self._units)
                     if not self._graph.reaches(unit, other, self._units)]
            while not self.aborting and any(other.job == "stop" for other in later):
                self.cond.wait(1.0)

    def execution_environment(self, unit: Unit, config: ServiceConfig,
                              ) -> tuple[dict[str, str], str]:
        return self._node.prepare(config, lambda text: unit.say(f"{unit.full}: {text}"))

    def worker_done(self, unit: Unit, restart: bool) -> bool:
        """A worker finished one round; True if it should go round again (a new start)."""
        if restart:
            unit.job = "start"
            return True
        if unit.start_pending and not self._closing and not unit.unload_pending:
            unit.start_pending = False
            unit.stop_requested = False
            unit.job = "start"
            return True
        unit.worker = None
        unit.job = None
        unit.start_pending = False
        unit.log.close()  # until it is written again: an idle unit holds no file open
        if unit.unload_pending:
            self._forget_locked(unit)
        self.cond.notify_all()
        return False

    # -- internals --------------------------------------------------------------------------

    def _start_locked(self, unit: Unit) -> None:
        if self._closing:
            raise RunnerError(f"cannot start {unit.full}: the process runner is shut down")
        if unit.unload_pending:
            raise RunnerError(f"Unit {unit.full} is being unloaded.")
        if unit.load_error:
            raise RunnerError(f"Unit {unit.full} failed to load: {unit.load_error}")
        if unit.worker is not None:
            if unit.stop_requested:
                unit.start_pending = True
            elif unit.sub == "auto-restart":
                unit.restart_now = True
            unit.changed.notify_all()
            self.cond.notify_all()
            return
        unit.job = "start"
        unit.stop_requested = False
        unit.start_pending = False
        unit.restart_now = False
        worker = ServiceWorker(self, unit)
        # Nothing joins a worker: shutdown waits until the set of workers is empty, each
        # leaves it as its last act. (Thread.start() returns once the new thread runs;
        # bare threads started by the hundred in one agent pass all waited for the
        # interpreter at once, with the lease renewer and etcd's threads behind them.)
        unit.worker = worker
        self._workers.add(worker)
        try:
            threading.Thread(target=self._worker_main, args=(worker,), daemon=True,
                             name=f"fleetd-unit-{unit.full}").start()
        except RuntimeError as err:
            unit.worker, unit.job = None, None
            self._workers.discard(worker)
            raise RunnerError(f"cannot start {unit.full}: {err}") from None

    def _worker_main(self, worker: ServiceWorker) -> None:
        try:
            worker.run()
        finally:
            with self.cond:
                self._workers.discard(worker)
                self.cond.notify_all()
                if not self._workers:
                    self._idle.notify_all()

    def _stop_locked(self, unit: Unit, seen: set[Unit]) -> None:
        if unit in seen:
            return
        seen.add(unit)
        if unit.worker is not None:
            unit.start_pending = False
            unit.restart_now = False
            if not unit.stop_requested:
                unit.stop_requested = True
                unit.job = "stop"
                if unit.active == "active":
                    # Going down from now on: a state read before the worker gets to it
                    # (new content loaded and started over a running unit) must not say
                    # "active" of a process that is about to stop.
                    sub = "stop" if unit.config and unit.config.exec_stop else "stop-sigterm"
                    self.set_state(unit, "deactivating", sub)
            unit.changed.notify_all()
            self.cond.notify_all()
        for other in self._graph.dependents(unit, self._units):
            self._stop_locked(other, seen)

    def _emit(self, unit: Unit) -> None:
        status = unit.status()
        if status != unit.notified:
            unit.notified = status
            self._events.put((unit.full, status))

    def _forget_locked(self, unit: Unit) -> None:
        if self._units.get(unit.full) is unit:
            del self._units[unit.full]
            self._graph.update(unit.full, None)
        unit.log.close()
        try:
            unit.path.unlink()
        except OSError:
            pass
        unit.notified = None
        self._events.put((unit.full, UnitStatus()))

    def _notify_loop(self) -> None:
        while True:
            item = self._events.get()
            if item is None:
                return
            with self.cond:
                listeners = list(self._listeners)
            for listener in listeners:
                try:
                    listener(*item)
                except Exception:  # a listener's bug must not stop the others
                    _LOG.exception("state listener %r failed", listener)


def _unit_name(name: str):
    try:
        return parse_unit_name(name)
    except UnitNameError as err:
        raise RunnerError(str(err)) from None


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        raise RunnerError(f"cannot write unit file {path}: {err.strerror or err}") from None
