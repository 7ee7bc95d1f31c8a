"""Copies of the MLOps platform, made from the repository's overlays, in any namespace.

`ensure("mlops-staging", "staging")` is what `deploy-staging.sh` does; `ensure("mlops-staging-ab12cd",
"staging")` makes an independent copy for a grader or a CI run. A copy differs from its overlay in
two things only, both set with kustomize in a temporary folder layered on the overlay: its
namespace, and its public host (`<namespace>.<the overlay's host>`), so that its Ingress and its
certificate do not compete with the real environment's at the gateway.

Everything goes through `opslab.cluster`, so this works against any cluster that has the
platform's cluster-wide parts (`infrastructure/cluster`) installed.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import socket
import ssl
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kubernetes
import pandas as pd
import yaml
from cryptography import x509

from opslab import cluster, prometheus
from opslab.config import setting

INFRASTRUCTURE = Path(__file__).resolve().parents[2] / "infrastructure"
ENVIRONMENTS = ("staging", "production")
IMAGES = "registry.local/mlops"
PART_OF = "app.kubernetes.io/part-of=mlops-platform"
READY_TIMEOUT = 120  # s; a fresh copy is ready in about 10 s on two cores
POLL = 0.5  # s
REVISION = "deployment.kubernetes.io/revision"


def home_namespace(environment: str) -> str:
    """The namespace the guide uses for an environment: `mlops-staging`, `mlops-production`."""
    if environment not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {environment!r}; the overlays are {', '.join(ENVIRONMENTS)}")
    return f"mlops-{environment}"


def namespace_for(environment: str, suffix: str = "") -> str:
    """The guide's namespace, or with a suffix a namespace of its own: `mlops-staging-ab12cd`."""
    return home_namespace(environment) + (f"-{suffix}" if suffix else "")


def render(environment: str, namespace: str | None = None) -> list[dict]:
    """The overlay's objects as they would be applied to `namespace` (default: its own)."""
    with _kustomization(environment, namespace or home_namespace(environment)) as folder:
        text = cluster.kubectl("kustomize", folder).stdout
    return [obj for obj in yaml.safe_load_all(text) if obj]


def ensure(namespace: str, environment: str, *, wait: bool = True, timeout: float = READY_TIMEOUT) -> None:
    """Put the platform, exactly as the environment's overlay describes it, into `namespace`.

    Server-side apply takes back every field the overlay sets (images, replicas, flags, the
    Certificate), and Deployments and Services of the platform that the overlay does not hold
    (a canary, a blue-green Service) are deleted; then, unless `wait` is False, it waits until
    every workload has rolled out.
    """
    _wait_not_terminating(namespace, timeout)
    with _kustomization(environment, namespace) as folder:
        applied = cluster.kubectl("apply", "--server-side", "--force-conflicts", "-k", folder, "-o", "name",
                                  timeout=60).stdout.split()
    _delete_extras(namespace, applied)
    if wait:
        wait_ready(namespace, timeout=timeout)


def wait_ready(namespace: str, timeout: float = READY_TIMEOUT) -> None:
    """Wait until every Deployment and StatefulSet in `namespace` has rolled out."""
    apps = kubernetes.client.AppsV1Api(cluster.api_client())
    deadline = time.monotonic() + timeout
    while True:
        pending = [f"{kind} {obj.metadata.name}" for kind, listing in (
            ("Deployment", apps.list_namespaced_deployment), ("StatefulSet", apps.list_namespaced_stateful_set))
            for obj in listing(namespace, _request_timeout=cluster.REQUEST_TIMEOUT).items if not rolled_out(obj)]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{namespace}: not rolled out after {timeout:.0f}s: {', '.join(pending)}")
        time.sleep(POLL)


