"""Child processes of the process runner: spawning through the guard, I/O, exits, logs.

One long-lived thread (the host loop) forks every guard (see guard.py) and
then watches all of them with one selector: it timestamps their output into the
unit's log and reads their status pipe ("pid", "exit", EOF = nothing left).
Forking from this one thread matters: the kernel's parent-death signal fires
when the *thread* that forked a child ends, so no short-lived thread may fork.
State lives in `Proc` objects and changes only under the runner's condition
lock, which is notified on every change, so unit workers simply wait on it.
"""

from __future__ import annotations

import logging
import os
import queue
import selectors
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from fleetd.runner.process.guard import kill_tree

GUARD = str(Path(__file__).with_name("guard.py"))
_LOG = logging.getLogger(__name__)
_READ_SIZE = 65536
_MAX_PARTIAL = 8192
_MAX_HELD_LINES = 1000
_EXIT_STATUS_NAMES = {
    0: "SUCCESS", 1: "FAILURE", 2: "INVALIDARGUMENT", 3: "NOTIMPLEMENTED",
    4: "NOPERMISSION", 5: "NOTINSTALLED", 6: "NOTCONFIGURED", 7: "NOTRUNNING",
    200: "CHDIR", 203: "EXEC",
}


def exit_status_text(code: int) -> str:
    name = _EXIT_STATUS_NAMES.get(code)
    return f"{code}/{name}" if name else str(code)


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name.removeprefix("SIG")
    except ValueError:
        return str(number)


@dataclass(frozen=True)
class ExitInfo:
    """How a command ended: an exit code or a signal."""

    code: int | None = None
    signal: int | None = None

    def describe(self) -> str:
        if self.code is not None:
            return f"code=exited, status={exit_status_text(self.code)}"
        number = self.signal or 0
        return f"code=killed, status={number}/{signal_name(number)}"

    @property
    def result(self) -> str:
        """systemd's name for this ending as a failure: exit-code or signal."""
        return "exit-code" if self.code is not None else "signal"


@dataclass(frozen=True)
class LogLimits:
    """When a unit's log rotates: past `max_bytes` the file becomes `<log>.1` (older
    ones shift to .2 …) and a new one starts; `keep` old files stay, older ones go."""

    max_bytes: int = 10 * 1024 * 1024
    keep: int = 3


