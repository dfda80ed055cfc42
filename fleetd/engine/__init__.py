"""The engine: decides where units run.

`scheduler.schedule(ClusterView) -> Plan` is pure (no etcd, clock, logging or randomness):
keep or unschedule existing assignments, then place every wanted unit on the least-loaded
feasible machine, and give a reason for every decision and every unit left pending.
`feasible` holds the per-constraint checkers (MachineID, MachineOf, MachineMetadata,
Conflicts/Replaces) and the indexes that keep them O(1): metadata classes and per-machine
occupancy. The engine loop that reads the registry and writes plans sits around this.
"""
