"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.localenv import Env


@pytest.fixture
def env() -> Iterator[Env]:
    """One test's local cluster files and state root; afterwards, proof that no process of
    it outlived the test."""
    environment = Env()
    try:
        yield environment
    finally:
        environment.close()
