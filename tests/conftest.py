"""Shared fixtures: one running lab for the whole session, started if it was not already up."""

from __future__ import annotations

import os
import time
import uuid

import kubernetes
import pytest

from opslab import cluster
from opslab.lab.lab import Lab


@pytest.fixture(scope="session")
def lab():
    lab = Lab()
    was_running = bool(lab.pids())  # someone's lab: bring it up to health, leave it running
    lab.up()
    os.environ["KUBECONFIG"] = str(lab.spec.paths.kubeconfig)
    yield lab
    if not was_running:
        lab.down()


@pytest.fixture(scope="session")
def api(lab) -> kubernetes.client.ApiClient:
    return cluster.api_client()


@pytest.fixture
def namespace(api):
    """A namespace of the test's own, deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


def wait_for(predicate, timeout: float = 60, interval: float = 0.25, what: str = "condition"):
    """Poll until `predicate()` is truthy and return it; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
