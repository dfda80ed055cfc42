"""A unit's state as systemd reports it: the record runners report and the registry stores.

Beside `job.py` and `machine.py` so that the registry, the agent's pure reconcile and
provision's pure convergence check can name it without importing a runner.
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
