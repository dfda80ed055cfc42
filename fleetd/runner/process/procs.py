"""Child processes of the process runner: spawning through the supervisor, I/O, exits, logs.

One long-lived thread (the host loop) starts the node's supervisor (see
supervisor.py), a single process that forks, signals and reaps every command, and
then watches with one selector the supervisor's reports ("pid", "exit", "done" =
nothing of the command left) and every command's output, which it timestamps into the
unit's log. Starting the supervisor from this one thread matters: the kernel's
parent-death signal fires when the *thread* that forked a child ends.
State lives in `Proc` objects and changes only under the runner's condition
lock, which is notified on every change, so unit workers simply wait on it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

SUPERVISOR = str(Path(__file__).with_name("supervisor.py"))
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


class OpenLogs:
    """How many unit logs may keep their file open at once (each is a file descriptor, on
    top of the output pipe of every running command); past it a log opens its file for
    each write, as a log without this budget always does."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.count >= self.limit:
                return False
            self.count += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.count -= 1


class UnitLog:
    """One unit's journal: a text file, one timestamped line per record, rotated by size
    (`limits`) so a chatty process cannot fill the disk; readers follow `path`, the
    current file.

    With `open_logs`, the file stays open between writes (opening it cost more than the
    write), within that budget, until `close()` (the runner closes a unit's log when its
    worker ends); a rotation closes it before renaming it, as the journal's followers
    expect. A write that fails drops the handle: the next one opens afresh."""

    def __init__(self, path: Path, hostname: str, limits: LogLimits | None = None,
                 open_logs: OpenLogs | None = None) -> None:
        self.path = path
        self.hostname = hostname
        self.limits = limits or LogLimits()
        self._open_logs = open_logs
        self._size: int | None = None  # of the current file, once known
        self._handle: io.FileIO | None = None  # the current file, kept open
        self._lock = threading.Lock()

    def write(self, ident: str, text: str) -> None:
        self.write_lines(ident, text.splitlines() or [""])

    def write_lines(self, ident: str, lines: Sequence[str]) -> None:
        prefix = f"{_timestamp()} {self.hostname} {ident}: "
        encoded = [f"{prefix}{line}\n".encode("utf-8", "replace") for line in lines]
        with self._lock:
            try:
                start = 0
                while start < len(encoded):
                    handle = self._open()
                    assert self._size is not None
                    # As many lines as fit before the limit (at least one into a fresh file).
                    end, room = start, self.limits.max_bytes - self._size
                    while end < len(encoded) and (len(encoded[end]) <= room or
                                                  (end == start and self._size == 0)):
                        room -= len(encoded[end])
                        end += 1
                    if end == start:
                        self._rotate()
                        continue
                    data = memoryview(b"".join(encoded[start:end]))
                    try:
                        while data:  # unbuffered: a write may take only part of it
                            written = handle.write(data)
                            if not written:
                                raise OSError(f"no progress writing {self.path}")
                            data = data[written:]
                    finally:
                        self._size = handle.tell()
                        if self._handle is None:
                            handle.close()  # no budget left to keep it open
                    start = end
            except OSError as err:  # a full disk must not take the runner down
                self._drop()
                _LOG.warning("cannot write to %s: %s", self.path, err)

    def close(self) -> None:
        """Let go of the open file (the next write opens it again)."""
        with self._lock:
            self._drop()

    def _open(self) -> io.FileIO:
        if self._handle is not None:
            return self._handle
        handle = open(self.path, "ab", buffering=0)  # kept open: see close()
        self._size = handle.tell()
        if self._open_logs is not None and self._open_logs.take():
            self._handle = handle
        return handle

    def _drop(self) -> None:
        handle, self._handle = self._handle, None
        self._size = None
        if handle is not None:
            if self._open_logs is not None:
                self._open_logs.give_back()
            try:
                handle.close()
            except OSError:
                pass

    def _rotate(self) -> None:
        """<log>.{keep-1} → .{keep} … <log> → <log>.1; the oldest is dropped."""
        self._drop()  # closed before the rename: a follower then reads it to its end
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


