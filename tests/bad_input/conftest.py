"""Bad-input suite: every case is bounded in time and counted; the count is printed once."""

from __future__ import annotations

import pytest

from tests.bad_input.support import TALLY, bounded, tally

CASE_BOUND_S = 30  # a whole test (a hypothesis test runs many examples under it)


@pytest.fixture(autouse=True)
def _bound_and_count(request):
    # Hypothesis tests count their own examples; every other test item is one case.
    if not getattr(request.function, "is_hypothesis_test", False):
        tally()
    with bounded(CASE_BOUND_S):
        yield


def pytest_terminal_summary(terminalreporter) -> None:  # pytest hook
    if TALLY["cases"]:
        terminalreporter.write_line(f"BAD-INPUT-CASES {TALLY['cases']}")
