"""The cluster's baseline: recorded once after `up`, restored by `reset`.

The record is every object the lab's trainees could change, as it stood when the lab was
first ready. `reset` deletes what was added since, recreates what was deleted, and restores
what was changed; workloads whose pod template changed are recreated so that their rollout
history starts over.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ApiException, ConflictError, NotFoundError

TIMEOUT = 15
# Kept by the control plane itself, or by owners that the garbage collector follows.
SKIPPED_RESOURCES = {
    ("", "events"), ("events.k8s.io", "events"), ("coordination.k8s.io", "leases"),
    ("", "endpoints"), ("discovery.k8s.io", "endpointslices"), ("", "componentstatuses"),
    ("apps", "controllerrevisions"), ("", "bindings"), ("resource.k8s.io", "resourceslices"),
}
SYSTEM_NAMESPACES = {"kube-system", "kube-public", "kube-node-lease"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}
SERVER_FIELDS = ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields",
                 "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds")


def _key(obj: dict) -> str:
    meta = obj["metadata"]
    return f"{obj['apiVersion']}/{obj['kind']}/{meta.get('namespace', '')}/{meta['name']}"


def _desired(obj: dict) -> dict:
    """The object as a client would write it: no status, no server-kept metadata."""
    obj = copy.deepcopy(obj)
    obj.pop("status", None)
    for name in SERVER_FIELDS:
        obj["metadata"].pop(name, None)
    return obj


def _is_system(obj: dict) -> bool:
    meta = obj["metadata"]
    return (meta.get("namespace") in SYSTEM_NAMESPACES or meta["name"].startswith("system:")
            or (meta.get("labels") or {}).get("kubernetes.io/bootstrapping") == "rbac-defaults"
            or "apf.kubernetes.io/autoupdate-spec" in (meta.get("annotations") or {})
            or meta["name"] in SYSTEM_NAMESPACES | {"default"} and obj["kind"] == "Namespace")


def _resources(client: DynamicClient):
    for resource in client.resources.search():
        if not resource.name or "/" in resource.name or (resource.group, resource.name) in SKIPPED_RESOURCES:
            continue
        if not {"list", "create", "delete"} <= set(resource.verbs or ()):
            continue
        if resource.kind.endswith("List") or resource.kind.endswith("Review"):
            continue
        yield resource


def _objects(client: DynamicClient) -> dict[str, tuple[object, dict]]:
    """Every listable object that no owner keeps, by key."""
    # The client's discovery is cached in a file shared by every process (kubernetes.dynamic's
    # osrcp-*.json): resources of a CRD installed since it was written would be missed, and their
    # objects neither recorded nor, at `reset`, removed (a trainee's PrometheusRule, a Certificate).
    client.resources.invalidate_cache()
    found = {}
    for resource in _resources(client):
        try:
            items = resource.get(_request_timeout=TIMEOUT).to_dict().get("items", [])
        except (ApiException, NotFoundError):
            continue  # a resource served by an aggregated API that is not up
        for item in items:
            item.setdefault("apiVersion", resource.group_version)
            item.setdefault("kind", resource.kind)
            if not item["metadata"].get("ownerReferences"):
                found[_key(item)] = (resource, item)
    return found


def _recorded(obj: dict) -> dict:
    """What `reset` recreates: a node keeps its capacity, which only a create can set."""
    desired = _desired(obj)
    if obj["kind"] == "Node":
        desired["status"] = {k: obj["status"][k] for k in ("capacity", "allocatable") if k in obj.get("status", {})}
    return desired


def record(client: DynamicClient, path: Path, manifests: str, namespaces: set[str]) -> int:
    """Write the baseline, marked with the digest of the manifests it was made from. Only the lab's
    own `namespaces` belong to it: whatever else runs at that moment (a test's namespace) does not."""
    def owned(obj: dict) -> bool:
        name, namespace = obj["metadata"]["name"], obj["metadata"].get("namespace")
        return namespace in namespaces if namespace else (obj["kind"] != "Namespace" or name in namespaces)
    objects = {key: _recorded(obj) for key, (_, obj) in _objects(client).items() if owned(obj)}
    path.write_text(json.dumps({"manifests": manifests, "objects": objects}, indent=1, sort_keys=True))
    return len(objects)


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def _resource_for(client: DynamicClient, obj: dict):
    return client.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])


def _wait_gone(client: DynamicClient, pending: list[tuple[object, dict]], limit: float) -> list[str]:
    deadline = time.monotonic() + limit
    while pending and time.monotonic() < deadline:
        still = []
        for resource, obj in pending:
            try:
                resource.get(name=obj["metadata"]["name"], namespace=obj["metadata"].get("namespace"),
                             _request_timeout=TIMEOUT)
                still.append((resource, obj))
            except NotFoundError:
                pass
        pending = still
        if pending:
            time.sleep(0.2)
    return [_key(obj) for _, obj in pending]


