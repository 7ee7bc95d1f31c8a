"""Releases and rollouts of the platform's Deployments: which revision runs, rolling a release
out, a copy beside the stable one (a canary, a green), and when a rollout is complete."""

from __future__ import annotations

import kubernetes
import yaml

from opslab import cluster
from opslab.waiting import NotYet, eventually

IMAGES = "registry.local/mlops"
REVISION = "deployment.kubernetes.io/revision"
CHANGE_CAUSE = "kubernetes.io/change-cause"
ROLLOUT_TIMEOUT = 120  # s


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


def progress(deployment) -> str:
    """How far a Deployment's rollout has got, in words."""
    status = deployment.status
    return (f"{status.updated_replicas or 0} of {deployment.spec.replicas} replicas updated, "
            f"{status.available_replicas or 0} available, {status.replicas or 0} pods in all")


def wait_rolled_out(namespace: str, deployment: str, timeout: float = ROLLOUT_TIMEOUT) -> None:
    def look() -> None:
        current = cluster.apps().read_namespaced_deployment(deployment, namespace)
        if not rolled_out(current):
            raise NotYet(f"deployment {deployment} in {namespace} has not rolled out: {progress(current)}")
    eventually(look, timeout)


def image(tag: str, program: str = "api-server") -> str:
    """The image reference of a release: `registry.local/mlops/api-server:1.5.0`."""
    return f"{IMAGES}/{program}:{tag}"


def set_release(namespace: str, deployment: str, tag: str, *, wait: bool = True,
                timeout: float = ROLLOUT_TIMEOUT) -> None:
    """Roll `deployment` (whose container has the Deployment's name) to release `tag`, recording
    the change-cause `kubectl rollout history` shows, as the deploy scripts do."""
    cluster.apps().patch_namespaced_deployment(deployment, namespace, {
        "metadata": {"annotations": {CHANGE_CAUSE: f"{deployment} {tag}"}},
        "spec": {"template": {"spec": {"containers": [{"name": deployment, "image": image(tag, deployment)}]}}},
    })
    if wait:
        wait_rolled_out(namespace, deployment, timeout=timeout)


def replica_sets(namespace: str, deployment: str) -> list[kubernetes.client.V1ReplicaSet]:
    """The ReplicaSets a Deployment owns: one per pod template it has rolled out and still keeps."""
    apps = cluster.apps()
    owner = apps.read_namespaced_deployment(deployment, namespace)
    selector = ",".join(f"{k}={v}" for k, v in owner.spec.selector.match_labels.items())
    listed = apps.list_namespaced_replica_set(namespace, label_selector=selector)
    return [rs for rs in listed.items if any(ref.uid == owner.metadata.uid for ref in rs.metadata.owner_references or ())]


def revision(namespace: str, deployment: str) -> dict:
    """The Deployment's current revision: its number, its ReplicaSet and that ReplicaSet's
    `pod-template-hash`, which names the pod template (a rollback returns to an earlier one)."""
    number = cluster.apps().read_namespaced_deployment(deployment, namespace).metadata.annotations.get(REVISION)
    for replica_set in replica_sets(namespace, deployment):
        if replica_set.metadata.annotations.get(REVISION) == number:
            return {"revision": int(number), "replica_set": replica_set.metadata.name,
                    "pod_template_hash": replica_set.metadata.labels["pod-template-hash"],
                    "images": [c.image for c in replica_set.spec.template.spec.containers]}
    raise LookupError(f"deployment {deployment} in {namespace} has no ReplicaSet for its revision {number}")


def deploy_beside(namespace: str, tag: str, *, track: str = "canary", stable: str = "api-server",
                  replicas: int = 1, timeout: float = ROLLOUT_TIMEOUT) -> str:
    """A Deployment `<stable>-<track>` beside the stable one: the same pod template with release
    `tag` and label `track: <track>` (a canary, a green copy). The program's Service selects on
    `app` only, so it sends the copy its share of the traffic. Waits until the copy is ready;
    returns its name."""
    template = cluster.apps().read_namespaced_deployment(stable, namespace).spec.template
    labels = {**template.metadata.labels, "track": track}
    name = f"{stable}-{track}"
    copy = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels,
                     "annotations": {CHANGE_CAUSE: f"{name} {tag}"}},
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
