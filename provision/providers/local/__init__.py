"""The local provider: each node a set of real processes on its own loopback address.

    boot.py       user-data → a node's boot plan (pure)
    units.py      the node's unit files: etcd, fleet, its own units, flanneld (pure)
    nodes.py      plans on disk: node directories, write_files, plan.json
    supervisor.py the per-cluster process that owns every node process
    control.py    start/stop/steer the supervisor; sweep up leftovers
    health.py     etcd / fleet / units probes; log excerpts
    progress.py   one line per node while waiting
    discovery.py  custom discovery's size key; a local token discovery service
    etcdbin.py    which etcd binary, and whether its version is safe
    membership.py etcd's remove + re-add of a member that lost its data (node reset)
    provider.py   up, down, status, node stop|start|reset, env
"""