def rolled_out(workload) -> bool:
    """True when a Deployment or StatefulSet (a client model) runs its current template on every
    replica, all of them available, and nothing of an older revision is left: what
    `kubectl rollout status` waits for."""
    spec, status = workload.spec, workload.status
    if (status.observed_generation or 0) < workload.metadata.generation:
        return False
    wanted = spec.replicas if spec.replicas is not None else 1
    if isinstance(workload, kubernetes.client.V1StatefulSet):
        return ((status.ready_replicas or 0) == wanted and (status.updated_replicas or 0) == wanted
                and status.current_revision == status.update_revision)
    return ((status.updated_replicas or 0) == wanted and (status.replicas or 0) == wanted
            and (status.available_replicas or 0) == wanted)


def image(tag: str, program: str = "api-server") -> str:
    """The image reference of a release: `registry.local/mlops/api-server:1.5.0`."""
    return f"{IMAGES}/{program}:{tag}"


def set_release(namespace: str, deployment: str, tag: str, *, wait: bool = True,
                timeout: float = READY_TIMEOUT) -> None:
    """Roll `deployment` (whose container has the Deployment's name) to release `tag`, recording
    the change-cause `kubectl rollout history` shows, as the deploy scripts do."""
    apps = kubernetes.client.AppsV1Api(cluster.api_client())
    apps.patch_namespaced_deployment(deployment, namespace, {
        "metadata": {"annotations": {"kubernetes.io/change-cause": f"{deployment} {tag}"}},
        "spec": {"template": {"spec": {"containers": [{"name": deployment, "image": image(tag, deployment)}]}}},
    }, _request_timeout=cluster.REQUEST_TIMEOUT)
    if wait:
        wait_rolled_out(namespace, deployment, timeout=timeout)


def wait_rolled_out(namespace: str, deployment: str, timeout: float = READY_TIMEOUT) -> None:
    apps = kubernetes.client.AppsV1Api(cluster.api_client())
    deadline = time.monotonic() + timeout
    while not rolled_out(apps.read_namespaced_deployment(deployment, namespace,
                                                         _request_timeout=cluster.REQUEST_TIMEOUT)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"deployment {deployment} in {namespace} did not roll out within {timeout:.0f}s")
        time.sleep(POLL)


def replica_sets(namespace: str, deployment: str) -> list[kubernetes.client.V1ReplicaSet]:
    """The ReplicaSets a Deployment owns: one per pod template it has rolled out and still keeps."""
    apps = kubernetes.client.AppsV1Api(cluster.api_client())
    owner = apps.read_namespaced_deployment(deployment, namespace, _request_timeout=cluster.REQUEST_TIMEOUT)
    selector = ",".join(f"{k}={v}" for k, v in owner.spec.selector.match_labels.items())
    listed = apps.list_namespaced_replica_set(namespace, label_selector=selector, _request_timeout=cluster.REQUEST_TIMEOUT)
    return [rs for rs in listed.items if any(ref.uid == owner.metadata.uid for ref in rs.metadata.owner_references or ())]


def revision(namespace: str, deployment: str) -> dict:
    """The Deployment's current revision: its number, its ReplicaSet and that ReplicaSet's
    `pod-template-hash`, which names the pod template (a rollback returns to an earlier one)."""
    apps = kubernetes.client.AppsV1Api(cluster.api_client())
    number = apps.read_namespaced_deployment(deployment, namespace, _request_timeout=cluster.REQUEST_TIMEOUT
                                             ).metadata.annotations.get(REVISION)
    for replica_set in replica_sets(namespace, deployment):
        if replica_set.metadata.annotations.get(REVISION) == number:
            return {"revision": int(number), "replica_set": replica_set.metadata.name,
                    "pod_template_hash": replica_set.metadata.labels["pod-template-hash"],
                    "images": [c.image for c in replica_set.spec.template.spec.containers]}
    raise LookupError(f"deployment {deployment} in {namespace} has no ReplicaSet for its revision {number}")