def _timestamp() -> str:
    """Now as local ISO 8601 with microseconds, as journalctl's short-iso-precise shows it."""
    return datetime.now().astimezone().isoformat(timespec="microseconds")


@dataclass(eq=False)
class Proc:
    """One command of a unit, as the supervisor reports it."""

    argv: tuple[str, ...]
    log: UnitLog
    id: int = 0  # the supervisor's name for it
    pgid: int = 0  # its own process group: the command's pid, once known
    main_pid: int | None = None
    exit: ExitInfo | None = None  # of the command itself (None while it runs)
    exec_error: str | None = None
    done: bool = False  # nothing of this command is left
    notes: list[str] = field(default_factory=list)
    output: _OutputReader | None = None
    changed: threading.Condition | None = None

    @property
    def pid(self) -> int:
        """The command's pid once known, else 0."""
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
    changed: threading.Condition | None = None  # notified when the Proc changes


class ProcessHost:
    """Owns the host loop thread and the supervisor; every method is safe from any thread."""

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
        self._live: dict[int, Proc] = {}
        self._next_id = 0
        self._closing = False
        self._closed = False
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._supervisor: subprocess.Popen | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fleetd-process-host",
                                        daemon=True)
        self._thread.start()
        self._started.wait(30)

    # -- called from unit workers ---------------------------------------------------------

    def spawn(self, request: SpawnRequest) -> Proc:
        """Start a command through the supervisor; raises OSError if that is impossible."""
        future: Future = Future()
        with self._cond:
            if self._closing:
                raise OSError("the process runner is shutting down")
            self._requests.put((request, future))
        self._wake()
        return future.result()

    def kill(self, proc: Proc, sig: int) -> None:
        """Signal the command's process group and whatever of it left the group."""
        with self._cond:
            if proc.done:
                return
        self._send([{"op": "kill", "id": proc.id, "sig": int(sig)}])

    def kill_again(self, proc: Proc) -> None:
        """SIGKILL again (the supervisor looks again for processes that left the group)."""
        self.kill(proc, signal.SIGKILL)

    def close(self) -> None:
        """Kill whatever still runs, reap it, end the supervisor and the host loop thread."""
        with self._cond:
            if self._closed:
                return
            self._closing = True
        self._send([{"op": "shutdown"}])
        self._wake()
        self._thread.join(timeout=30)
        with self._cond:
            self._closed = True
            if not self._thread.is_alive():
                os.close(self._wake_w)

    def supervisor_pid(self) -> int | None:
        return self._supervisor.pid if self._supervisor is not None else None

    # -- the supervisor -------------------------------------------------------------------

    def _start_supervisor(self) -> None:
        """Fork the supervisor; from the host loop thread only (see the module's note)."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._supervisor = subprocess.Popen(
                [sys.executable, "-I", "-S", SUPERVISOR, str(os.getpid()), str(theirs.fileno())],
                stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),), start_new_session=True)
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        mine.setblocking(False)
        self._sock = mine
        self._selector.register(mine, selectors.EVENT_READ, self._on_reports)

    def _send(self, messages: list[dict], fds: Sequence[int] = ()) -> None:
        sock = self._sock
        if sock is None:
            return
        data = json.dumps(messages).encode()
        with self._send_lock:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.send_fds(sock, [data], list(fds)) if fds else sock.send(data)
                    return
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise OSError("the process supervisor does not read its "
                                      "requests") from None
                    if threading.get_ident() == self._thread.ident:
                        self._on_reports()  # it may be waiting for us to read its reports
                    select.select([], [sock], [], 0.05)  # until there is room again
                except OSError:
                    if fds:
                        raise
                    return  # the supervisor is gone; _on_reports handles that

    def _on_reports(self) -> None:
        assert self._sock is not None
        batches = []
        while True:
            try:
                data = self._sock.recv(1 << 20)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self._supervisor_gone()
                return
            batches.append(data)
        with self._cond:
            for data in batches:
                try:
                    reports = json.loads(data)
                except ValueError:
                    _LOG.error("unreadable report from the process supervisor: %r", data[:200])
                    continue
                for report in reports:
                    self._apply(report)
            self._changed()

    def _apply(self, report: dict) -> None:
        proc = self._live.get(report.get("id", -1))
        if proc is None:
            if "note" in report:
                _LOG.warning("process supervisor: %s", report["note"])
            return
        (proc.changed or self._cond).notify_all()
        if "pid" in report:
            proc.main_pid = proc.pgid = int(report["pid"])
            if proc.output is not None:
                proc.output.release()
        elif "exec_error" in report:
            proc.exec_error = str(report["exec_error"])
            proc.exit = ExitInfo(code=203)
        elif "exit" in report:
            if proc.exit is None:
                proc.exit = ExitInfo(code=int(report["exit"]))
        elif "signal" in report:
            proc.exit = ExitInfo(signal=int(report["signal"]))
        elif report.get("done"):
            self._finished(proc)

    def _finished(self, proc: Proc, lost: bool = False) -> None:
        """Called with the condition held: nothing of `proc` is left (or nobody knows)."""
        proc.done = True
        (proc.changed or self._cond).notify_all()
        self._live.pop(proc.id, None)
        if proc.exit is None:
            proc.exit = ExitInfo(signal=signal.SIGKILL) if lost else ExitInfo(code=1)
        if proc.output is not None:
            proc.output.release()

    def _supervisor_gone(self) -> None:
        """The supervisor died (or ended): kill what we know of, forget every command."""
        assert self._sock is not None
        self._selector.unregister(self._sock)
        self._sock.close()
        self._sock = None
        code = self._supervisor.wait() if self._supervisor is not None else None
        with self._cond:
            if not self._closing:
                _LOG.error("the process supervisor ended (%s); its commands are killed", code)
            for proc in list(self._live.values()):
                if proc.pgid:
                    try:
                        os.killpg(proc.pgid, signal.SIGKILL)
                    except OSError:
                        pass
                self._finished(proc, lost=True)
            self._changed()

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
            try:
                self._start_supervisor()
            finally:
                self._started.set()
            while True:
                for key, _ in self._selector.select():
                    if key.data is None:
                        self._drain_wake()
                    else:
                        key.data()
                self._serve_requests()
                with self._cond:
                    if self._closing and (not self._live or self._sock is None):
                        break
        except Exception:  # never raise from the background; kill, report, clean up
            _LOG.exception("process host loop failed")
            if self._sock is not None:
                self._supervisor_gone()
        finally:
            with self._cond:
                self._closing = True
            self._fail_pending()
            if self._sock is not None:
                self._selector.unregister(self._sock)
                self._sock.close()  # the supervisor sees EOF, kills what is left and exits
                self._sock = None
            if self._supervisor is not None:
                try:
                    self._supervisor.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self._supervisor.kill()
                    self._supervisor.wait()
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
            if closing or self._sock is None:
                future.set_exception(OSError("the process runner is shutting down"))
                continue
            try:
                future.set_result(self._launch(request))
            except Exception as err:  # handed to the worker that asked
                future.set_exception(err)

    def _launch(self, request: SpawnRequest) -> Proc:
        out_r, out_w = os.pipe()
        with self._cond:
            self._next_id += 1
            proc = Proc(argv=request.argv, log=request.log, id=self._next_id,
                        changed=request.changed)
            self._live[proc.id] = proc
        try:
            self._send([{"op": "spawn", "id": proc.id, "exe": request.executable,
                         "argv": list(request.argv), "env": dict(request.env),
                         "cwd": request.cwd}], [out_w])
        except BaseException:
            with self._cond:
                self._live.pop(proc.id, None)
            os.close(out_r)
            raise
        finally:
            os.close(out_w)
        os.set_blocking(out_r, False)
        proc.output = _OutputReader(self, proc, out_r)
        self._selector.register(out_r, selectors.EVENT_READ, proc.output)
        return proc

    def _changed(self) -> None:
        """Called with the condition held after Procs changed (each Proc's own `changed`
        condition is notified as it changes; without one, the host's condition is)."""
        if self._on_change is not None:
            self._on_change()

    def _release(self, fd: int) -> None:
        self._selector.unregister(fd)
        os.close(fd)


class _OutputReader:
    """Timestamps a command's output into its unit's log.

    Output that comes before the supervisor has reported the command's pid is held
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
