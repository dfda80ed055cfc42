"""The supervisor: one small process per runner that starts, signals and reaps every command.

Run as its own program (stdlib only, started with `python3 -I -S supervisor.py`):

    supervisor.py PARENT_PID SOCKET_FD

One process per node, whatever the number of units (an interpreter per command would
cost ~10 MB each), with these guarantees:

- it asks the kernel for a signal when its parent dies (PR_SET_PDEATHSIG) and then
  (once getppid() shows the runner process really is gone) SIGKILLs every command's
  process group and every process below itself, so no unit outlives a SIGKILLed
  fleetd (no double run after failover);
- it is a child subreaper, so whatever a command leaves behind (`sleep &`, daemons
  that double-fork or move to their own session) re-parents to it and stays below it;
- each command runs in its own session and process group (its pid is the group id), with
  default signal dispositions and an empty mask, stdout and stderr on the pipe the
  runner passed along with the request.

The runner speaks to it over a SOCK_SEQPACKET socket, one JSON list of messages per
datagram. Requests: `{"op": "spawn", "id", "exe", "argv", "env", "cwd"}` (the output
pipe's write end attached as SCM_RIGHTS), `{"op": "kill", "id", "sig"}`,
`{"op": "shutdown"}`. Reports: `{"id", "pid"}`, `{"id", "exec_error"}`, `{"id", "exit"}`
or `{"id", "signal"}` when the command itself ends, and `{"id", "done": true}` once
nothing of it is left: its process group is empty and every process found to have left
the group (below one of its processes) is gone.

A SIGTERM or SIGKILL first looks for the processes that left the command's group, then
signals the group and them. Where the kernel lists each task's children
(/proc/PID/task/TID/children; decided once at start) that look follows only the
command's own subtree: its main process, our own children that were in its group or
session when first seen (what re-parented to us, the subreaper), the processes found to
have left it before, and everything below those, so a stop costs the size of the unit,
not of the host. Without those files it is a scan of all of /proc, at most every
`SCAN_INTERVAL_S` for all the kills asked for since the last one. Either runs here, in
this process, never under fleetd's locks.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import signal
import socket
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PARENT_DEATH_SIGNAL = signal.SIGUSR1
SCAN_INTERVAL_S = 0.1
LINGER_POLL_S = 0.2  # how often a command whose main process ended is checked for leftovers
MAX_DATAGRAM = 1 << 20
MAX_REPORTS = 200  # per datagram
SEND_RETRY_S = 0.01  # while the runner's socket buffer is full
KILL_SETTLE_S = 5.0  # at most, for what kill_everything killed to die (a D-state task)
KILL_LOOK_S = 0.005  # between its looks while killed processes are still dying
EXIT_GRACE_S = 10.0  # after the runner left, for what was killed to be reaped


def process_table() -> dict[int, tuple[int, int, int]]:
    """pid → (ppid, pgid, start time) of every live process (one scan of /proc)."""
    table: dict[int, tuple[int, int, int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return table
    for entry in entries:
        stat = read_stat(int(entry)) if entry.isdigit() else None
        if stat is not None and not stat[4]:
            table[int(entry)] = (stat[0], stat[1], stat[3])
    return table


def read_stat(pid: int) -> tuple[int, int, int, int, bool] | None:
    """(ppid, pgid, session, start time, zombie) of `pid`, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()
    if len(fields) < 20:
        return None
    return (int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]),
            fields[0] == b"Z")


def children_files_available() -> bool:
    """Whether the kernel lists each task's children (CONFIG_PROC_CHILDREN)."""
    me = os.getpid()
    return os.path.exists(f"/proc/{me}/task/{me}/children")


def children_of(pid: int) -> list[int]:
    """The children of every thread of `pid`, from the kernel's children files."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as handle:
                found.extend(map(int, handle.read().split()))
        except (OSError, ValueError):
            continue
    return found


def subtree(roots: set[int]) -> dict[int, tuple[int, int, int]]:
    """pid → (ppid, pgid, start time) of every live process among `roots` and below them,
    following the children files down (no scan of /proc); zombies are passed through."""
    table: dict[int, tuple[int, int, int]] = {}
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        stat = read_stat(pid)
        if stat is None:
            continue
        ppid, pgid, _, started, zombie = stat
        if not zombie:
            table[pid] = (ppid, pgid, started)
        stack.extend(children_of(pid))
    return table


def below(roots: set[int], table: dict[int, tuple[int, int, int]]) -> set[int]:
    """Every process of `table` that descends from one of `roots` (roots excluded)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    stack = list(roots)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found - roots


