"""The nspawn provider: each node a real systemd machine, booted by systemd-nspawn.

    layout.py    names, addresses and files of a cluster's machines; nspawn's argv (pure)
    machines.py  one machine: boot it detached, find its PID 1, run in it, power it off
    provider.py  up, down, status, node stop|start, env (the ClusterProvider)

Every machine boots the cached machine image (provision.image) read-only with a
copy-on-write overlay of its own (state kept across power-off), on a bridge inside a
network namespace that `up` creates, so the cluster's network (e.g. 172.17.8.0/24)
exists only there. Its user-data is applied at boot by the image's
provision-cloudinit.service, which runs before etcd2 and fleet, as on CoreOS.
"""
