"""Signals as the CLI's long commands want them: SIGTERM ends a command the way Ctrl-C does
(so what it started is cleaned up, and a lock it holds is released at once), and a cleanup
is not cut short by a second Ctrl-C. Both act only in the main thread, where Python
delivers signals; elsewhere they run the body as it is."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt like Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def uninterrupted(cleanup: Callable[[], object]) -> None:
    """Run a cleanup that a second Ctrl-C must not cut short."""
    if threading.current_thread() is not threading.main_thread():
        cleanup()
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        cleanup()
    finally:
        signal.signal(signal.SIGINT, previous)