def start_time(pid: int) -> int | None:
    stat = read_stat(pid)
    return None if stat is None or stat[4] else stat[3]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Command:
    def __init__(self, ident: int) -> None:
        self.id = ident
        self.pid = 0            # also its process group
        self.ended = False      # the main process was reaped
        self.escaped: dict[int, int] = {}  # pid → start time, processes that left the group
        self.last_signal = 0

    def alive(self) -> bool:
        if self.pid and group_alive(self.pid):
            return True
        for pid, started in list(self.escaped.items()):
            if start_time(pid) != started:
                del self.escaped[pid]
        return bool(self.escaped)


class Supervisor:
    def __init__(self, parent: int, sock: socket.socket) -> None:
        self.parent = parent
        self.sock = sock
        self.commands: dict[int, Command] = {}
        self.by_pid: dict[int, Command] = {}
        self.outbox: list[dict] = []
        self.to_scan: dict[int, int] = {}  # command id → signal, for processes off the group
        self.last_scan = 0.0
        self.follow_children = children_files_available()
        # Our children that no command started (they re-parented to us): pid → (process
        # group, session) when first seen, which tells whose they are after they move on.
        self.orphans: dict[int, tuple[int, int]] = {}
        self.eof = False
        self.shutting_down = False
        self.pdeath = False

    # -- setup ---------------------------------------------------------------------------

    def arm(self) -> None:
        signal.signal(PARENT_DEATH_SIGNAL, self.on_parent_death)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_IGN)  # only the runner (or its death) ends us
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, int(PARENT_DEATH_SIGNAL), 0, 0, 0) != 0:
                self.report_note("prctl(PR_SET_PDEATHSIG) failed: "
                                 f"{os.strerror(ctypes.get_errno())}")
            libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError) as err:
            self.report_note(f"cannot watch the parent process: {err}")
        if os.getppid() != self.parent:
            self.kill_everything()
            os._exit(1)  # the runner died before we could watch it: run nothing

    def on_parent_death(self, signum: int, frame: object) -> None:
        if os.getppid() == self.parent:
            return  # only the thread that started us ended; the runner process lives on
        self.kill_everything()
        os._exit(1)

    def kill_everything(self) -> None:
        """SIGKILL every command's group and every process below us, until two looks in a
        row find nothing alive below us (or KILL_SETTLE_S passed).

        One look is not enough: a process whose parent is exiting moves to us (the
        subreaper) meanwhile, and the kernel's children files may then list it under
        neither parent (they are exact only for stopped tasks). A process that is dying
        still counts as alive, so the looks go on until every process killed is a zombie:
        by then whatever was below it has moved to us, and the next look sees it."""
        for command in list(self.commands.values()):
            if command.pid:
                try:
                    os.killpg(command.pid, signal.SIGKILL)
                except OSError:
                    pass
        me = os.getpid()
        deadline = time.monotonic() + KILL_SETTLE_S
        quiet = 0
        while quiet < 2 and time.monotonic() < deadline:
            if self.follow_children:
                pids = set(subtree({me})) - {me}
            else:
                pids = below({me}, process_table())
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            quiet = 0 if pids else quiet + 1
            if pids:
                time.sleep(KILL_LOOK_S)  # the killed processes take a moment to die

    # -- requests ------------------------------------------------------------------------

    def receive(self) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(
                    self.sock, MAX_DATAGRAM, 4, socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                self.eof = True
                self.shutdown()
                return
            try:
                messages = json.loads(data)
            except ValueError:
                messages = []
            for message in messages:
                self.handle(message, fds)
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def handle(self, message: dict, fds: list[int]) -> None:
        op = message.get("op")
        if op == "spawn":
            self.spawn(message, fds[0] if fds else None)
        elif op == "kill":
            command = self.commands.get(message.get("id"))
            if command is not None:
                self.kill(command, int(message["sig"]))
        elif op == "shutdown":
            self.shutdown()

    def spawn(self, message: dict, out_fd: int | None) -> None:
        ident = message["id"]
        command = Command(ident)
        self.commands[ident] = command
        if self.shutting_down:
            self.send({"id": ident, "exec_error": "the process runner is shutting down"})
            self.send({"id": ident, "done": True})
            del self.commands[ident]
            return
        actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0)]
        if out_fd is not None:
            actions += [(os.POSIX_SPAWN_DUP2, out_fd, 1), (os.POSIX_SPAWN_DUP2, out_fd, 2)]
        env = message["env"]
        here = os.getcwd()
        try:
            os.chdir(message.get("cwd") or "/")
            pid = os.posix_spawn(_find(message["exe"], env), message["argv"], env,
                                 file_actions=actions, setsid=True, setsigdef=_DEFAULTS,
                                 setsigmask=[])
        except (OSError, ValueError, TypeError) as err:
            self.send({"id": ident, "exec_error": getattr(err, "strerror", None) or str(err)})
            self.send({"id": ident, "exit": 203})
            self.send({"id": ident, "done": True})
            del self.commands[ident]
            return
        finally:
            try:
                os.chdir(here)
            except OSError:
                os.chdir("/")
        command.pid = pid
        self.by_pid[pid] = command
        self.send({"id": ident, "pid": pid})

    def kill(self, command: Command, sig: int) -> None:
        """SIGTERM and SIGKILL wait for the next scan (it must see the process tree before
        the group dies and its leftovers re-parent to us); other signals go at once."""
        if sig in (signal.SIGTERM, signal.SIGKILL):
            self.to_scan[command.id] = sig
            return
        if command.pid:
            try:
                os.killpg(command.pid, sig)
            except OSError:
                pass
        for pid, started in list(command.escaped.items()):
            if start_time(pid) == started:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass

    def scan_due(self) -> float | None:
        """Seconds until the next scan for processes off their group (None: none needed)."""
        if not self.to_scan:
            return None
        if self.follow_children:
            return 0.0  # costs the size of the unit: no reason to batch
        return max(0.0, self.last_scan + SCAN_INTERVAL_S - time.monotonic())

    def scan(self) -> None:
        """Signal each command asked to stop: the processes below it that left its process
        group (its subtree, or one scan of /proc for all of them), then the group."""
        wanted, self.to_scan = self.to_scan, {}
        self.last_scan = time.monotonic()
        if self.follow_children:
            orphans = self.orphan_index()
            for ident, sig in wanted.items():
                command = self.commands.get(ident)
                if command is not None:
                    self.signal_command(command, sig, self.command_subtree(command, orphans))
            return
        table = process_table()
        groups: dict[int, set[int]] = {}
        for pid, (_, pgid, _) in table.items():
            groups.setdefault(pgid, set()).add(pid)
        for ident, sig in wanted.items():
            command = self.commands.get(ident)
            if command is None:
                continue
            roots = (groups.get(command.pid, set()) if command.pid else set()) \
                | set(command.escaped)
            for pid in below(roots, table) | set(command.escaped):
                info = table.get(pid)
                if info is None or info[1] == command.pid:
                    continue
                command.escaped[pid] = info[2]
            self.signal_command(command, sig, table)

    def orphan_index(self) -> dict[int, set[int]]:
        """Process group or session (as first seen) → our children that no command started."""
        for pid in children_of(os.getpid()):
            if pid in self.by_pid or pid in self.orphans:
                continue
            stat = read_stat(pid)
            if stat is not None and not stat[4]:
                self.orphans[pid] = (stat[1], stat[2])
        index: dict[int, set[int]] = {}
        for pid, (pgid, session) in self.orphans.items():
            index.setdefault(pgid, set()).add(pid)
            index.setdefault(session, set()).add(pid)
        return index

    def command_subtree(self, command: Command,
                        orphans: dict[int, set[int]]) -> dict[int, tuple[int, int, int]]:
        """Every live process of `command`, recording those off its group as escaped."""
        for pid, started in list(command.escaped.items()):
            if start_time(pid) != started:
                del command.escaped[pid]  # gone; its pid may belong to someone else now
        roots = set(command.escaped)
        if command.pid and not command.ended:
            roots.add(command.pid)  # not reaped yet, so the pid is still its own
        for owner in (command.pid, *command.escaped):
            if owner:
                roots |= orphans.get(owner, set())
        table = subtree(roots)
        for pid, (_, pgid, started) in table.items():
            if pgid != command.pid:
                command.escaped[pid] = started
        return table

    def signal_command(self, command: Command, sig: int,
                       table: dict[int, tuple[int, int, int]]) -> None:
        """`sig` to the command's group and to its escaped processes still in `table`."""
        signals = (sig, signal.SIGCONT) if sig == signal.SIGTERM else (sig,)
        for one in signals:
            if command.pid:
                try:
                    os.killpg(command.pid, one)
                except OSError:
                    pass
            for pid, started in list(command.escaped.items()):
                if table.get(pid, (0, 0, -1))[2] == started:
                    try:
                        os.kill(pid, one)
                    except OSError:
                        pass

    def shutdown(self) -> None:
        if not self.shutting_down:
            self.shutting_down = True
        for command in self.commands.values():
            self.kill(command, signal.SIGKILL)
        self.kill_everything()

    # -- children ------------------------------------------------------------------------

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.orphans.pop(pid, None)
            command = self.by_pid.pop(pid, None)
            if command is not None and not command.ended:
                command.ended = True
                code = os.waitstatus_to_exitcode(status)
                if code >= 0:
                    self.send({"id": command.id, "exit": code})
                else:
                    self.send({"id": command.id, "signal": -code})

    def finish(self) -> bool:
        """Report every command of which nothing is left; True if some still linger."""
        lingering = False
        for command in list(self.commands.values()):
            if not command.ended:
                continue
            if command.alive():
                lingering = True
                continue
            del self.commands[command.id]
            self.send({"id": command.id, "done": True})
            if self.orphans:
                # Its group and session ids may be reused now: what was first seen in them
                # (and outlived it) is told apart afresh at the next look.
                for pid, ids in list(self.orphans.items()):
                    if command.pid in ids:
                        del self.orphans[pid]
        return lingering

    # -- reports -------------------------------------------------------------------------

    def send(self, message: dict) -> None:
        self.outbox.append(message)

    def report_note(self, text: str) -> None:
        self.send({"note": text})

    def flush(self) -> None:
        while self.outbox:
            batch = self.outbox[:MAX_REPORTS]
            try:
                self.sock.send(json.dumps(batch).encode())
            except BlockingIOError:
                return  # the runner reads them soon; never block its requests meanwhile
            except OSError:
                self.outbox = []  # the runner is gone: its death signal does the rest
                return
            del self.outbox[:len(batch)]

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        self.arm()
        selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ, "sock")
        selector.register(wake_r, selectors.EVENT_READ, "wake")
        lingering = False
        ended_at: float | None = None
        while True:
            timeouts = [t for t in (self.scan_due(), LINGER_POLL_S if lingering else None,
                                    SEND_RETRY_S if self.outbox else None) if t is not None]
            for key, _ in selector.select(min(timeouts) if timeouts else None):
                if key.data == "wake":
                    try:
                        while os.read(wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                elif not self.eof:
                    self.receive()
                    if self.eof:
                        selector.unregister(self.sock)
            due = self.scan_due()
            if due is not None and due <= 0:
                self.scan()
            self.reap()
            lingering = self.finish()
            self.flush()
            if self.eof:
                if not self.commands:
                    return 0
                if ended_at is None:
                    ended_at = time.monotonic()
                elif time.monotonic() - ended_at > EXIT_GRACE_S:
                    return 1  # something survives SIGKILL (uninterruptible); nobody listens
                lingering = True


_DEFAULTS = [s for s in range(1, 32) if s not in (signal.SIGKILL, signal.SIGSTOP)]


def _find(executable: str, env: dict[str, str]) -> str:
    """`executable` looked up in the command's own PATH, as execvp would."""
    if "/" in executable:
        return executable
    for folder in env.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(folder or ".", executable)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(errno.ENOENT, "No such file or directory", executable)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write("usage: supervisor.py PARENT_PID SOCKET_FD\n")
        return 2
    sock = socket.socket(fileno=int(argv[2]))
    os.set_inheritable(sock.fileno(), False)
    sock.setblocking(False)
    os.chdir("/")
    return Supervisor(int(argv[1]), sock).run()


if __name__ == "__main__":
    try:
        code = main(sys.argv)
    except OSError as err:
        if err.errno != errno.EPIPE:
            raise
        code = 1
    os._exit(code)