class UnitLog:
    """One unit's journal: a text file, one timestamped line per record, rotated by size
    (`limits`) so a chatty process cannot fill the disk; readers follow `path`, the
    current file."""

    def __init__(self, path: Path, hostname: str, limits: LogLimits | None = None) -> None:
        self.path = path
        self.hostname = hostname
        self.limits = limits or LogLimits()
        self._size: int | None = None  # of the current file, once known
        self._lock = threading.Lock()

    def write(self, ident: str, text: str) -> None:
        self.write_lines(ident, text.splitlines() or [""])

    def write_lines(self, ident: str, lines: Sequence[str]) -> None:
        stamp = datetime.now().astimezone().isoformat(timespec="microseconds")
        encoded = [f"{stamp} {self.hostname} {ident}: {line}\n".encode("utf-8", "replace")
                   for line in lines]
        with self._lock:
            try:
                if self._size is None:
                    self._size = _size_of(self.path)
                start = 0
                while start < len(encoded):
                    # As many lines as fit before the limit (at least one into a fresh file).
                    end, room = start, self.limits.max_bytes - self._size
                    while end < len(encoded) and (len(encoded[end]) <= room or
                                                  (end == start and self._size == 0)):
                        room -= len(encoded[end])
                        end += 1
                    if end == start:
                        self._rotate()
                        continue
                    with open(self.path, "ab") as handle:
                        handle.write(b"".join(encoded[start:end]))
                        self._size = handle.tell()
                    start = end
            except OSError as err:  # a full disk must not take the runner down
                self._size = None
                _LOG.warning("cannot write to %s: %s", self.path, err)

    def _rotate(self) -> None:
        """<log>.{keep-1} → .{keep} … <log> → <log>.1; the oldest is dropped."""
        keep = max(0, self.limits.keep)
        if keep == 0:
            self.path.unlink(missing_ok=True)
        else:
            for number in range(keep - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{number}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{number + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._size = 0


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@dataclass(eq=False)
class Proc:
    """One command of a unit, as seen through its guard."""

    argv: tuple[str, ...]
    log: UnitLog
    guard: subprocess.Popen | None = None
    pgid: int = 0
    main_pid: int | None = None
    exit: ExitInfo | None = None  # of the command itself (None while it runs)
    exec_error: str | None = None
    done: bool = False  # the guard is reaped: nothing of this command is left
    notes: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """The command's pid once known, else its guard's."""
        return self.main_pid or self.pgid

    @property
    def ident(self) -> str:
        return f"{os.path.basename(self.argv[0]) if self.argv else '?'}[{self.pid}]"


@dataclass(frozen=True)
class SpawnRequest:
    executable: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str
    log: UnitLog


class ProcessHost:
    """Owns the host loop thread; every method is safe to call from any thread."""

    def __init__(self, cond: threading.Condition,
                 on_change: Callable[[], None] | None = None) -> None:
        self._cond = cond
        self._on_change = on_change
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._live: set[Proc] = set()
        self._closing = False
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="fleetd-process-host",
                                        daemon=True)
        self._thread.start()

    # -- called from unit workers ---------------------------------------------------------

    def spawn(self, request: SpawnRequest) -> Proc:
        """Start a command through a guard; raises OSError if that is impossible."""
        future: Future = Future()
        with self._cond:
            if self._closing:
                raise OSError("the process runner is shutting down")
            self._requests.put((request, future))
        self._wake()
        return future.result()

    def kill(self, proc: Proc, sig: int) -> None:
        """Signal everything the command left: its process group and every descendant.

        SIGKILL spares the guard (every process of the group descends from it), so
        the guard can still reap what it killed and report; `kill_guard` is for
        when even that does not end it.
        """
        with self._cond:
            if proc.done or not proc.pgid:
                return  # never signal a process group whose leader is already reaped
            kill_tree(proc.pgid, None if sig == signal.SIGKILL else proc.pgid, sig)

    def kill_guard(self, proc: Proc) -> None:
        with self._cond:
            if not proc.done and proc.pgid:
                kill_tree(proc.pgid, proc.pgid, signal.SIGKILL)

    def close(self) -> None:
        """Kill whatever still runs, reap it and end the host loop thread."""
        with self._cond:
            if self._closed:
                return
            self._closing = True
            for proc in list(self._live):
                kill_tree(proc.pgid, proc.pgid, signal.SIGKILL)
        self._wake()
        self._thread.join(timeout=30)
        with self._cond:
            self._closed = True
            if not self._thread.is_alive():
                os.close(self._wake_w)

    # -- the host loop --------------------------------------------------------------------

    def _wake(self) -> None:
        with self._cond:
            if self._closed:
                return
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass  # the pipe is full: a wake-up is pending anyway

    def _loop(self) -> None:
        try:
            while True:
                for key, _ in self._selector.select():
                    if key.data is None:
                        self._drain_wake()
                    else:
                        key.data()
                self._serve_requests()
                with self._cond:
                    if self._closing and not self._live:
                        break
        except Exception:  # never raise from the background; kill, reap, report, clean up
            _LOG.exception("process host loop failed")
            with self._cond:
                for proc in list(self._live):
                    kill_tree(proc.pgid, proc.pgid, signal.SIGKILL)
                    self._reaped(proc)
        finally:
            with self._cond:
                self._closing = True
            self._fail_pending()
            for key in list(self._selector.get_map().values()):
                self._selector.unregister(key.fileobj)
                os.close(key.fd)
            self._selector.close()

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _fail_pending(self) -> None:
        while True:
            try:
                _, future = self._requests.get_nowait()
            except queue.Empty:
                return
            future.set_exception(OSError("the process runner is shutting down"))

    def _serve_requests(self) -> None:
        while True:
            try:
                request, future = self._requests.get_nowait()
            except queue.Empty:
                return
            with self._cond:
                closing = self._closing
            if closing:
                future.set_exception(OSError("the process runner is shutting down"))
                continue
            try:
                future.set_result(self._launch(request))
            except Exception as err:  # handed to the worker that asked
                future.set_exception(err)

    def _launch(self, request: SpawnRequest) -> Proc:
        out_r, out_w = os.pipe()
        status_r, status_w = os.pipe()
        command = [sys.executable, "-I", "-S", GUARD, str(status_w), str(os.getpid()),
                   request.executable, *request.argv]
        try:
            guard = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out_w,
                                     stderr=out_w, pass_fds=(status_w,), cwd=request.cwd,
                                     env=dict(request.env), start_new_session=True)
        except BaseException:
            os.close(out_r)
            os.close(status_r)
            raise
        finally:
            os.close(out_w)
            os.close(status_w)
        proc = Proc(argv=request.argv, log=request.log, guard=guard, pgid=guard.pid)
        for fd in (out_r, status_r):
            os.set_blocking(fd, False)
        output = _OutputReader(self, proc, out_r)
        self._selector.register(out_r, selectors.EVENT_READ, output)
        self._selector.register(status_r, selectors.EVENT_READ,
                                _StatusReader(self, proc, status_r, output))
        with self._cond:
            self._live.add(proc)
        return proc

    def _changed(self) -> None:
        """Called with the condition held after any Proc changed."""
        self._cond.notify_all()
        if self._on_change is not None:
            self._on_change()

    def _release(self, fd: int) -> None:
        self._selector.unregister(fd)
        os.close(fd)

    def _reaped(self, proc: Proc) -> None:
        assert proc.guard is not None
        with self._cond:
            if proc.done:
                return
            try:
                code = proc.guard.wait(timeout=10)  # the status pipe hit EOF: it is exiting
            except subprocess.TimeoutExpired:  # cannot happen short of a kernel hang
                _LOG.error("guard %s closed its status pipe but did not exit", proc.pgid)
                code = -signal.SIGKILL
            proc.done = True
            self._live.discard(proc)
            if proc.exit is None:  # the guard died before it could report (SIGKILL)
                if proc.exec_error is not None or code == 203:
                    proc.exit = ExitInfo(code=203)
                elif code < 0:
                    proc.exit = ExitInfo(signal=-code)
                else:
                    proc.exit = ExitInfo(code=code)
            self._changed()