def _replace(resource, want: dict) -> None:
    """Write `want` over the live object, retrying when a controller updated it in between."""
    meta = want["metadata"]
    for attempt in range(5):
        live = resource.get(name=meta["name"], namespace=meta.get("namespace"), _request_timeout=TIMEOUT)
        body = _desired(want)
        body["metadata"]["resourceVersion"] = live.metadata.resourceVersion
        if live.status:  # a Node's PUT would otherwise wipe its addresses until kwok's next heartbeat
            body["status"] = live.to_dict()["status"]
        try:
            resource.replace(body=body, _request_timeout=TIMEOUT)
            return
        except ConflictError:
            time.sleep(0.1 * (attempt + 1))
    raise TimeoutError(f"{_key(want)} kept changing while being restored")


def _delete_namespace(client: DynamicClient, name: str) -> None:
    """Delete a namespace and finish the job at once.

    The namespace controller waits five seconds before it starts and re-checks pods only after
    half their grace period; doing the same deletions here, with no grace, takes well under one.
    """
    namespaces = client.resources.get(api_version="v1", kind="Namespace")
    namespaces.delete(name=name, _request_timeout=TIMEOUT)  # Terminating: nothing new gets in
    contents = [r for r in _resources(client) if r.namespaced and "deletecollection" in (r.verbs or ())]
    for resource in contents:
        # DELETE on the collection's own path: the client's `delete` insists on a selector.
        client.request("DELETE", resource.path(namespace=name),
                       body={"gracePeriodSeconds": 0, "propagationPolicy": "Background"},
                       _request_timeout=TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    while any(resource.get(namespace=name, _request_timeout=TIMEOUT).items for resource in contents):
        if time.monotonic() > deadline:
            return  # leave the rest to the namespace controller
        time.sleep(0.1)
    try:
        live = namespaces.get(name=name, _request_timeout=TIMEOUT).to_dict()
    except NotFoundError:
        return
    live["spec"]["finalizers"] = []
    client.request("PUT", f"/api/v1/namespaces/{name}/finalize", body=live, _request_timeout=TIMEOUT)


def restore(client: DynamicClient, baseline: dict[str, dict], wait: float = 60) -> dict[str, list[str]]:
    """Bring the cluster back to `baseline`; returns what was deleted, created and restored."""
    current = _objects(client)
    report = {"deleted": [], "created": [], "restored": []}
    extra_namespaces = {obj["metadata"]["name"] for key, (_, obj) in current.items()
                        if obj["kind"] == "Namespace" and key not in baseline and not _is_system(obj)}
    to_delete, to_create = [], []
    for key, (resource, obj) in current.items():
        if obj["metadata"].get("namespace") in extra_namespaces:
            continue  # goes with its namespace
        if key not in baseline:
            if not _is_system(obj):
                to_delete.append((resource, obj))
            continue
        want = baseline[key]
        if obj["metadata"].get("deletionTimestamp"):
            to_create.append(want)  # being deleted: wait for it, then recreate
            to_delete.append((resource, obj))
        elif _desired(obj) != _desired(want):
            if obj["kind"] in WORKLOADS:
                to_delete.append((resource, obj))
                to_create.append(want)
            else:
                _replace(resource, want)
                report["restored"].append(key)
    to_create += [want for key, want in baseline.items() if key not in current]
    for resource, obj in to_delete:
        meta = obj["metadata"]
        try:
            if obj["kind"] == "Namespace":
                _delete_namespace(client, meta["name"])
            else:
                resource.delete(name=meta["name"], namespace=meta.get("namespace"),
                                body={"propagationPolicy": "Background"}, _request_timeout=TIMEOUT)
        except NotFoundError:
            pass
        report["deleted"].append(_key(obj))
    stuck = _wait_gone(client, to_delete, wait)
    if stuck:
        raise TimeoutError(f"still being deleted after {wait:.0f}s: {', '.join(stuck)}")
    # Namespaces first, so that what lives in them can be created.
    for want in sorted(to_create, key=lambda o: o["kind"] != "Namespace"):
        resource = _resource_for(client, want)
        try:
            resource.create(body=want, namespace=want["metadata"].get("namespace"), _request_timeout=TIMEOUT)
        except ConflictError:  # made meanwhile by a controller (kube-root-ca.crt in a new namespace)
            _replace(resource, want)
        report["created"].append(_key(want))
    return report
