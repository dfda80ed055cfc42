"""coreos-cloudinit's job on a real systemd machine: apply a node's user-data."""
