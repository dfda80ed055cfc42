"""Running fleetctl's ssh command lines (built by `fleetd.fleetctl.ssh`).

`RelayConnection` is an HTTP connection whose socket is one `ssh` session relaying to
the fleet API on the tunnel host: a socketpair, one end the ssh process's stdin and
stdout. ssh's own messages (host key refused, permission denied) go to our stderr as
they come. `run_ssh` runs `fleetctl ssh`'s command line in the foreground.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
from collections.abc import Sequence

from fleetd.fleetctl.errors import FleetctlError

REAP_TIMEOUT = 5.0


class RelayConnection(http.client.HTTPConnection):
    def __init__(self, argv: Sequence[str], timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._argv = list(argv)
        self._process: subprocess.Popen | None = None

    def connect(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            self._process = subprocess.Popen(self._argv, stdin=theirs, stdout=theirs,
                                             close_fds=True)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(self.timeout)
        self.sock = ours

    def close(self) -> None:
        super().close()
        process, self._process = self._process, None
        if process is None:
            return
        try:
            process.wait(timeout=REAP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_ssh(argv: Sequence[str]) -> int:
    """`fleetctl ssh`: ssh in the foreground on our terminal; its exit status (the
    remote command's, or 255 when ssh itself failed)."""
    try:
        return subprocess.run(list(argv), check=False).returncode
    except FileNotFoundError:
        raise FleetctlError("ssh is not installed; apt-get install openssh-client") from None
