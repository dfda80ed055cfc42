"""The agent's pure decision: desired (registry) vs. current (runner) → ordered tasks."""

from __future__ import annotations

import pytest

from fleetd.agent.reconcile import Action, Current, Desired, Task, plan_tasks
from fleetd.job import JobState
from fleetd.runner.base import UnitStatus

RUNNING = UnitStatus("loaded", "active", "running")
STOPPED = UnitStatus("loaded", "inactive", "dead")
FAILED = UnitStatus("loaded", "failed", "failed")


def want(state: str, digest: str = "h1") -> Desired:
    return Desired(digest, JobState(state))


def have(status: UnitStatus, started: bool, digest: str = "h1") -> Current:
    return Current(digest, status, started)


def actions(tasks: list[Task]) -> list[tuple[str, str]]:
    return [(t.action.value, t.unit) for t in tasks]


ROWS = [
    ("nothing-to-do", {}, {}, []),
    ("new-launched-unit-loads-then-starts", {"a": want("launched")}, {},
     [("load", "a"), ("start", "a")]),
    ("new-loaded-unit-only-loads", {"a": want("loaded")}, {}, [("load", "a")]),
    ("inactive-unit-is-not-loaded", {"a": want("inactive")}, {}, []),
    ("running-as-wanted", {"a": want("launched")}, {"a": have(RUNNING, True)}, []),
    ("unassigned-unit-is-unloaded", {}, {"a": have(RUNNING, True)}, [("unload", "a")]),
    ("desired-inactive-unloads", {"a": want("inactive")}, {"a": have(RUNNING, True)},
     [("unload", "a")]),
    ("launched-to-loaded-stops", {"a": want("loaded")}, {"a": have(RUNNING, True)},
     [("stop", "a")]),
    ("loaded-to-launched-starts", {"a": want("launched")}, {"a": have(STOPPED, False)},
     [("start", "a")]),
    ("failed-unit-is-not-restarted-by-the-agent", {"a": want("launched")},
     {"a": have(FAILED, True)}, []),
    ("finished-oneshot-is-not-rerun", {"a": want("launched")}, {"a": have(STOPPED, True)}, []),
    ("changed-content-is-replaced-and-restarted", {"a": want("launched", "h2")},
     {"a": have(RUNNING, True, "h1")}, [("unload", "a"), ("load", "a"), ("start", "a")]),
    ("changed-content-of-loaded-unit-is-not-started", {"a": want("loaded", "h2")},
     {"a": have(STOPPED, False, "h1")}, [("unload", "a"), ("load", "a")]),
    ("stops-come-before-starts", {"b": want("launched"), "c": want("loaded")},
     {"a": have(RUNNING, True), "c": have(RUNNING, True)},
     [("unload", "a"), ("stop", "c"), ("load", "b"), ("start", "b")]),
]


@pytest.mark.parametrize("desired,current,expected", [r[1:] for r in ROWS],
                         ids=[r[0] for r in ROWS])
def test_plan_tasks(desired, current, expected):
    assert actions(plan_tasks(desired, current)) == expected


def test_load_carries_the_hash_and_every_task_a_reason():
    tasks = plan_tasks({"a": want("launched", "abc")}, {})
    assert tasks[0] == Task(Action.LOAD, "a", "scheduled here", "abc")
    assert all(t.reason for t in tasks)
