"""A job: the scheduling view of a submitted unit (name, content hash, desired state, constraints).

The [X-Fleet] options are parsed once, when the unit is submitted, into the
frozen `FleetOptions` a job carries; nothing re-reads the unit text to decide.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from fleetd.unit.xfleet import FleetOptions


class JobState(str, Enum):
    """fleet's desired (target) states, in lifecycle order."""

    INACTIVE = "inactive"
    LOADED = "loaded"
    LAUNCHED = "launched"

    @classmethod
    def parse(cls, text: str) -> JobState:
        try:
            return cls(text)
        except ValueError:
            raise ValueError(f"unknown unit state {text!r}; use inactive, loaded or "
                             "launched") from None


@dataclass(frozen=True)
class Job:
    name: str
    hash: str  # SHA-1 hex of the canonical unit text (fleetd.unit.unitfile.content_hash)
    desired: JobState
    options: FleetOptions = field(default_factory=FleetOptions)

    @property
    def is_global(self) -> bool:
        return self.options.global_
