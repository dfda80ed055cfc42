"""SignalSafeEvent: set from signal handlers arriving in bursts, the main thread never hangs.

With threading.Event in the same child (the main thread busy in set()/clear(), a handler
calling set()), a burst of signals deadlocked or blew the stack in about 1 run of 5 here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

from fleetd.wakeup import SignalSafeEvent

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = textwrap.dedent("""
    import signal
    from fleetd.wakeup import SignalSafeEvent
    event = SignalSafeEvent()
    got = []
    def handler(signum, frame):
        got.append(signum)
        event.set()
    signal.signal(signal.SIGUSR1, handler)
    print("ready", flush=True)
    while len(got) < 200:
        event.set()    # the main thread spends its time inside set()/clear(),
        event.clear()  # exactly where a handler re-enters them
    print("done", flush=True)
""")


def test_set_wait_clear_across_threads():
    event = SignalSafeEvent()
    assert not event.wait(0.01)
    threading.Timer(0.05, event.set).start()
    assert event.wait(5)
    assert event.is_set()
    event.clear()
    assert not event.is_set() and not event.wait(0)
    event.close()


def test_a_burst_of_signals_never_hangs_the_main_thread():
    for _ in range(3):
        child = subprocess.Popen([sys.executable, "-c", CHILD], text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env={**os.environ, "PYTHONPATH": REPO})
        try:
            assert child.stdout.readline().strip() == "ready"
            deadline = time.monotonic() + 15
            while child.poll() is None and time.monotonic() < deadline:
                try:
                    os.kill(child.pid, signal.SIGUSR1)
                except ProcessLookupError:
                    break
                time.sleep(0.001)  # pacing the burst, not waiting for an outcome
            # After "done" the interpreter is exiting: a signal still in flight may end it.
            assert child.wait(5) in (0, -signal.SIGUSR1), child.stderr.read()[-2000:]
            assert child.stdout.read().strip() == "done"
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