def deploy_beside(namespace: str, tag: str, *, track: str = "canary", stable: str = "api-server",
                  replicas: int = 1, timeout: float = READY_TIMEOUT) -> str:
    """A Deployment `<stable>-<track>` beside the stable one: the same pod template with release
    `tag` and label `track: <track>` (a canary, a green copy). The program's Service selects on
    `app` only, so it sends the copy its share of the traffic. Waits until the copy is ready;
    returns its name."""
    apps = kubernetes.client.AppsV1Api(cluster.api_client())
    template = apps.read_namespaced_deployment(stable, namespace, _request_timeout=cluster.REQUEST_TIMEOUT).spec.template
    labels = {**template.metadata.labels, "track": track}
    name = f"{stable}-{track}"
    copy = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels,
                     "annotations": {"kubernetes.io/change-cause": f"{name} {tag}"}},
        "spec": {"replicas": replicas,
                 "selector": {"matchLabels": {"app": labels["app"], "track": track}},
                 "template": {"metadata": {"labels": labels, "annotations": template.metadata.annotations},
                              "spec": cluster.api_client().sanitize_for_serialization(template.spec)}},
    }
    [container] = [c for c in copy["spec"]["template"]["spec"]["containers"] if c["name"] == stable]
    container["image"] = image(tag, stable)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump(copy))
    wait_rolled_out(namespace, name, timeout=timeout)
    return name


def predictions(namespace: str, by: str = "track", where: str = "", over: str | None = None) -> pd.DataFrame:
    """The predictions the api-server's pods in `namespace` answered, from Prometheus, grouped
    `by` a label of theirs (`track`, `pod`): requests, server errors (5xx), their ratio, and the
    p95 latency that histogram_quantile reads from the latency buckets.

    A pod's counters start at zero when it starts, so their values now count everything the
    running pods have answered. With `over` (a PromQL duration such as "15m"), each series'
    highest value within that time is taken instead, which still counts pods that stopped
    meanwhile. `where` adds label matchers (`pod=~"api-server-5d4f.*"`). The PromQL asked is in
    the table's `attrs["promql"]`.
    """
    matchers = f'namespace="{namespace}", app="api-server", path="/predict"' + (f", {where}" if where else "")

    def series(metric: str, extra: str = "") -> str:
        selected = f"{metric}{{{matchers}{extra}}}"
        return f"max_over_time({selected}[{over}])" if over else selected

    server_errors = ', status=~"5.."'
    queries = {
        "requests": f"sum by ({by}) ({series('http_requests_total')})",
        "errors": f"sum by ({by}) ({series('http_requests_total', server_errors)})",
        "p95_seconds": f"histogram_quantile(0.95, sum by ({by}, le) ({series('http_request_duration_seconds_bucket')}))",
    }
    answers = {}
    for name, promql in queries.items():
        frame = prometheus.query(promql)
        answers[name] = frame.set_index(by)["value"] if by in frame else pd.Series(dtype=float)
    table = pd.DataFrame({"requests": answers["requests"],
                          "errors": answers["errors"].reindex(answers["requests"].index, fill_value=0.0)})
    table["error_ratio"] = table.errors / table.requests
    table["p95_seconds"] = answers["p95_seconds"].reindex(table.index)
    table.attrs["promql"] = queries  # what was asked, for whoever wants to ask it themselves
    return table.rename_axis(by)


def api_host(namespace: str) -> str:
    """The public host of the platform in `namespace`, read from its Ingress."""
    networking = kubernetes.client.NetworkingV1Api(cluster.api_client())
    ingress = networking.read_namespaced_ingress("mlops-platform", namespace, _request_timeout=cluster.REQUEST_TIMEOUT)
    return ingress.spec.rules[0].host


