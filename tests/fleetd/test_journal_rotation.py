"""A unit's journal is read back across its log's rotations: the last N lines span the
current and rotated files, and a follower gets every line in order, exactly once,
however many rotations happen between two of its reads (within the files kept)."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from fleetd.runner.process.journal import read_journal, rotated, tail
from fleetd.runner.process.procs import LogLimits, OpenLogs, UnitLog, _timestamp
from tests.support.etcd import wait_for


def number(line: str) -> int:
    return int(line.rsplit(": ", 1)[1].split()[0])


def write(log: UnitLog, first: int, count: int) -> None:
    for i in range(first, first + count):
        log.write_lines("chatty[7]", [f"{i} " + "x" * 40])


LIMITS = {
    "keep-3": LogLimits(max_bytes=4096, keep=3),
    "keep-1": LogLimits(max_bytes=4096, keep=1),
    "keep-0": LogLimits(max_bytes=4096, keep=0),
}


# A writer that opens its file for each write, and one that keeps it open (the runner's).
WRITERS = {"reopens": lambda: None, "kept-open": lambda: OpenLogs(4)}


@pytest.mark.parametrize("writer", WRITERS.values(), ids=WRITERS)
@pytest.mark.parametrize("limits", LIMITS.values(), ids=LIMITS)
def test_the_last_lines_span_the_rotated_files(tmp_path, limits, writer):
    path = tmp_path / "chatty.service.log"
    log = UnitLog(path, "core-01", limits, writer())
    write(log, 1, 400)  # ~40 KiB: many rotations
    assert [p.name for p in rotated(path)] == [f"{path.name}.{i}"
                                               for i in range(1, limits.keep + 1)]
    kept = path.read_text().splitlines()
    for older in rotated(path):
        kept = older.read_text().splitlines() + kept
    numbers = [number(line) for line in kept]
    assert numbers == list(range(numbers[0], 401)), "the files hold one unbroken run"
    for count in (1, 10, len(kept) - 1, len(kept), len(kept) + 50):
        lines, _ = tail(path, count)
        assert [number(line) for line in lines] == numbers[-count:], count
    assert tail(path, 0) == ([], path.stat().st_size)
    log.close()


@pytest.mark.parametrize("writer", WRITERS.values(), ids=WRITERS)
@pytest.mark.parametrize("limits", [LIMITS["keep-3"], LIMITS["keep-0"]], ids=["keep-3",
                                                                              "keep-0"])
def test_a_follower_gets_every_line_once_across_rotations(tmp_path, limits, writer):
    path = tmp_path / "chatty.service.log"
    log = UnitLog(path, "core-01", limits, writer())
    write(log, 1, 30)
    line_bytes = path.stat().st_size / 30
    stop = threading.Event()
    seen: list[int] = []
    lines = read_journal(path, 5, True, stop)

    def follow() -> None:
        for line in lines:
            seen.append(number(line))
    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    try:
        wait_for(lambda: len(seen) == 5, 10, message="the last 5 lines")
        written = 30
        # Bursts of up to ~2.5 files (keep-3) or under one file (keep-0: a rotation drops
        # the file, so only the follower's open copy of it survives), each only after the
        # follower has caught up with the previous one: every rotation case in turn.
        burst = int((2.5 if limits.keep else 0.8) * limits.max_bytes / line_bytes)
        for _ in range(12):
            write(log, written + 1, burst)
            written += burst
            wait_for(lambda w=written: seen and seen[-1] == w, 20,
                     message=f"the follower reached line {written} ({seen[-3:]})")
    finally:
        stop.set()
        reader.join(5)
        log.close()
    assert seen == list(range(26, written + 1))


def test_a_follower_waits_for_a_log_that_does_not_exist_yet(tmp_path):
    path = tmp_path / "late.service.log"
    stop = threading.Event()
    seen: list[int] = []
    reader = threading.Thread(target=lambda: seen.extend(
        number(line) for line in read_journal(path, 10, True, stop)), daemon=True)
    reader.start()
    try:
        write(UnitLog(path, "core-01"), 1, 30)
        wait_for(lambda: seen and seen[-1] == 30, 20, message="the follower saw line 30")
    finally:
        stop.set()
        reader.join(5)
    # attached before the first line: all of them; after: the last 10, then the rest
    assert seen == list(range(seen[0], 31)) and seen[0] <= 21


def test_closing_the_follower_closes_its_file(tmp_path):
    path = tmp_path / "u.service.log"
    write(UnitLog(path, "core-01"), 1, 3)
    lines = read_journal(path, 3, True, threading.Event())
    assert [number(next(lines)) for _ in range(3)] == [1, 2, 3]
    open_before = _open_files_on(path)
    assert open_before == 1
    lines.close()
    assert _open_files_on(path) == 0


def _open_files_on(path: Path) -> int:
    import os

    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                found += 1
        except OSError:
            pass
    return found


def test_logs_keep_their_file_open_within_the_budget_and_let_go_on_close(tmp_path):
    budget = OpenLogs(1)
    first = UnitLog(tmp_path / "a.service.log", "core-01", open_logs=budget)
    second = UnitLog(tmp_path / "b.service.log", "core-01", open_logs=budget)
    write(first, 1, 3)
    write(second, 1, 3)
    assert _open_files_on(first.path) == 1  # kept: the budget's one
    assert _open_files_on(second.path) == 0  # none left: opened for each write
    assert budget.count == 1
    first.close()
    assert _open_files_on(first.path) == 0 and budget.count == 0
    write(second, 4, 1)  # the budget is free again
    assert _open_files_on(second.path) == 1
    write(first, 4, 2)  # a closed log opens its file again, appending
    assert [number(line) for line in first.path.read_text().splitlines()] == [1, 2, 3, 4, 5]
    second.close()
    assert budget.count == 0


def test_a_kept_open_log_that_fails_to_write_opens_afresh_and_returns_its_budget(tmp_path):
    budget = OpenLogs(2)
    path = tmp_path / "gone" / "u.service.log"
    path.parent.mkdir()
    log = UnitLog(path, "core-01", open_logs=budget)
    write(log, 1, 1)
    assert budget.count == 1
    os.unlink(path)
    os.rmdir(path.parent)  # the kept file still takes writes; reopening fails
    log.close()
    write(log, 2, 1)  # cannot open: dropped, logged, no exception
    assert budget.count == 0
    path.parent.mkdir()
    write(log, 3, 1)
    assert [number(line) for line in path.read_text().splitlines()] == [3]
    log.close()


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata", "America/St_Johns", "Etc/GMT+3"])
def test_journal_timestamps_are_local_iso_8601_with_microseconds(zone, monkeypatch):
    if not Path("/usr/share/zoneinfo", zone).exists():
        pytest.skip(f"no zoneinfo for {zone}")
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        before = datetime.now().astimezone()
        stamp = _timestamp()
        after = datetime.now().astimezone()
    finally:
        monkeypatch.undo()
        time.tzset()
    parsed = datetime.fromisoformat(stamp)
    assert before <= parsed <= after
    assert parsed.utcoffset() == before.utcoffset()
    assert stamp == parsed.isoformat(timespec="microseconds")
