"""What a command runs with: the API client, output streams, a clock, a machine cache."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from fleetd.fleetctl.client import Client, parse_endpoint
from fleetd.fleetctl.errors import FleetctlError, UsageError
from fleetd.fleetctl.model import Machine, machine_legend

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import TextIO

    from fleetd.fleetctl.ssh import SshOptions


class Session:
    """One command's client, streams (stdout, stderr unless given), clock and SSH options."""

    def __init__(self, client: Client, out: TextIO | None = None, err: TextIO | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic,
                 ssh: SshOptions | None = None) -> None:
        self.client = client
        self.out = sys.stdout if out is None else out
        self.err = sys.stderr if err is None else err
        self.sleep = sleep
        self.monotonic = monotonic
        self.ssh = ssh
        self._machines: dict[str, Machine] | None = None

    def say(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def warn(self, line: str) -> None:
        self.err.write(line + "\n")
        self.err.flush()

    def machines(self, refresh: bool = False) -> dict[str, Machine]:
        """Machines by id, fetched once per invocation (again with `refresh`)."""
        if self._machines is None or refresh:
            self._machines = {m.id: m for m in self.client.machines()}
        return self._machines

    def machine(self, machine_id: str) -> Machine | None:
        """The record of one machine; a machine that joined since the last fetch is looked
        up again once."""
        if not machine_id:
            return None
        known = self.machines()
        if machine_id not in known:
            known = self.machines(refresh=True)
        return known.get(machine_id)

    def legend(self, machine_id: str, full: bool = False) -> str:
        return machine_legend(machine_id, self.machine(machine_id), full)

    def client_for(self, machine_id: str, what: str) -> Client:
        """The API of the machine running a unit (its `apiURL`), for status and journal."""
        machine = self.machine(machine_id)
        if machine is None:
            raise FleetctlError(f"machine {machine_id} that runs {what} is not in the cluster "
                                "any more; try again when it is back or the unit moved")
        if not machine.api_url:
            raise FleetctlError(f"machine {machine_legend(machine_id, machine, False)} does "
                                f"not advertise an API address (apiURL), so {what} cannot "
                                "be reached on it")
        try:
            endpoint = parse_endpoint(machine.api_url)
        except UsageError as err:
            raise FleetctlError(f"machine {machine_id} advertises a bad API address: "
                                f"{err.message}") from None
        tunnel = self.client.tunnel
        if tunnel is not None:
            from fleetd.fleetctl.ssh import via_tunnel

            if not machine.primary_ip:
                raise FleetctlError(f"machine {machine_id} that runs {what} has no address "
                                    "to reach it at through the tunnel")
            tunnel = via_tunnel(tunnel, machine.primary_ip)
        return Client(endpoint, self.client.timeout, tunnel=tunnel)