def certificate_manifest(namespace: str, environment: str, folder: Path) -> Path:
    """The file that re-creates the platform's Certificate in `namespace`: the guide's own
    `infrastructure/<environment>/security/certificates.yaml` for the guide's namespace, else
    that Certificate as the copy has it, written into `folder`."""
    if namespace == home_namespace(environment):
        return INFRASTRUCTURE / environment / "security" / "certificates.yaml"
    [certificate] = [o for o in render(environment, namespace) if o["kind"] == "Certificate"]
    path = Path(folder) / "certificates.yaml"
    path.write_text(yaml.safe_dump(certificate, sort_keys=False))
    return path


def delete(*namespaces: str, wait: bool = True, timeout: float = 60) -> None:
    """Delete copies of the platform (a grader's, CI's) and, when `wait`, wait until they are gone."""
    core = kubernetes.client.CoreV1Api(cluster.api_client())
    for namespace in namespaces:
        if namespace in map(home_namespace, ENVIRONMENTS):
            raise ValueError(f"refusing to delete the guide's own namespace {namespace}")
        try:
            core.delete_namespace(namespace, _request_timeout=cluster.REQUEST_TIMEOUT)
        except kubernetes.client.ApiException as error:
            if error.status != 404:
                raise
    deadline = time.monotonic() + timeout
    remaining = set(namespaces) if wait else set()
    while remaining:
        remaining &= {n.metadata.name for n in core.list_namespace(_request_timeout=cluster.REQUEST_TIMEOUT).items}
        if remaining and time.monotonic() > deadline:
            raise TimeoutError(f"namespaces still terminating after {timeout:.0f}s: {', '.join(sorted(remaining))}")
        time.sleep(POLL if remaining else 0)


class _kustomization:
    """A temporary folder whose kustomization is the overlay moved to `namespace`, with its own
    host when that is not the guide's namespace."""

    def __init__(self, environment: str, namespace: str):
        self.environment, self.namespace = environment, namespace
        self.folder = tempfile.TemporaryDirectory(prefix="opslab-platform-")

    def __enter__(self) -> str:
        overlay = INFRASTRUCTURE / self.environment
        home = home_namespace(self.environment)
        kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                         "resources": [os.path.relpath(overlay, self.folder.name)],  # kustomize wants it relative
                         "namespace": self.namespace}
        if self.namespace != home:
            host = f"{self.namespace}.{self._overlay_host(overlay)}"
            kustomization["patches"] = [
                _replace("Ingress", "mlops-platform", {"/spec/rules/0/host": host, "/spec/tls/0/hosts/0": host}),
                _replace("Certificate", "mlops-platform-cert", {"/spec/dnsNames/0": host}),
            ]
        (Path(self.folder.name) / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
        return self.folder.name

    def __exit__(self, *_) -> None:
        self.folder.cleanup()

    @staticmethod
    def _overlay_host(overlay: Path) -> str:
        text = cluster.kubectl("kustomize", str(overlay)).stdout
        [ingress] = [o for o in yaml.safe_load_all(text) if o and o["kind"] == "Ingress"]
        return ingress["spec"]["rules"][0]["host"]


def _wait_not_terminating(namespace: str, timeout: float) -> None:
    """A namespace being deleted (a previous run's clean-up) accepts nothing new: wait until it is gone."""
    core = kubernetes.client.CoreV1Api(cluster.api_client())
    deadline = time.monotonic() + timeout
    while True:
        try:
            phase = core.read_namespace(namespace, _request_timeout=cluster.REQUEST_TIMEOUT).status.phase
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return
            raise
        if phase != "Terminating":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"namespace {namespace} is still being deleted after {timeout:.0f}s")
        time.sleep(POLL)


def _replace(kind: str, name: str, values: dict[str, str]) -> dict:
    operations = [{"op": "replace", "path": path, "value": value} for path, value in values.items()]
    return {"target": {"kind": kind, "name": name}, "patch": yaml.safe_dump(operations)}


