"""What apply says when units cannot be scheduled: grouped by reason, a few units named."""

from __future__ import annotations

import pytest

from provision.apply.run import natural, unschedulable_text


def test_a_thousand_units_for_one_reason_make_one_short_line():
    stuck = {f"job@{i}.service": "no machines in the cluster" for i in range(1, 1001)}
    text = unschedulable_text(stuck)
    assert text == ("1000 units cannot be scheduled: no machines in the cluster "
                    "(job@1.service, job@2.service, job@3.service and 997 more)")
    assert len(text) < 200


@pytest.mark.parametrize("stuck, expected", [
    pytest.param({"a.service": "no machine has metadata disk=nvme"},
                 "1 unit cannot be scheduled: no machine has metadata disk=nvme (a.service)",
                 id="one unit"),
    pytest.param({"a.service": "r1", "b.service": "r2", "c.service": "r2"},
                 "3 units cannot be scheduled: r2 (b.service, c.service); r1 (a.service)",
                 id="the biggest group first"),
    pytest.param({f"w@{i}.service": "r" for i in (10, 2, 1, 30)},
                 "4 units cannot be scheduled: r (w@1.service, w@2.service, w@10.service and "
                 "1 more)", id="instances in numeric order"),
])
def test_reasons_are_grouped(stuck, expected):
    assert unschedulable_text(stuck) == expected


def test_natural_order_sorts_numbers_by_value():
    names = ["job@10.service", "job@2.service", "job@1.service", "api.service"]
    assert sorted(names, key=natural) == ["api.service", "job@1.service", "job@2.service",
                                          "job@10.service"]