class _StatusReader:
    def __init__(self, host: ProcessHost, proc: Proc, fd: int, output: _OutputReader) -> None:
        self.host, self.proc, self.fd, self.output = host, proc, fd, output
        self.buffer = b""

    def __call__(self) -> None:
        try:
            data = os.read(self.fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.buffer += data
            *lines, self.buffer = self.buffer.split(b"\n")
            with self.host._cond:
                for line in lines:
                    self._apply(line.decode("utf-8", "replace"))
                self.host._changed()
            if self.proc.main_pid is not None or self.proc.exit is not None:
                self.output.release()
            return
        self.host._release(self.fd)
        self.host._reaped(self.proc)
        self.output.release()

    def _apply(self, line: str) -> None:
        word, _, rest = line.partition(" ")
        proc = self.proc
        try:
            if word == "pid":
                proc.main_pid = int(rest)
            elif word == "exit":
                proc.exit = ExitInfo(code=int(rest))
            elif word == "signal":
                proc.exit = ExitInfo(signal=int(rest))
            elif word == "exec-error":
                proc.exec_error = rest
                proc.exit = ExitInfo(code=203)
            else:
                proc.notes.append(rest or word)
        except ValueError:
            proc.notes.append(line)


class _OutputReader:
    """Timestamps a command's output into its unit's log.

    Output that comes before the guard has reported the command's pid is held
    back (a little) so that every line is attributed to the right pid.
    """

    def __init__(self, host: ProcessHost, proc: Proc, fd: int) -> None:
        self.host, self.proc, self.fd = host, proc, fd
        self.partial = b""
        self.held: list[str] | None = []  # None once the pid is known

    def __call__(self) -> None:
        try:
            data = os.read(self.fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if self.partial:
                self._emit([self.partial])
            self.release()
            self.host._release(self.fd)
            return
        *lines, self.partial = (self.partial + data).split(b"\n")
        if len(self.partial) > _MAX_PARTIAL:
            lines.append(self.partial)
            self.partial = b""
        if lines:
            self._emit(lines)

    def _emit(self, lines: list[bytes]) -> None:
        text = [line.decode("utf-8", "replace").rstrip("\r") for line in lines]
        if self.held is not None:
            self.held.extend(text)
            if len(self.held) > _MAX_HELD_LINES:
                self.release()
            return
        self.proc.log.write_lines(self.proc.ident, text)

    def release(self) -> None:
        """Write what was held back; from now on lines are written as they come."""
        held, self.held = self.held, None
        if held:
            self.proc.log.write_lines(self.proc.ident, held)
