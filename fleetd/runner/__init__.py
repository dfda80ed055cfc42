"""Runners: what executes units on a machine (process runner; systemd later)."""
