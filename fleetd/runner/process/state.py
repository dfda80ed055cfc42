"""The runner's record of each unit, and the dependency graph between them.

Every field of a `Unit` changes only under the runner's condition lock.
`UnitGraph` indexes the edges that Requires=, BindsTo=, After=
and Before= draw between the loaded units of one runner.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from fleetd.runner.process.procs import Proc, ProcessHost, UnitLog
from fleetd.runner.process.settings import ServiceConfig
from fleetd.status import UnitStatus
from fleetd.unit.names import UnitName
from fleetd.unit.unitfile import UnitFile

MANAGER_IDENT = "fleetd"  # who writes lifecycle lines into a unit's journal


class StartError(Exception):
    """The unit cannot run at all (environment file missing, bad working directory)."""


class Unit:
    """Everything the runner knows about one unit."""

    def __init__(self, name: UnitName, path: Path, log: UnitLog,
                 lock: threading.RLock | None = None) -> None:
        self.name = name
        self.path = path
        self.log = log
        self.content: UnitFile | None = None
        self.config: ServiceConfig | None = None
        self.load_error: str | None = None
        self.active = "inactive"
        self.sub = "dead"
        self.result = "success"
        self.state_since = time.time()  # wall clock of the last change of `active`
        self.job: str | None = None  # "start" | "stop" while one is in progress
        self.stop_requested = False
        self.start_pending = False  # a start asked for while stopping
        self.restart_now = False  # a start asked for while waiting to restart
        self.unload_pending = False
        self.worker: object | None = None  # the ServiceWorker running it, if any
        self.procs: list[Proc] = []
        self.main: Proc | None = None
        self.main_accounted = False
        self.env: dict[str, str] = {}
        self.cwd = "/"
        self.start_times: deque[float] = deque()
        self.notified: UnitStatus | None = None
        # Notified when what its worker waits for changes: its processes, a stop or
        # start request, the runner aborting. Shares the runner's lock.
        self.changed = threading.Condition(lock)

    @property
    def full(self) -> str:
        return self.name.full

    @property
    def load(self) -> str:
        return "error" if self.load_error else "loaded"

    @property
    def description(self) -> str:
        return self.config.description if self.config else self.name.full

    def status(self) -> UnitStatus:
        return UnitStatus(self.load, self.active, self.sub)

    def live_procs(self) -> list[Proc]:
        return [proc for proc in self.procs if not proc.done]

    def say(self, text: str) -> None:
        """A runner lifecycle message in the unit's journal."""
        self.log.write(MANAGER_IDENT, text)


class Owner(Protocol):
    """What a worker needs from the runner (see ProcessRunner)."""

    cond: threading.Condition
    host: ProcessHost
    aborting: bool

    def set_state(self, unit: Unit, active: str, sub: str) -> None: ...
    def start_dependencies(self, unit: Unit, config: ServiceConfig) -> str: ...
    def wait_stop_order(self, unit: Unit) -> None: ...
    def execution_environment(self, unit: Unit, config: ServiceConfig,
                              ) -> tuple[dict[str, str], str]: ...
    def worker_done(self, unit: Unit, restart: bool) -> bool: ...



class UnitGraph:
    """The edges Requires=, BindsTo=, After= and Before= draw between loaded units, indexed
    both ways, so that a start or stop looks only at its own unit's neighbours (a stop
    among 1,000 units must not read the other 999 configurations).

    After= and Before= as in systemd; Requires= and BindsTo= imply the same ordering
    here, so a unit never starts before what it needs is active. Edges may name units
    not loaded (yet): lookups resolve names through the runner's `units` mapping.
    """

    def __init__(self) -> None:
        self._config: dict[str, ServiceConfig] = {}
        self._started_after: dict[str, set[str]] = {}  # name → units that start after it
        self._starts_after: dict[str, set[str]] = {}   # name → Before= of others naming it
        self._needed_by: dict[str, set[str]] = {}      # name → units Requires=/BindsTo= it
        self._bound_by: dict[str, set[str]] = {}       # name → units BindsTo= it

    def update(self, name: str, config: ServiceConfig | None) -> None:
        """`name` now has `config` (None: unloaded, or its file has errors)."""
        old = self._config.pop(name, None)
        if old is not None:
            self._edges(name, old, _discard)
        if config is not None:
            self._config[name] = config
            self._edges(name, config, _add)

    def _edges(self, name: str, config: ServiceConfig, change) -> None:
        for target in {*config.after, *config.requires, *config.binds_to}:
            change(self._started_after, target, name)
        for target in config.before:
            change(self._starts_after, target, name)
        for target in {*config.requires, *config.binds_to}:
            change(self._needed_by, target, name)
        for target in config.binds_to:
            change(self._bound_by, target, name)

    def ordered_after(self, unit: Unit, units: Mapping[str, Unit]) -> list[Unit]:
        """The loaded units `unit` starts after (and stops before)."""
        config = self._config.get(unit.full)
        names = set(config.after + config.requires + config.binds_to) if config else set()
        names |= self._starts_after.get(unit.full, set())
        return [units[name] for name in sorted(names)
                if name in units and units[name] is not unit]

    def ordered_before(self, unit: Unit, units: Mapping[str, Unit]) -> list[Unit]:
        """The loaded units that start after `unit` (and stop before it)."""
        config = self._config.get(unit.full)
        names = set(self._started_after.get(unit.full, set()))
        names |= set(config.before) if config else set()
        return [units[name] for name in sorted(names)
                if name in units and units[name] is not unit]

    def reaches(self, start: Unit, goal: Unit, units: Mapping[str, Unit]) -> bool:
        """True when `start` is (transitively) ordered after `goal`: waiting would
        deadlock."""
        seen: set[Unit] = set()
        todo = [start]
        while todo:
            current = todo.pop()
            for nxt in self.ordered_after(current, units):
                if nxt is goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    def dependents(self, unit: Unit, units: Mapping[str, Unit]) -> list[Unit]:
        """Units that Requires= or BindsTo= `unit` (a stop of `unit` stops them too)."""
        return [units[name] for name in sorted(self._needed_by.get(unit.full, ()))
                if name in units and units[name] is not unit]

    def bound_to(self, unit: Unit, units: Mapping[str, Unit]) -> list[Unit]:
        """Units that BindsTo= `unit`."""
        return [units[name] for name in sorted(self._bound_by.get(unit.full, ()))
                if name in units and units[name] is not unit]


def _add(index: dict[str, set[str]], key: str, name: str) -> None:
    index.setdefault(key, set()).add(name)


def _discard(index: dict[str, set[str]], key: str, name: str) -> None:
    names = index.get(key)
    if names is not None:
        names.discard(name)
        if not names:
            del index[key]
