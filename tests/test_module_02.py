"""Module 02 in the guide's own namespaces, as a trainee in JupyterLab runs it (no suffix).

The module contract (test_module_contract.py) runs every module in namespaces of its own; this
is the other way in: the notebook then changes the shared mlops-staging and mlops-production, and
`opslab lab reset` is how a class starts over.
"""

from __future__ import annotations

import json

import pytest

from opslab import cli, environments, rollouts
from opslab.config import CHECKOUT

pytestmark = pytest.mark.timeout(600)

MODULE = "02-deployment"


def api_server(environment: str) -> tuple[int, list[str]]:
    current = rollouts.revision(environments.namespace_for(environment), "api-server")
    return current["revision"], current["images"]


def test_the_module_runs_in_the_guides_own_namespaces_and_reset_puts_them_back(lab, tmp_path):
    before = {environment: api_server(environment) for environment in environments.ENVIRONMENTS}
    try:
        code = cli.main(["run", MODULE, "--no-lab", "--root", str(CHECKOUT), "--output", str(tmp_path),
                         "--param", "namespace_suffix="])
        [result] = json.loads((tmp_path / "report.json").read_text())["notebooks"]
        assert (code, result["status"]) == (0, "passed"), result
        assert api_server("staging")[0] > before["staging"][0]  # Lab 1 rolled out a release there
    finally:
        lab.reset()
        for environment in environments.ENVIRONMENTS:
            environments.wait_ready(environments.namespace_for(environment))
    after = {environment: api_server(environment) for environment in environments.ENVIRONMENTS}
    assert {env: images for env, (_, images) in after.items()} == {env: images for env, (_, images) in before.items()}
    assert after["staging"][0] == 1  # recreated by reset: its rollout history starts over
