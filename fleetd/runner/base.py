"""The one interface between a fleetd agent and whatever runs its units.

The agent decides (pure reconcile: desired vs. current → tasks); a runner only
executes and reports, in systemd's terms. Two implementations: the process
runner (local clusters and tests) and the systemd runner (real hosts, D-Bus).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from fleetd.status import UnitStatus
from fleetd.unit.unitfile import UnitFile

StateListener = Callable[[str, UnitStatus], None]


class RunnerError(Exception):
    """A runner could not do what it was asked (bad unit, I/O failure); the message says why."""


class Runner(Protocol):
    def load(self, name: str, unit: UnitFile) -> None:
        """Make `name` known with this content (replacing older content; does not start it)."""

    def unload(self, name: str) -> None:
        """Stop `name` if it runs and forget it."""

    def start(self, name: str) -> None:
        """Start a loaded unit; returns at once, progress comes through the state listener."""

    def stop(self, name: str) -> None:
        """Stop a unit; returns at once."""

    def units(self) -> dict[str, UnitStatus]:
        """Every unit this runner knows, with its current state (one batched read)."""

    def subscribe(self, listener: StateListener) -> None:
        """Call `listener(name, status)` on every state change (from any thread)."""

    def status_text(self, name: str) -> str:
        """A `systemctl status`-like report of one unit."""

    def journal(self, name: str, lines: int = 10, follow: bool = False) -> Iterator[str]:
        """The unit's log lines, oldest first; with `follow`, keeps yielding new lines."""

    def shutdown(self) -> None:
        """Stop every unit this runner started and release its resources."""
