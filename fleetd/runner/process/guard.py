"""The guard: a tiny supervisor that leads the process group of one unit command.

Run as its own program (stdlib only, started with `python3 -I -S guard.py`):

    guard.py STATUS_FD PARENT_PID EXECUTABLE ARGV0 [ARG...]

The runner starts it in a new session, so the guard leads a fresh process
group. The guard then

- asks the kernel for a signal when its parent dies (PR_SET_PDEATHSIG) and, when
  that happens (and getppid() shows the runner process really is gone, not just
  the thread that forked us), SIGKILLs every descendant and its whole group, so
  a unit never outlives a SIGKILLed fleetd (no double run after failover);
- becomes a child subreaper, so whatever the command leaves behind (`sleep &`,
  double-forked daemons, processes that moved to their own group) re-parents
  to the guard and stays findable and killable;
- spawns the command with default signal dispositions and an empty mask;
- reports on STATUS_FD: `pid N` once the command runs, `exec-error MESSAGE` if
  it could not be executed, then `exit CODE` or `signal NUMBER` when the command
  ends; it keeps reaping until no descendant is left, then exits, so the end of
  the guard means "nothing of this command is left".

SIGTERM, SIGINT and SIGHUP sent to the group (a stop) do not end the guard: the
guard outlives its command to report how it ended. The runner's SIGKILL goes to
every descendant but not to the guard, which then reaps them and exits (no
zombies left to an init that may not reap); only if that fails is the guard
killed too.
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PARENT_DEATH_SIGNAL = signal.SIGUSR1
EXIT_EXEC = 203  # systemd's exit status for "could not execute"
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def descendants(root: int) -> list[int]:
    """Every live process below `root` in the process tree (one scan of /proc)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) < 2 or fields[0] == b"Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            found.append(child)
            stack.append(child)
    return found


def kill_tree(root: int, pgid: int | None, sig: int) -> None:
    """Send `sig` to every descendant of `root` and to process group `pgid`."""
    for _ in range(3):  # again, for whatever forked while we were scanning
        pids = descendants(root)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        if not pids or sig != signal.SIGKILL:
            break
    if pgid is not None:
        try:
            os.killpg(pgid, sig)
        except OSError:
            pass


class _Guard:
    def __init__(self, status_fd: int, parent: int) -> None:
        self.status_fd = status_fd
        self.parent = parent
        self.stop_signal: int | None = None

    def report(self, line: str) -> None:
        try:
            os.write(self.status_fd, (line + "\n").encode("utf-8", "replace"))
        except OSError:
            pass  # the runner is gone; the parent-death signal takes care of the rest

    def on_parent_death(self, signum: int, frame: object) -> None:
        if os.getppid() == self.parent:
            return  # only the forking thread ended; the runner process lives on
        kill_tree(os.getpid(), None, signal.SIGKILL)
        os.killpg(0, signal.SIGKILL)
        os._exit(1)

    def on_stop(self, signum: int, frame: object) -> None:
        self.stop_signal = signum

    def arm(self) -> None:
        signal.signal(PARENT_DEATH_SIGNAL, self.on_parent_death)
        for sig in _STOP_SIGNALS:
            signal.signal(sig, self.on_stop)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, int(PARENT_DEATH_SIGNAL), 0, 0, 0) != 0:
                self.report(f"warning prctl(PR_SET_PDEATHSIG) failed: "
                            f"{os.strerror(ctypes.get_errno())}")
            libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError) as err:
            self.report(f"warning cannot watch the parent process: {err}")
        if os.getppid() != self.parent:
            os._exit(1)  # the runner died before we could watch it: run nothing

    def run(self, executable: str, argv: list[str]) -> int:
        self.arm()
        if self.stop_signal is not None:  # stopped before the command even started
            self.report(f"signal {self.stop_signal}")
            return 128 + self.stop_signal
        defaults = [s for s in range(1, 32) if s not in (signal.SIGKILL, signal.SIGSTOP)]
        try:
            main = os.posix_spawnp(executable, argv, os.environ, setsigdef=defaults,
                                   setsigmask=[])
        except (OSError, ValueError) as err:
            self.report(f"exec-error {getattr(err, 'strerror', None) or err}")
            return EXIT_EXEC
        self.report(f"pid {main}")
        if self.stop_signal is not None:  # a stop raced with the spawn: pass it on
            os.kill(main, self.stop_signal)
        code = 1
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                return code
            if pid == main:
                exit_code = os.waitstatus_to_exitcode(status)
                if exit_code >= 0:
                    self.report(f"exit {exit_code}")
                    code = exit_code
                else:
                    self.report(f"signal {-exit_code}")
                    code = 128 - exit_code


def main(argv: list[str]) -> int:
    if len(argv) < 5:
        sys.stderr.write("usage: guard.py STATUS_FD PARENT_PID EXECUTABLE ARGV0 [ARG...]\n")
        return 2
    status_fd = int(argv[1])
    os.set_inheritable(status_fd, False)
    return _Guard(status_fd, int(argv[2])).run(argv[3], argv[4:])


if __name__ == "__main__":
    os._exit(main(sys.argv))
