"""fleetd: a fleet-compatible cluster init system on etcd v3."""
