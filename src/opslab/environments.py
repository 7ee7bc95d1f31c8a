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

import os
import tempfile
from pathlib import Path

import yaml

from opslab import cluster, rollouts
from opslab.config import CHECKOUT
from opslab.waiting import NotYet, eventually

INFRASTRUCTURE = CHECKOUT / "infrastructure"
ENVIRONMENTS = ("staging", "production")
PART_OF = "app.kubernetes.io/part-of=mlops-platform"
READY_TIMEOUT = 120  # s; a fresh copy is ready in about 10 s on two cores


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
    apps = cluster.apps()

    def look() -> None:
        pending = [f"{kind} {obj.metadata.name}" for kind, listing in (
            ("Deployment", apps.list_namespaced_deployment), ("StatefulSet", apps.list_namespaced_stateful_set))
            for obj in listing(namespace).items if not rollouts.rolled_out(obj)]
        if pending:
            raise NotYet(f"{namespace}: not rolled out: {', '.join(pending)}")
    eventually(look, timeout)


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
    core = cluster.core()
    for namespace in namespaces:
        if namespace in map(home_namespace, ENVIRONMENTS):
            raise ValueError(f"refusing to delete the guide's own namespace {namespace}")
        try:
            core.delete_namespace(namespace)
        except cluster.ApiError as error:
            if error.status != 404:
                raise

    def look() -> None:
        remaining = set(namespaces) & {n.metadata.name for n in core.list_namespace().items}
        if remaining:
            raise NotYet(f"namespaces still terminating: {', '.join(sorted(remaining))}")
    if wait:
        eventually(look, timeout)


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
    def look() -> None:
        try:
            phase = cluster.core().read_namespace(namespace).status.phase
        except cluster.ApiError as error:
            if error.status == 404:
                return
            raise
        if phase == "Terminating":
            raise NotYet(f"namespace {namespace} is still being deleted")
    eventually(look, timeout)


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
