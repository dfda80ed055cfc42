"""A unit's state as systemd reports it, and the record of it that agents write and the
registry stores.

Beside `job.py` and `machine.py` so that the registry, the agent's pure reconcile and
provision's pure convergence check can name them without importing a runner or etcd.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UnitStatus:
    """systemd's three state columns for one unit."""

    load: str = "not-found"  # loaded | not-found | error
    active: str = "inactive"  # active | activating | deactivating | inactive | failed
    sub: str = "dead"  # running | start-pre | start-post | exited | dead | failed | ...

    @property
    def is_active(self) -> bool:
        return self.active in ("active", "activating", "reloading")


@dataclass(frozen=True)
class UnitStateRecord:
    """What one machine's agent last reported of one unit (the registry stores these)."""

    name: str
    machine: str
    hash: str
    status: UnitStatus
    launched: bool = False  # the agent started it (and has not stopped it), whatever systemd says
