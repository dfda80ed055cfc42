"""provision: declare a cluster in YAML, render each node's cloud-config, bring it up."""

__version__ = "0.1.0"
