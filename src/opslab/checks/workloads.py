"""Checks on workloads: which release a Deployment runs, whether its rollout finished, whether
it is back on an earlier revision, whether it is stopped."""

from __future__ import annotations

from opslab import cluster, rollouts
from opslab.checks.core import NotYet, read, settle


def _deployment(namespace: str, name: str):
    return read(cluster.apps().read_namespaced_deployment, name, namespace,
                missing=f"There is no Deployment {name} in namespace {namespace}.")


def _tags(deployment) -> list[str]:
    return [c.image.rpartition(":")[2] for c in deployment.spec.template.spec.containers]


def deployment_runs(namespace: str, name: str, image_tag: str, replicas: int | None = None,
                    timeout: float = 120) -> None:
    """Deployment `name` runs release `image_tag` on all its replicas (`replicas` of them, when
    given), every one available, none of an older release left."""
    def look():
        deployment = _deployment(namespace, name)
        tags = _tags(deployment)
        if set(tags) != {image_tag}:
            raise AssertionError(f"Deployment {name} in {namespace} is set to release {', '.join(tags)}, "
                                 f"not {image_tag}: deploy {image_tag} to it.")
        if replicas is not None and deployment.spec.replicas != replicas:
            raise AssertionError(f"Deployment {name} in {namespace} wants {deployment.spec.replicas} replicas, "
                                 f"not {replicas}.")
        if not rollouts.rolled_out(deployment):
            raise NotYet(f"Deployment {name} in {namespace} has not finished rolling out {image_tag}: "
                         f"{rollouts.progress(deployment)}.")
    settle(look, timeout)


def rollout_complete(namespace: str, name: str, timeout: float = 120) -> None:
    """Deployment `name` runs its current template on every replica, all available."""
    def look():
        deployment = _deployment(namespace, name)
        if not rollouts.rolled_out(deployment):
            raise NotYet(f"Deployment {name} in {namespace} has not finished its rollout: "
                         f"{rollouts.progress(deployment)}.")
    settle(look, timeout)


def deployment_on_revision_with_image(namespace: str, name: str, image_tag: str,
                                      pod_template_hash: str | None = None, timeout: float = 120) -> None:
    """Deployment `name` has rolled out release `image_tag`, on the pod template
    `pod_template_hash` when given (the revision that was good before), however it got there:
    `kubectl rollout undo`, `kubectl set image` or the Python client."""
    deployment_runs(namespace, name, image_tag, timeout=timeout)
    current = rollouts.revision(namespace, name)
    if pod_template_hash and current["pod_template_hash"] != pod_template_hash:
        raise AssertionError(f"Deployment {name} in {namespace} runs {image_tag} from a new pod template "
                             f"({current['replica_set']}), not the good revision's ReplicaSet "
                             f"(pod-template-hash {pod_template_hash}): roll back rather than redeploy.")


def deployment_stopped(namespace: str, name: str, timeout: float = 30) -> None:
    """Deployment `name` is gone or scaled to zero, and none of its pods runs."""
    def look():
        try:
            deployment = _deployment(namespace, name)
        except AssertionError:
            return  # gone
        if deployment.spec.replicas:
            raise AssertionError(f"Deployment {name} in {namespace} still wants {deployment.spec.replicas} "
                                 f"replica(s): scale it to 0 or delete it.")
        selector = ",".join(f"{k}={v}" for k, v in deployment.spec.selector.match_labels.items())
        running = cluster.core().list_namespaced_pod(namespace, label_selector=selector).items
        if running:
            raise NotYet(f"{len(running)} pod(s) of Deployment {name} in {namespace} are still running.")
    settle(look, timeout)