def _delete_extras(namespace: str, applied: list[str]) -> None:
    """Delete the platform's Deployments and Services in `namespace` that the overlay does not hold."""
    kept = set(applied)  # `deployment.apps/api-server`, `service/api-server`, …
    listed = cluster.kubectl("get", "deployments.apps,services", "-n", namespace, "-l", PART_OF, "-o", "name").stdout
    extras = [name for name in listed.split() if name not in kept]
    if extras:
        cluster.kubectl("delete", *extras, "-n", namespace, "--ignore-not-found", "--wait=false")


# --- the platform's public entry: HTTPS through the Ingress gateway ------------------------------
TLS_SECRET = "mlops-platform-tls"


def lab_ca(namespace: str) -> str:
    """The PEM certificate of the CA that issued the namespace's TLS certificate (`ca.crt` of its
    TLS Secret): public, and what a client verifies the gateway with."""
    core = kubernetes.client.CoreV1Api(cluster.api_client())
    secret = core.read_namespaced_secret(TLS_SECRET, namespace, _request_timeout=cluster.REQUEST_TIMEOUT)
    return base64.b64decode(secret.data["ca.crt"]).decode()


def gateway_address() -> tuple[str, int]:
    """Where the Ingress gateway listens: `INGRESS_ADDRESS` (`127.0.0.1:8443` in the lab)."""
    host, _, port = setting("INGRESS_ADDRESS").rpartition(":")
    return host.strip("[]"), int(port)


def served_certificate(host: str, ca_pem: str, address: tuple[str, int] | None = None) -> x509.Certificate:
    """The certificate the gateway serves for `host`, after verifying it with `ca_pem` for that
    host: raises ssl.SSLCertVerificationError when it does not verify."""
    context = ssl.create_default_context(cadata=ca_pem)
    with socket.create_connection(address or gateway_address(), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


class _Connection(http.client.HTTPSConnection):
    """HTTPS to `host` (SNI, Host header, certificate check) at the gateway's address, as
    `curl --resolve` does: no DNS entry needed."""

    def __init__(self, host: str, address: tuple[str, int], context: ssl.SSLContext, timeout: float):
        super().__init__(host, address[1], context=context, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = self._context.wrap_socket(socket.create_connection(self.address, self.timeout),
                                              server_hostname=self.host)


def call(namespace: str, path: str, body: dict | None = None, timeout: float = 10) -> tuple[int, dict, float]:
    """One request to the platform in `namespace` through its Ingress, verified with the lab's CA:
    GET, or POST when there is a JSON `body`. Returns status, JSON answer and seconds taken."""
    connection = _Connection(api_host(namespace), gateway_address(),
                             ssl.create_default_context(cadata=lab_ca(namespace)), timeout)
    return _exchange(connection, path, body)


def send_predictions(namespace: str, count: int = 100, concurrency: int = 4) -> pd.DataFrame:
    """`count` predictions for random flowers through the Ingress, `concurrency` at a time, as
    users would send them: one row per request, with its status and seconds."""
    host, address = api_host(namespace), gateway_address()
    context = ssl.create_default_context(cadata=lab_ca(namespace))
    flowers = random.Random(count)

    def one(_) -> tuple[int, float]:
        features = [round(flowers.uniform(low, high), 1) for low, high in ((4.3, 7.9), (2.0, 4.4), (1.0, 6.9), (0.1, 2.5))]
        try:
            status, _, seconds = _exchange(_Connection(host, address, context, 10), "/predict", {"features": features})
        except OSError:
            status, seconds = 0, float("nan")  # no answer at all
        return status, seconds

    with ThreadPoolExecutor(concurrency) as pool:
        return pd.DataFrame(pool.map(one, range(count)), columns=["status", "seconds"])


def _exchange(connection: http.client.HTTPSConnection, path: str, body: dict | None) -> tuple[int, dict, float]:
    started = time.perf_counter()
    try:
        if body is None:
            connection.request("GET", path)
        else:
            connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        text = response.read()
    finally:
        connection.close()
    try:
        answer = json.loads(text)
    except ValueError:
        answer = {"text": text.decode(errors="replace")}
    return response.status, answer, time.perf_counter() - started
