"""Module 2, deployment procedures: the canary rule, and the helpers its lessons reuse.

    from opslab.modules import deployment
    deployment.overlay_differences()            # staging against production, secrets hidden
    deployment.surge_bounds(10, "25%", "25%")   # (13, 8)
"""

from __future__ import annotations

import math
import time

import pandas as pd

from opslab import cluster, environments, rollouts, service_levels, tables
from opslab.checks import workloads
from opslab.checks.core import NotYet, settle

# The canary rule: promote only at or below both limits, measured on the canary's own predictions.
CANARY_RULE = {"error_ratio": 0.02, "p95_seconds": 0.25}
CANARY_MIN_REQUESTS = 20


# --- Concepts ----------------------------------------------------------------------------------
def _leaves(value, path=""):
    """Every leaf of a manifest as (dotted path, value)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}[{index}]")
    else:
        yield path, value


def _fields(environment: str) -> pd.Series:
    """The overlay's fields by (kind, name, path), without the environment's own name; a Secret's
    values are replaced by a digest, compared but never shown."""
    found = {}
    for manifest in environments.render(environment):
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        for path, value in _leaves(manifest):
            if path.endswith(("namespace", "labels.environment")) or kind == "Namespace":
                continue
            if kind == "Secret" and path.startswith("data."):
                value = hash(value)
            found[(kind, name, path)] = value
    return pd.Series(found)


def overlay_differences() -> pd.DataFrame:
    """Every field in which the staging and production overlays differ; Secrets' values hidden."""
    overlays = pd.DataFrame({"staging": _fields("staging"), "production": _fields("production")})
    differences = overlays[overlays.staging.ne(overlays.production)].astype(object)
    differences.loc[differences.index.get_level_values(0) == "Secret"] = "(secret: differs, not shown)"
    return differences.rename_axis(["kind", "name", "field"])


def pods_of(value, replicas: int, round_up: bool) -> int:
    """maxSurge or maxUnavailable as a number of pods: a percentage is of `replicas`, rounded."""
    if isinstance(value, str) and value.endswith("%"):
        exact = replicas * int(value[:-1]) / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value)


def surge_bounds(replicas: int, max_surge, max_unavailable) -> tuple[int, int]:
    """The most pods a rolling update may have, and the fewest available it allows."""
    return (replicas + pods_of(max_surge, replicas, round_up=True),
            replicas - pods_of(max_unavailable, replicas, round_up=False))


def old_and_new(namespace: str, deployment: str = "api-server") -> dict[str, int]:
    """Pods and available pods of the Deployment's newest ReplicaSet and of all older ones."""
    counts = {"old pods": 0, "old available": 0, "new pods": 0, "new available": 0}
    newest = rollouts.revision(namespace, deployment)["replica_set"]
    for replica_set in rollouts.replica_sets(namespace, deployment):
        age = "new" if replica_set.metadata.name == newest else "old"
        counts[f"{age} pods"] += replica_set.status.replicas or 0
        counts[f"{age} available"] += replica_set.status.available_replicas or 0
    return counts


def sample_rollout(namespace: str, deployment: str = "api-server", timeout: float = 120,
                   every: float = 0.2) -> pd.DataFrame:
    """Old and new pods, sampled every `every` seconds until the rollout under way completes."""
    samples, started = [], time.monotonic()
    while time.monotonic() - started < timeout:
        samples.append({"seconds": round(time.monotonic() - started, 1), **old_and_new(namespace, deployment)})
        if rollouts.rolled_out(cluster.apps().read_namespaced_deployment(deployment, namespace)):
            break
        time.sleep(every)
    rollout = pd.DataFrame(samples).set_index("seconds")
    rollout["all pods"] = rollout["old pods"] + rollout["new pods"]
    rollout["all available"] = rollout["old available"] + rollout["new available"]
    return rollout


