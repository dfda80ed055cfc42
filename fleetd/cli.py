"""`fleetd` console script: configuration errors exit 2; SIGTERM shuts down cleanly.

`fleetd announce …` is the discovery sidekick's command (fleetd/announce/).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence

from fleetd.config import ConfigError, load_config
from fleetd.wakeup import SignalSafeEvent


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["announce"]:
        from fleetd.announce.main import main as announce

        return announce(argv[1:])
    try:
        config = load_config(argv, os.environ)
    except ConfigError as err:
        print(f"fleetd: {err}", file=sys.stderr)
        return 2
    level = logging.WARNING if config.verbosity <= 0 else (
        logging.INFO if config.verbosity == 1 else logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from fleetd.daemon import Server
    from fleetd.runner.base import RunnerError

    try:
        server = Server(config)
    except (OSError, ValueError, RunnerError) as err:
        print(f"fleetd: cannot start: {err}", file=sys.stderr)
        return 2
    done = SignalSafeEvent()  # set by signal handlers: a threading.Event can deadlock there

    def on_signal(signum, frame) -> None:  # signal handler signature
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    while not done.wait(0.5):
        if not all(t.is_alive() for t in server.threads):
            print("fleetd: an internal loop stopped unexpectedly; exiting", file=sys.stderr)
            server.shutdown()
            return 1
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
