"""The process runner: units as child processes of one supervisor per node, no systemd."""

from fleetd.runner.process.runner import ProcessRunner

__all__ = ["ProcessRunner"]