def serving(namespace: str, service: str) -> list[str]:
    """The pods a Service sends traffic to now: its ready endpoints' pods."""
    return sorted(tables.ready_endpoints(namespace, service).pod)


# --- Lab 2: the canary ---------------------------------------------------------------------------
def canary_verdict(namespace: str, over: str = "15m", min_requests: int = CANARY_MIN_REQUESTS,
                   timeout: float = 60) -> tuple[str, str]:
    """The verdict the canary rule gives on the canary's own predictions in Prometheus (its pods,
    also those stopped within `over`), and the evidence in a sentence."""
    def look():
        canary = service_levels.predictions(namespace, over=over)
        requests = canary.requests.get("canary", 0)
        if requests < min_requests:
            raise NotYet(f"Prometheus holds only {requests:.0f} predictions answered by the canary in {namespace}, "
                         f"too few to judge it (need {min_requests}).")
        return canary.loc["canary"]
    measured = settle(look, timeout)
    good = measured.error_ratio <= CANARY_RULE["error_ratio"] and measured.p95_seconds <= CANARY_RULE["p95_seconds"]
    evidence = (f"the canary failed {measured.error_ratio:.1%} of {measured.requests:.0f} predictions (at most "
                f"{CANARY_RULE['error_ratio']:.0%} allowed) with a p95 latency of {measured.p95_seconds * 1000:.0f} ms "
                f"(at most {CANARY_RULE['p95_seconds'] * 1000:.0f} ms allowed)")
    return ("promote" if good else "abort"), evidence


def canary_verdict_matches(namespace: str, verdict, canary_tag: str, stable_tag: str,
                           canary: str = "api-server-canary", stable: str = "api-server") -> None:
    """`verdict` is what the canary rule says on the canary's data in Prometheus, and the cluster
    is in the state it calls for: promoted, the stable Deployment runs the canary's release;
    aborted, the canary is gone (or scaled to 0) and the stable release is unchanged."""
    if verdict not in ("promote", "abort"):
        raise AssertionError(f"The verdict must be 'promote' or 'abort', not {verdict!r}.")
    expected, evidence = canary_verdict(namespace)
    if verdict != expected:
        raise AssertionError(f"The verdict is {verdict!r}, but {evidence}: the rule says {expected!r}.")
    if verdict == "promote":
        workloads.deployment_runs(namespace, stable, canary_tag)
    workloads.deployment_stopped(namespace, canary)
    if verdict == "abort":
        workloads.deployment_runs(namespace, stable, stable_tag)


# --- DORA's metrics from the cluster's own history ---------------------------------------------
def revisions(namespace: str, deployment: str = "api-server") -> pd.DataFrame:
    """One row per revision of the Deployment: its ReplicaSet, release, when it was made, when
    the controller last scaled it, and whether the next revision rolled it back (returned to a
    ReplicaSet used before it; a rollback records the revisions a ReplicaSet had before in
    `deployment.kubernetes.io/revision-history`)."""
    rows = []
    for replica_set in rollouts.replica_sets(namespace, deployment):
        notes = replica_set.metadata.annotations
        earlier = [int(r) for r in notes.get("deployment.kubernetes.io/revision-history", "").split(",") if r]
        scaled = max(f.time for f in replica_set.metadata.managed_fields
                     if f.manager == "kube-controller-manager" and not f.subresource)
        for number in earlier + [int(notes[rollouts.REVISION])]:
            rows.append({"revision": number, "replica_set": replica_set.metadata.name,
                         "release": replica_set.spec.template.spec.containers[0].image.rpartition(":")[2],
                         "created": replica_set.metadata.creation_timestamp, "last_scaled": scaled})
    history = pd.DataFrame(rows).sort_values("revision").set_index("revision")
    seen_before = [set(history.replica_set[:i]) for i in range(1, len(history) + 1)]
    history["rolled_back"] = [following in seen for following, seen in zip(history.replica_set.shift(-1), seen_before)]
    return history
