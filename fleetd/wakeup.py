"""An event that a signal handler may set.

`threading.Event.set()` takes a lock. A handler that calls it runs on the main thread
between bytecodes, possibly while that thread is already inside `Event.set()` for an
earlier signal: the second call then waits forever for a lock its own thread holds.
Seen here: fleetd hung for its supervisor's whole stop timeout when two SIGTERMs
arrived back to back. `SignalSafeEvent.set()` only assigns a flag and writes a byte to
a non-blocking pipe, so it is safe in handlers and threads alike; `wait()` selects on
the pipe. Meant for one waiting thread (the main loop).
"""

from __future__ import annotations

import os
import select


class SignalSafeEvent:
    def __init__(self) -> None:
        self._flag = False
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def set(self) -> None:
        self._flag = True
        try:
            os.write(self._write, b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is pending already (or we are closing)

    def is_set(self) -> bool:
        return self._flag

    def clear(self) -> None:
        self._flag = False
        self._drain()

    def wait(self, timeout: float | None = None) -> bool:
        """Until set or `timeout`; True when set."""
        if not self._flag:
            try:
                select.select([self._read], [], [], timeout)
            except InterruptedError:
                pass
            self._drain()
        return self._flag

    def close(self) -> None:
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass

    def _drain(self) -> None:
        try:
            while os.read(self._read, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
