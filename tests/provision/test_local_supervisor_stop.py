"""How the local cluster's supervisor stops its nodes, with nodes that only record what they
are asked (the real sequence runs in tests/integration/test_local_provider.py)."""

from __future__ import annotations

import threading

from provision.providers.local import state
from provision.providers.local.supervisor import Supervisor


class FakeNode:
    def __init__(self, name: str, leader: bool, events: list[str],
                 leader_stopped: threading.Event, probed: list[str],
                 probes_done: threading.Event) -> None:
        self.probed = probed
        self.probes_done = probes_done
        self.name = name
        self.leader = leader
        self.events = events
        self.leader_stopped = leader_stopped
        self.etcd_stopping = False
        self.looks = 0

    def quiesce(self) -> None:
        # Fleet takes a while to stop: the leader probes run meanwhile, not after it.
        self.probes_done.wait(10)
        self.events.append(f"quiesce {self.name}" +
                           ("" if self.probes_done.is_set() else " (before the probes)"))

    def leads_etcd(self) -> bool:
        self.probed.append(self.name)
        if len(self.probed) == 3:
            self.probes_done.set()
        return self.leader

    def begin_etcd_stop(self) -> None:
        self.events.append(f"etcd stop {self.name}")
        self.etcd_stopping = True

    def etcd_peer_listener_closed(self) -> bool:
        if not self.etcd_stopping:
            return False
        self.looks += 1
        return self.looks > 2  # closes a moment after the signal

    def stop(self) -> None:
        if self.leader:
            assert all(n.startswith("quiesce") or n.startswith("etcd stop")
                       for n in self.events), self.events
            self.events.append(f"stop {self.name}")
            self.leader_stopped.set()
            return
        # An etcd follower ends only once the leader's connections to it are gone.
        ended = self.leader_stopped.wait(10)
        self.events.append(f"stop {self.name}" + ("" if ended else " (waited it out)"))


def test_the_leader_stops_once_followers_closed_their_peer_listener_not_once_they_ended(
        tmp_path):
    """Also: who leads etcd is asked while fleet stops, not after."""
    state.write_plan(tmp_path, {"cluster": "t", "nodes": []})
    supervisor = Supervisor(tmp_path)
    events: list[str] = []
    leader_stopped, probes_done = threading.Event(), threading.Event()
    probed: list[str] = []
    supervisor.nodes = {name: FakeNode(name, name == "core-02", events, leader_stopped,
                                       probed, probes_done)
                        for name in ("core-01", "core-02", "core-03")}
    try:
        supervisor.stop_nodes()
    finally:
        supervisor.pool.shutdown()
    assert sorted(events[:3]) == ["quiesce core-01", "quiesce core-02", "quiesce core-03"]
    assert sorted(events[3:5]) == ["etcd stop core-01", "etcd stop core-03"]
    assert events[5] == "stop core-02"  # the leader, while the followers still end
    assert sorted(events[6:]) == ["stop core-01", "stop core-03"]
    assert all(supervisor.nodes[n].looks > 2 for n in ("core-01", "core-03"))
