"""Desired-state changes committed together (fleetd/registry/together.py), on a real etcd:
changes queued behind a commit in flight go in one transaction; a change whose job moved
meanwhile makes that transaction write nothing and each change is then written alone, so
none is lost and each caller hears only about its own unit."""

from __future__ import annotations

import threading
import uuid

import pytest

from fleetd.job import JobState
from fleetd.registry.etcd import Etcd
from fleetd.registry.registry import NotFound, Registry
from fleetd.registry.together import DesiredStates
from fleetd.unit.unitfile import parse_unit_file
from tests.support.etcd import wait_for

SLEEP = parse_unit_file("[Service]\nExecStart=/bin/sleep 100\n")


class HeldFirstCommit(Registry):
    """A registry whose first transaction of desired states waits for the test's word,
    so that the other callers queue up behind it, whatever the machine's speed."""

    def __init__(self, etcd: Etcd, prefix: str) -> None:
        super().__init__(etcd, prefix)
        self.release = threading.Event()
        self.together: list[list[str]] = []
        self.holding = False  # from `set_concurrently` on

    def set_desired_together(self, changes):
        if self.holding:
            self.together.append([record.job.name for record, _ in changes])
            if len(self.together) == 1:
                assert self.release.wait(30)
        return super().set_desired_together(changes)


@pytest.fixture
def registry(etcd_server):
    made = HeldFirstCommit(Etcd([etcd_server.url]), f"/together-{uuid.uuid4().hex[:8]}/")
    yield made
    made.release.set()
    made.etcd.close()


def jobs(registry: Registry, count: int) -> list:
    for i in range(count):
        registry.create_job(f"job@{i}.service", SLEEP, JobState.LOADED)
    _, found = registry.jobs()
    return [found[f"job@{i}.service"] for i in range(count)]


def set_concurrently(writer: DesiredStates, registry: HeldFirstCommit, changes: list
                     ) -> dict[str, BaseException | None]:
    """The first change commits alone and is held there until every other one is queued."""
    outcome: dict[str, BaseException | None] = {}

    def one(seen, desired) -> None:
        try:
            writer.set(seen, desired)
            outcome[seen.job.name] = None
        except BaseException as err:
            outcome[seen.job.name] = err

    threads = [threading.Thread(target=one, args=change) for change in changes]
    registry.holding = True
    threads[0].start()
    wait_for(lambda: registry.together, 30, message="first commit in flight")
    for thread in threads[1:]:
        thread.start()
    wait_for(lambda: len(writer._queue) == len(changes) - 1, 30, message="others queued")
    registry.release.set()
    for thread in threads:
        thread.join(30)
    return outcome


def test_changes_queued_behind_a_commit_go_in_one_transaction(registry):
    records = jobs(registry, 8)
    writer = DesiredStates(registry)
    outcome = set_concurrently(writer, registry, [(r, JobState.LAUNCHED) for r in records])
    assert outcome == {r.job.name: None for r in records}
    assert registry.together == [["job@0.service"], [f"job@{i}.service" for i in range(1, 8)]]
    _, stored = registry.jobs()
    assert {n: j.job.desired for n, j in stored.items()} == {
        r.job.name: JobState.LAUNCHED for r in records}


def test_a_job_moved_or_destroyed_meanwhile_costs_its_caller_alone(registry):
    records = jobs(registry, 4)
    registry.set_desired("job@2.service", JobState.INACTIVE)  # after its caller read it
    registry.destroy_job("job@3.service")
    writer = DesiredStates(registry)
    outcome = set_concurrently(writer, registry, [(r, JobState.LAUNCHED) for r in records])
    assert {n for n, err in outcome.items() if err is None} == {
        "job@0.service", "job@1.service", "job@2.service"}
    assert isinstance(outcome["job@3.service"], NotFound)
    _, stored = registry.jobs()
    assert {n: j.job.desired for n, j in stored.items()} == {
        "job@0.service": JobState.LAUNCHED, "job@1.service": JobState.LAUNCHED,
        "job@2.service": JobState.LAUNCHED}  # re-read and written: the caller's word last


def test_one_job_twice_in_the_queue_is_written_twice_in_order(registry):
    record, other = jobs(registry, 2)
    writer = DesiredStates(registry)
    outcome = set_concurrently(writer, registry, [
        (other, JobState.INACTIVE), (record, JobState.LAUNCHED), (record, JobState.INACTIVE)])
    assert set(outcome.values()) == {None}
    assert registry.together[0] == ["job@1.service"]
    assert all(names == ["job@0.service"] for names in registry.together[1:])
    _, stored = registry.jobs()
    assert stored["job@0.service"].job.desired is JobState.INACTIVE
