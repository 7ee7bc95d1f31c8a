"""Bounded polling for tests: every wait ends, with a sentence saying what did not happen."""

from __future__ import annotations

import time

import pytest


def wait_for(predicate, timeout: float = 60, what: str = "condition", interval: float = 0.25):
    """Poll until `predicate()` is truthy and return it; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
