"""Bounded polling for tests: opslab's one wait, failing the test with a sentence saying what did
not happen."""

from __future__ import annotations

import pytest

from opslab.waiting import wait_until


def wait_for(predicate, timeout: float = 60, what: str = "condition", interval: float = 0.25):
    """Poll until `predicate()` is truthy and return it; fail the test after `timeout` seconds."""
    try:
        return wait_until(predicate, what, timeout, interval=interval)
    except TimeoutError as error:
        pytest.fail(str(error))
