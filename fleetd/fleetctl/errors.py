"""Typed errors of fleetctl; `main` is the only place that prints them.

`FleetctlError` is an operation the cluster refused or could not do (exit 1);
`UsageError` is a bad command line or bad input file (exit 2).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class FleetctlError(Exception):
    """A failed operation: printed as is on stderr, exit 1."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class UsageError(FleetctlError):
    """A bad command line or input; `command` names the subcommand for the help hint."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, usage: str | None = None,
                 command: str | None = None) -> None:
        super().__init__(message)
        self.usage = usage
        self.command = command


class UnitNotFound(FleetctlError):
    def __init__(self, name: str, message: str | None = None) -> None:
        super().__init__(message or f"Unit {name} does not exist.")
        self.name = name


class UnitConflict(FleetctlError):
    """The cluster holds a different unit under the same name."""


class WaitTimeout(FleetctlError):
    """Units did not reach their target state within the allowed attempts or time."""


class ApiError(FleetctlError):
    """The API answered with an error status; `code` is the HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ConnectError(FleetctlError):
    """The API could not be reached or did not answer in time."""


class UnitFailed(FleetctlError):
    """A unit was started and systemd reports it failed; the message carries its log tail."""


class Unschedulable(FleetctlError):
    """The scheduler cannot place a unit on any machine; the message says which constraint."""
