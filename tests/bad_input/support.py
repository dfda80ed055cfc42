"""Shared helpers of the bad-input suite: the case tally, a hang bound, the error checks."""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, settings

TALLY = {"cases": 0}

# Reproducible in CI: the same examples every run, no per-example deadline (the bound
# below is a hard hang guard instead).
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def tally(n: int = 1) -> None:
    TALLY["cases"] += n


class CaseTimeout(Exception):
    """A case ran past its bound: the product hung on bad input."""


@contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Raise CaseTimeout in the main thread if the body spends more than `seconds` of CPU
    (a spinning hang), or ten times that of wall time (a hang that waits). CPU time, not
    wall time, is the bound that matters: on a busy machine a correct refusal can wait
    for the CPU far longer than it computes."""
    def expired(signum, frame):  # signal handler signature
        raise CaseTimeout(f"no answer within {seconds} s of CPU: a hang on bad input")

    timers = ((signal.SIGPROF, signal.ITIMER_PROF, seconds),
              (signal.SIGALRM, signal.ITIMER_REAL, seconds * 10))
    saved = []
    for signum, timer, limit in timers:
        previous = signal.signal(signum, expired)
        remaining, _ = signal.setitimer(timer, limit)
        saved.append((signum, timer, previous, remaining))
    try:
        yield
    finally:
        for signum, timer, previous, remaining in saved:
            signal.setitimer(timer, 0)
            signal.signal(signum, previous)
            if remaining:  # an outer bound was running: re-arm what is left of it
                signal.setitimer(timer, remaining)


@dataclass
class Outcome:
    code: int
    out: str
    err: str


def assert_clear_refusal(result: Outcome, file: str, fragment: str | None = None) -> None:
    """Exit 2, no traceback, and every stderr line a positioned `file...: message` line."""
    assert result.code == 2, (result.code, result.err)
    assert "Traceback" not in result.err, result.err
    lines = result.err.splitlines()
    assert lines, "a refusal must say why"
    for line in lines:
        assert line.startswith(f"{file}:"), line
        assert len(line.split(": ", 1)) == 2 and line.split(": ", 1)[1].strip(), line
    if fragment is not None:
        assert fragment in result.err, result.err


def snapshot(path: Path) -> dict[str, tuple[int, str]] | None:
    """Every file under `path` with its mode and content hash (None if it is absent)."""
    if not path.exists():
        return None
    found = {}
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = Path(root) / name
            found[str(full.relative_to(path))] = (
                full.stat().st_mode, hashlib.sha256(full.read_bytes()).hexdigest())
    return found
