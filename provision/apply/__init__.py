"""Declared units vs. the registry: plan, the apply lock, rolling apply, convergence."""
