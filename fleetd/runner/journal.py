"""Reading a unit's journal (its log file) and the `systemctl status`-like report."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from fleetd.runner.state import Unit

POLL_INTERVAL = 0.1


def tail(path: Path, count: int) -> tuple[list[str], int]:
    """The last `count` complete lines of a file and the offset just after them."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            end = handle.tell()
            start = end
            data = b""
            while start > 0 and data.count(b"\n") <= count:
                start = max(0, start - 65536)
                handle.seek(start)
                data = handle.read(end - start)
    except OSError:
        return [], 0
    cut = data.rfind(b"\n") + 1
    lines = data[:cut].decode("utf-8", "replace").splitlines()
    if start > 0:
        lines = lines[1:]  # the first one may be cut in the middle
    return (lines[-count:] if count > 0 else []), start + cut


def follow(path: Path, offset: int, stop: threading.Event) -> Iterator[str]:
    """Complete lines appended to `path` after `offset`, until `stop` is set."""
    while not stop.is_set():
        try:
            with open(path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                if handle.tell() < offset:
                    offset = 0  # the log was replaced
                handle.seek(offset)
                data = handle.read()
        except OSError:
            data = b""
        complete = data[:data.rfind(b"\n") + 1]
        if complete:
            offset += len(complete)
            yield from complete.decode("utf-8", "replace").splitlines()
        else:
            stop.wait(POLL_INTERVAL)


def status_lines(unit: Unit) -> list[str]:
    """The head of `systemctl status` for one unit (call with the runner's lock held)."""
    lines = [f"\u25cf {unit.full} - {unit.description}"]
    if unit.load_error:
        lines.append(f"   Loaded: error ({unit.path}; {unit.load_error})")
    else:
        lines.append(f"   Loaded: loaded ({unit.path})")
    state = f"{unit.active} ({unit.sub})"
    if unit.active == "failed":
        state = f"failed (Result: {unit.result})"
    since = datetime.fromtimestamp(unit.state_since).astimezone()
    lines.append(f"   Active: {state} since {since.strftime('%a %Y-%m-%d %H:%M:%S %Z')}; "
                 f"{_ago(time.time() - unit.state_since)} ago")
    main = unit.main
    if main is not None and main.main_pid:
        what = _comm(main.main_pid) if main.exit is None else main.exit.describe()
        lines.append(f" Main PID: {main.main_pid} ({what})")
    return lines


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    parts = []
    for size, label in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            parts.append(f"{seconds // size}{label}")
            seconds %= size
    if seconds or not parts:
        parts.append(f"{seconds}s")
    return " ".join(parts[:2])


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return "?"
