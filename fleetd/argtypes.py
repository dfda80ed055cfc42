"""Value types of every numeric flag and setting of provision, fleetctl and fleetd.

Each type is a function `text -> value` usable as an argparse `type=`; a bad value raises
`BadValue`, which argparse reports as `argument --flag: <message>` and which is also a
ValueError for settings read from files and the environment. A value is refused when it
is not a finite number (`nan`, `inf`), and when it is negative or zero where that means
nothing — a timeout of 0 or -5 s used to be accepted silently and `nan` never expired.

Durations are seconds (`30`, `2.5`) or a number with a unit (`500ms`, `30s`, `2m`, `1h`),
as in fleet's settings; at most a year, so a timer never overflows.
"""

from __future__ import annotations

import argparse
import math
import re

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import NoReturn

_NUMBER = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_DURATION = re.compile(rf"^\s*({_NUMBER})\s*(ms|s|m|h)?\s*$")
_NON_FINITE = re.compile(r"^\s*[+-]?(?:nan|inf|infinity)\s*(?:ms|s|m|h)?\s*$", re.IGNORECASE)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
MAX_SECONDS = 365 * 24 * 3600.0
_WHOLE = re.compile(r"^\s*[+-]?[0-9]+\s*$")


class BadValue(argparse.ArgumentTypeError, ValueError):
    """A flag or setting value that cannot be used; the message says what is expected."""


def _seconds(text: str, floor: str) -> float:
    text = str(text)
    if _NON_FINITE.match(text):
        raise BadValue(f"{text!r} is not a finite number of seconds")
    match = _DURATION.match(text)
    if not match:
        raise BadValue(f"{text!r} is not a duration such as 30, 2.5, 500ms, 30s or 2m")
    value = float(match[1]) * _UNITS[match[2]]
    if value < 0:
        raise BadValue(f"{text!r} {floor}")
    if not math.isfinite(value) or value > MAX_SECONDS:
        raise BadValue(f"{text!r} is too long (at most {MAX_SECONDS / 86400:g} days)")
    return abs(value)  # -0 is 0


def duration(text: str) -> float:
    """Any duration, 0 included (seconds, or with a unit: 500ms, 30s, 2m, 1h)."""
    return _seconds(text, "must not be negative")


def positive_duration(text: str) -> float:
    """A duration of more than 0 seconds (a timeout, a TTL, an interval)."""
    value = _seconds(text, "must be more than 0 seconds")
    if value <= 0:
        raise BadValue(f"{text!r} must be more than 0 seconds")
    return value


def non_negative_duration(text: str) -> float:
    """A duration where 0 has a meaning (documented at the flag, e.g. "0: wait forever")."""
    return duration(text)


def _whole(text: str) -> int:
    if not _WHOLE.match(str(text)):
        raise BadValue(f"{text!r} is not a whole number")
    return int(text)


def non_negative_int(text: str) -> int:
    value = _whole(text)
    if value < 0:
        raise BadValue(f"{text!r} must not be negative")
    return value


def positive_int(text: str) -> int:
    value = _whole(text)
    if value < 1:
        raise BadValue(f"{text!r} must be 1 or more")
    return value


def port(text: str) -> int:
    value = _whole(text)
    if not 1 <= value <= 65535:
        raise BadValue(f"{text!r} is not a TCP port (1-65535)")
    return value


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line naming the flag (exit 2), like every other
    user error, instead of a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")
