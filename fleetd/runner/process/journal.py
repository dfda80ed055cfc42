"""Reading a unit's journal (its log file and the rotated ones) and the `systemctl
status`-like report.

A unit's log rotates by size (procs.UnitLog): `<log>` is the current file, `<log>.1`
the one before, and so on. The last lines of a journal are read back across those
files; following keeps the current file open and, once it has been renamed away (a
rotation) and read to its end, goes on with the new one from its start, so no line is
lost or repeated.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from io import BufferedReader
from pathlib import Path

from fleetd.runner.process.state import Unit

POLL_INTERVAL = 0.1
_CHUNK = 65536


def rotated(path: Path) -> list[Path]:
    """The rotated files of the log at `path`, newest first (`<log>.1`, `<log>.2`, …)."""
    prefix = path.name + "."
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    numbered = [(int(name[len(prefix):]), name) for name in names
                if name.startswith(prefix) and name[len(prefix):].isdigit()]
    return [path.with_name(name) for _, name in sorted(numbered)]


def _last_lines(handle: BufferedReader, count: int) -> tuple[list[str], int]:
    """The last `count` complete lines of an open file and the offset just after them."""
    handle.seek(0, os.SEEK_END)
    start = handle.tell()
    chunks: list[bytes] = []
    newlines = 0
    while start > 0 and newlines <= count:  # backwards, each byte read once
        size = min(_CHUNK, start)
        start -= size
        handle.seek(start)
        chunks.append(handle.read(size))
        newlines += chunks[-1].count(b"\n")
    data = b"".join(reversed(chunks))
    cut = data.rfind(b"\n") + 1
    lines = data[:cut].decode("utf-8", "replace").splitlines()
    if start > 0:
        lines = lines[1:]  # the first one may be cut in the middle
    return (lines[-count:] if count > 0 else []), start + cut


def _open(path: Path) -> BufferedReader | None:
    try:
        return open(path, "rb")  # the caller closes it
    except OSError:
        return None


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


def _read_back(path: Path, count: int) -> tuple[list[str], BufferedReader | None, int]:
    """The last `count` lines of the journal at `path` (current file first, then the
    rotated ones as far as needed), the current file left open and the offset in it just
    after those lines."""
    handle = _open(path)
    lines, offset = _last_lines(handle, count) if handle is not None else ([], 0)
    if count <= 0 or len(lines) >= count:
        return lines, handle, offset
    current = _identity(os.fstat(handle.fileno())) if handle is not None else None
    for older in rotated(path):
        old = _open(older)
        if old is None:
            continue
        with old:
            if _identity(os.fstat(old.fileno())) == current:
                continue  # rotated since we opened it: its lines are read already
            more, _ = _last_lines(old, count - len(lines))
        lines = more + lines
        if len(lines) >= count:
            break
    return lines[-count:], handle, offset


def tail(path: Path, count: int) -> tuple[list[str], int]:
    """The last `count` complete lines of the journal at `path`, across rotations, and
    the offset just after them in the current file."""
    lines, handle, offset = _read_back(path, count)
    if handle is not None:
        handle.close()
    return lines, offset


def read_journal(path: Path, count: int, keep_following: bool,
                 stop: threading.Event) -> Iterator[str]:
    """The last `count` lines; with `keep_following`, then every line appended after
    them, across rotations, until `stop` is set or the iterator is closed."""
    lines, handle, offset = _read_back(path, count)
    try:
        yield from lines
        if keep_following:
            yield from _follow(path, handle, offset, stop)
    finally:
        if handle is not None:
            handle.close()


class JournalLines:
    """An iterator over a journal's lines that any thread may cancel (`cancel()`): the
    API's worker does when its client leaves, while a reader thread still waits for the
    journal's next line, which could take forever on a quiet unit."""

    def __init__(self, path: Path, count: int, keep_following: bool,
                 stop: threading.Event) -> None:
        self._stop = stop
        self._lines = read_journal(path, count, keep_following, stop)

    def __iter__(self) -> JournalLines:
        return self

    def __next__(self) -> str:
        return next(self._lines)

    def cancel(self) -> None:
        self._stop.set()  # the reader ends within one poll interval

    def close(self) -> None:
        self._stop.set()
        try:
            self._lines.close()
        except ValueError:
            pass  # being read on another thread: it ends by itself, having seen the stop


def _follow(path: Path, handle: BufferedReader | None, offset: int,
            stop: threading.Event) -> Iterator[str]:
    try:
        while not stop.is_set():
            if handle is None:
                handle, offset = _open(path), 0  # its first line is still to come
                if handle is None:
                    stop.wait(POLL_INTERVAL)
                    continue
            handle.seek(offset)
            data = handle.read()
            complete = data[:data.rfind(b"\n") + 1]
            if complete:
                offset += len(complete)
                yield from complete.decode("utf-8", "replace").splitlines()
                continue
            mine = os.fstat(handle.fileno())
            if _identity_of(path) == _identity(mine):
                if mine.st_size < offset:
                    offset = 0  # truncated in place
                    continue
                stop.wait(POLL_INTERVAL)
                continue
            # Renamed away (rotated): the writer closed it before the rename, so what is
            # left in it is all there will be, a last line without its end included.
            handle.seek(offset)
            rest = handle.read()
            if rest:
                yield from rest.decode("utf-8", "replace").splitlines()
            handle.close()
            handle, offset = _successor(path, _identity(mine)), 0
    finally:
        if handle is not None:
            handle.close()


def _identity_of(path: Path) -> tuple[int, int] | None:
    try:
        return _identity(os.stat(path))
    except OSError:
        return None


def _successor(path: Path, done: tuple[int, int]) -> BufferedReader | None:
    """The file written after the one identified by `done`, open; None when that is the
    current file and it does not exist yet. Rotating again while we look is fine:
    files are matched by identity, not name. If `done` was already dropped, every file
    left is newer, so the oldest comes next."""
    for _ in range(10):
        chain = [(p, _identity_of(p)) for p in [*reversed(rotated(path)), path]]
        chain = [(p, ident) for p, ident in chain if ident is not None]
        found = next((i for i, (_, ident) in enumerate(chain) if ident == done), None)
        later = chain[found + 1:] if found is not None else chain
        if not later:
            return None
        candidate, ident = later[0]
        handle = _open(candidate)
        if handle is not None:
            if _identity(os.fstat(handle.fileno())) == ident:
                return handle
            handle.close()
    return None


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
