"""Checks on configuration: what a ConfigMap holds, and whether the pods that read it run with it.

A ConfigMap reaches a container through its environment (`env[].valueFrom.configMapKeyRef`, or
`envFrom`), and a container's environment is fixed when it starts: a changed ConfigMap reaches a
pod only when the pod (re)starts. So "the configuration is fixed" means both: the ConfigMap holds
the right value, and every pod of every workload that reads the key was started with it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from opslab import cluster, rollouts
from opslab.checks.core import NotYet, settle


def _matches(value, expected: str, ignore_case: bool) -> bool:
    if value is None:
        return False
    return value.lower() == expected.lower() if ignore_case else value == expected


def configmap_holds(namespace: str, configmap: str, key: str, expected: str, *, ignore_case: bool = False) -> None:
    """ConfigMap `configmap` has `key` set to `expected` (without regard to case, when `ignore_case`)."""
    try:
        data = cluster.core().read_namespaced_config_map(configmap, namespace).data or {}
    except cluster.ApiError as error:
        if error.status == 404:
            raise AssertionError(f"There is no ConfigMap {configmap} in {namespace}: put it back as the "
                                 f"overlay describes it.") from None
        raise
    if key not in data:
        raise AssertionError(f"ConfigMap {configmap} in {namespace} has no key {key}: the workloads that read it "
                             f"need it.")
    if not _matches(data[key], expected, ignore_case):
        raise AssertionError(f"ConfigMap {configmap} in {namespace} still has {key}={data[key]!r}, which is not "
                             f"what the environment's overlay says: fix that value.")


def consumers(namespace: str, configmap: str, key: str) -> list[tuple[object, str, str]]:
    """The (workload, container, variable) triples whose pod template reads `key` of `configmap`:
    by `configMapKeyRef`, or by `envFrom` (the variable is then the key, after its prefix)."""
    apps = cluster.apps()
    found = []
    for workload in [*apps.list_namespaced_deployment(namespace).items, *apps.list_namespaced_stateful_set(namespace).items]:
        for container in workload.spec.template.spec.containers:
            for source in container.env_from or []:
                if source.config_map_ref and source.config_map_ref.name == configmap:
                    found.append((workload, container.name, (source.prefix or "") + key))
            for variable in container.env or []:
                ref = variable.value_from.config_map_key_ref if variable.value_from else None
                if ref and ref.name == configmap and ref.key == key:
                    found.append((workload, container.name, variable.name))
    return found


def pod_variable(namespace: str, pod: str, container: str, variable: str) -> str | None:
    """The value of one environment variable inside a running container (`kubectl exec … sh -c`),
    as the process was started with it; None when it is not set. Only that variable is read."""
    result = cluster.kubectl("exec", pod, "-n", namespace, "-c", container, "--", "sh", "-c",
                             f'printf "%s:%s" "${{{variable}+set}}" "${variable}"', check=False, timeout=20)
    if result.returncode != 0:
        raise NotYet(f"Cannot look inside pod {pod} yet: {result.stderr.strip()[:200]}")
    given, _, value = result.stdout.partition(":")
    return value if given == "set" else None


def pods_run_with(namespace: str, configmap: str, key: str, expected: str, *, ignore_case: bool = False,
                  timeout: float = 120) -> None:
    """Every workload that reads `key` of `configmap` has rolled out, and each of its pods runs with
    `expected` in the variable the key feeds: a fixed ConfigMap has reached the pods (they were
    restarted after the fix)."""
    readers = consumers(namespace, configmap, key)
    if not readers:
        raise AssertionError(f"No workload in {namespace} reads {key} from ConfigMap {configmap}.")

    def look():
        for workload, container, variable in readers:
            kind, name = type(workload).__name__.removeprefix("V1"), workload.metadata.name
            read = getattr(cluster.apps(), f"read_namespaced_{'deployment' if kind == 'Deployment' else 'stateful_set'}")
            current = read(name, namespace)
            if not rollouts.rolled_out(current):
                status = current.status
                raise NotYet(f"{kind} {name} in {namespace} has not finished rolling out "
                             f"({status.updated_replicas or 0} of {current.spec.replicas} replicas updated, "
                             f"{status.available_replicas or 0} available, {status.replicas or 0} pods in all): "
                             f"restart it after fixing the ConfigMap (`kubectl rollout restart`) and wait for "
                             f"the rollout.")
            selector = ",".join(f"{k}={v}" for k, v in current.spec.selector.match_labels.items())
            pods = [p for p in cluster.core().list_namespaced_pod(namespace, label_selector=selector).items
                    if not p.metadata.deletion_timestamp]
            with ThreadPoolExecutor(3) as pool:  # an exec takes a second or two: a few at a time
                values = list(pool.map(pod_variable, [namespace] * len(pods), [p.metadata.name for p in pods],
                                       [container] * len(pods), [variable] * len(pods)))
            for pod, value in zip(pods, values):
                if not _matches(value, expected, ignore_case):
                    raise AssertionError(f"Pod {pod.metadata.name} still runs with {variable}={value!r}: a "
                                         f"container reads its environment when it starts, so restart the "
                                         f"{kind} {name} (`kubectl rollout restart {kind.lower()}/{name}`).")
    settle(look, timeout)
