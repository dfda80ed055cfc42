"""The `provision` command line: one module per group of commands."""

from provision.cli.root import main

__all__ = ["main"]
