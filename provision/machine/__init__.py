"""coreos-cloudinit's job on a real systemd machine: apply a node's user-data.

    config.py     user-data text -> MachineConfig, or every problem positioned (pure)
    services.py   etcd2/fleet/flanneld: stock units + 20-cloudinit.conf drop-ins (pure)
    addresses.py  the machine's addresses for $private_ipv4/$public_ipv4 (pure)
    planner.py    MachineConfig + MachineState -> ordered actions (pure)
    seed.py       what a provider writes before a machine's first boot (pure)
    state.py      reads the machine (files, accounts, units over D-Bus)
    perform.py    acts on it (files, useradd/usermod, hostname, systemd over D-Bus)
    applier.py    parse -> read -> plan -> act, one pass at a time
    cli.py        `provision cloudinit --from-file PATH`
    units/        provision-cloudinit.service: the applier at boot
"""
