"""Shared fixtures: one running lab for the whole session, started if it was not already up."""

from __future__ import annotations

import os
import uuid

import kubernetes
import pytest

from opslab import cluster
from opslab.lab.lab import Lab
from tests.waiting import wait_for  # noqa: F401 - shared with the test modules


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


def _namespace_of_its_own(api):
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


@pytest.fixture
def namespace(api):
    """A namespace of the test's own, deleted afterwards."""
    yield from _namespace_of_its_own(api)


@pytest.fixture
def other_namespace(api):
    """A second namespace of the test's own, for tests that two namespaces keep apart."""
    yield from _namespace_of_its_own(api)
