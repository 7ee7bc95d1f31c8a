"""The cluster as pandas tables: pods, deployments, events, rollout history.

What `kubectl get` shows, as frames a notebook can filter, join and plot. Every read goes
through `opslab.cluster` (KUBECONFIG, else the running lab) and is bounded by its timeout.
"""

from __future__ import annotations

import pandas as pd

from opslab import cluster
from opslab.rollouts import CHANGE_CAUSE, REVISION


def _listing(api, namespaced: str, everywhere: str, namespace: str | None, **kwargs):
    if namespace:
        return getattr(api, namespaced)(namespace, **kwargs).items
    return getattr(api, everywhere)(**kwargs).items


def _age(created) -> pd.Timedelta | None:
    return (pd.Timestamp.now(tz="UTC") - pd.Timestamp(created)).floor("s") if created else None


def _pod_status(pod) -> str:
    """STATUS as `kubectl get pods` shows it: Terminating, a container's waiting reason
    (CrashLoopBackOff, ContainerCreating, …), else the phase."""
    if pod.metadata.deletion_timestamp:
        return "Terminating"
    for status in pod.status.container_statuses or []:
        if status.state and status.state.waiting and status.state.waiting.reason:
            return status.state.waiting.reason
    return pod.status.phase


def pods(namespace: str | None = None, selector: str | None = None) -> pd.DataFrame:
    """A row per pod: namespace, name, ready (`2/2`), status, restarts, age, ip, node, images, app."""
    items = _listing(cluster.core(), "list_namespaced_pod", "list_pod_for_all_namespaces", namespace,
                     **({"label_selector": selector} if selector else {}))
    rows = []
    for pod in items:
        statuses = pod.status.container_statuses or []
        rows.append({
            "namespace": pod.metadata.namespace, "name": pod.metadata.name,
            "ready": f"{sum(s.ready for s in statuses)}/{len(pod.spec.containers)}",
            "status": _pod_status(pod), "restarts": sum(s.restart_count for s in statuses),
            "age": _age(pod.metadata.creation_timestamp), "ip": pod.status.pod_ip, "node": pod.spec.node_name,
            "images": ", ".join(c.image for c in pod.spec.containers),
            "app": (pod.metadata.labels or {}).get("app"),
        })
    columns = ["namespace", "name", "ready", "status", "restarts", "age", "ip", "node", "images", "app"]
    return pd.DataFrame(rows, columns=columns).sort_values(["namespace", "name"], ignore_index=True)


def deployments(namespace: str | None = None) -> pd.DataFrame:
    """A row per Deployment: ready (`3/3`), up to date, available, images, revision, age."""
    rows = []
    for deployment in _listing(cluster.apps(), "list_namespaced_deployment", "list_deployment_for_all_namespaces", namespace):
        spec, status = deployment.spec, deployment.status
        rows.append({
            "namespace": deployment.metadata.namespace, "name": deployment.metadata.name,
            "ready": f"{status.ready_replicas or 0}/{spec.replicas}", "up_to_date": status.updated_replicas or 0,
            "available": status.available_replicas or 0,
            "images": ", ".join(c.image for c in spec.template.spec.containers),
            "revision": int((deployment.metadata.annotations or {}).get(REVISION, 0)),
            "age": _age(deployment.metadata.creation_timestamp),
        })
    columns = ["namespace", "name", "ready", "up_to_date", "available", "images", "revision", "age"]
    return pd.DataFrame(rows, columns=columns).sort_values(["namespace", "name"], ignore_index=True)


def events(namespace: str | None = None, warnings_only: bool = False) -> pd.DataFrame:
    """A row per Event, oldest first: last seen, type, reason, object (`Pod/api-server-…`),
    message, count."""
    items = _listing(cluster.core(), "list_namespaced_event", "list_event_for_all_namespaces", namespace,
                     **({"field_selector": "type=Warning"} if warnings_only else {}))
    rows = [{
        "last_seen": pd.Timestamp(e.last_timestamp or e.event_time or e.metadata.creation_timestamp),
        "namespace": e.metadata.namespace, "type": e.type, "reason": e.reason,
        "object": f"{e.involved_object.kind}/{e.involved_object.name}", "message": e.message,
        "count": e.count or 1,
    } for e in items]
    columns = ["last_seen", "namespace", "type", "reason", "object", "message", "count"]
    return pd.DataFrame(rows, columns=columns).sort_values("last_seen", ignore_index=True)


def rollout_history(namespace: str, deployment: str) -> pd.DataFrame:
    """`kubectl rollout history` as a table: a row per revision still kept (a ReplicaSet of
    the Deployment), with its change-cause, images, when it was made, and which one runs now."""
    apps = cluster.apps()
    current = apps.read_namespaced_deployment(deployment, namespace)
    uid = current.metadata.uid
    running = (current.metadata.annotations or {}).get(REVISION)
    rows = []
    for replica_set in apps.list_namespaced_replica_set(namespace).items:
        if not any(owner.uid == uid for owner in replica_set.metadata.owner_references or []):
            continue
        annotations = replica_set.metadata.annotations or {}
        rows.append({
            "revision": int(annotations.get(REVISION, 0)), "change_cause": annotations.get(CHANGE_CAUSE),
            "images": ", ".join(c.image for c in replica_set.spec.template.spec.containers),
            "created": pd.Timestamp(replica_set.metadata.creation_timestamp),
            "replica_set": replica_set.metadata.name, "replicas": replica_set.status.replicas or 0,
            "current": annotations.get(REVISION) == running,
        })
    columns = ["revision", "change_cause", "images", "created", "replica_set", "replicas", "current"]
    return pd.DataFrame(rows, columns=columns).sort_values("revision", ignore_index=True)


def ready_endpoints(namespace: str, service: str) -> pd.DataFrame:
    """A row per endpoint of a Service, from its EndpointSlices: pod, address, node, ready."""
    slices = cluster.discovery().list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={service}").items
    rows = [{"pod": e.target_ref.name if e.target_ref else None, "address": ", ".join(e.addresses),
             "node": e.node_name, "ready": bool(e.conditions and e.conditions.ready)}
            for s in slices for e in s.endpoints or []]
    columns = ["pod", "address", "node", "ready"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame[frame.ready].sort_values("pod", ignore_index=True)
