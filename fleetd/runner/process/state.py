"""The runner's record of each unit, and the dependency graph between them.

Every field of a `Unit` changes only under the runner's condition lock.
`ordered_after` and `reaches` read the graph that Requires=, BindsTo=, After=
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

    def __init__(self, name: UnitName, path: Path, log: UnitLog) -> None:
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
        self.worker: threading.Thread | None = None
        self.procs: list[Proc] = []
        self.main: Proc | None = None
        self.main_accounted = False
        self.env: dict[str, str] = {}
        self.cwd = "/"
        self.start_times: deque[float] = deque()
        self.notified: UnitStatus | None = None

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



def ordered_after(unit: Unit, units: Mapping[str, Unit]) -> list[Unit]:
    """The loaded units `unit` starts after (and stops before).

    After= and Before= as in systemd; Requires= and BindsTo= imply the same
    ordering here, so a unit never starts before what it needs is active.
    """
    config = unit.config
    names = set(config.after + config.requires + config.binds_to) if config else set()
    found = [units[name] for name in sorted(names) if name in units]
    found += [other for other in units.values()
              if other.config is not None and unit.full in other.config.before
              and other not in found]
    return [other for other in found if other is not unit]


def reaches(start: Unit, goal: Unit, units: Mapping[str, Unit]) -> bool:
    """True when `start` is (transitively) ordered after `goal`: waiting would deadlock."""
    seen: set[Unit] = set()
    todo = [start]
    while todo:
        current = todo.pop()
        for nxt in ordered_after(current, units):
            if nxt is goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False


def dependents(unit: Unit, units: Mapping[str, Unit]) -> list[Unit]:
    """Units that Requires= or BindsTo= `unit` (a stop of `unit` stops them too)."""
    return [other for other in units.values()
            if other is not unit and other.config is not None
            and unit.full in other.config.requires + other.config.binds_to]
