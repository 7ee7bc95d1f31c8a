"""Checks that hidden tests call: each reads the live state (the cluster, Prometheus, what the
gateway serves over TLS), never the trainee's code, and fails with an AssertionError whose
message a trainee understands.

A check that looks at something still converging (a rollout under way, a certificate being
issued) waits for it, bounded by `timeout`; a state that is plainly wrong fails at once.
"""

from __future__ import annotations

import datetime as dt
import ssl
import time

import kubernetes

from opslab import cluster, platform

CANARY_MAX_ERROR_RATIO = 0.02  # the canary rule of module 02: promote only at or below both limits
CANARY_MAX_P95_SECONDS = 0.25
POLL = 0.5  # s


class _NotYet(AssertionError):
    """Not so yet, but it may become so: worth another look until the timeout."""


def _eventually(look, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return look()
        except _NotYet as error:
            if time.monotonic() > deadline:
                raise AssertionError(f"{error} (waited {timeout:.0f}s)") from None
        time.sleep(POLL)


def _deployment(namespace: str, name: str):
    apps = kubernetes.client.AppsV1Api(cluster.api_client())
    try:
        return apps.read_namespaced_deployment(name, namespace, _request_timeout=cluster.REQUEST_TIMEOUT)
    except kubernetes.client.ApiException as error:
        if error.status == 404:
            raise AssertionError(f"There is no Deployment {name} in namespace {namespace}.") from None
        raise


def _tags(deployment) -> list[str]:
    return [c.image.rpartition(":")[2] for c in deployment.spec.template.spec.containers]


def _progress(deployment) -> str:
    status = deployment.status
    return (f"{status.updated_replicas or 0} of {deployment.spec.replicas} replicas updated, "
            f"{status.available_replicas or 0} available, {status.replicas or 0} pods in all")


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
        if not platform.rolled_out(deployment):
            raise _NotYet(f"Deployment {name} in {namespace} has not finished rolling out {image_tag}: "
                          f"{_progress(deployment)}.")
    _eventually(look, timeout)


def rollout_complete(namespace: str, name: str, timeout: float = 120) -> None:
    """Deployment `name` runs its current template on every replica, all available."""
    def look():
        deployment = _deployment(namespace, name)
        if not platform.rolled_out(deployment):
            raise _NotYet(f"Deployment {name} in {namespace} has not finished its rollout: {_progress(deployment)}.")
    _eventually(look, timeout)


def deployment_on_revision_with_image(namespace: str, name: str, image_tag: str,
                                      pod_template_hash: str | None = None, timeout: float = 120) -> None:
    """Deployment `name` has rolled out release `image_tag`, on the pod template
    `pod_template_hash` when given (the revision that was good before), however it got there:
    `kubectl rollout undo`, `kubectl set image` or the Python client."""
    deployment_runs(namespace, name, image_tag, timeout=timeout)
    current = platform.revision(namespace, name)
    if pod_template_hash and current["pod_template_hash"] != pod_template_hash:
        raise AssertionError(f"Deployment {name} in {namespace} runs {image_tag} from a new pod template "
                             f"({current['replica_set']}), not the good revision's ReplicaSet "
                             f"(pod-template-hash {pod_template_hash}): roll back rather than redeploy.")


def deployment_stopped(namespace: str, name: str, timeout: float = 30) -> None:
    """Deployment `name` is gone or scaled to zero, and none of its pods runs."""
    core = kubernetes.client.CoreV1Api(cluster.api_client())

    def look():
        try:
            deployment = _deployment(namespace, name)
        except AssertionError:
            deployment = None
        if deployment is not None and deployment.spec.replicas:
            raise AssertionError(f"Deployment {name} in {namespace} still wants {deployment.spec.replicas} "
                                 f"replica(s): scale it to 0 or delete it.")
        if deployment is not None:
            selector = ",".join(f"{k}={v}" for k, v in deployment.spec.selector.match_labels.items())
            running = core.list_namespaced_pod(namespace, label_selector=selector,
                                               _request_timeout=cluster.REQUEST_TIMEOUT).items
            if running:
                raise _NotYet(f"{len(running)} pod(s) of Deployment {name} in {namespace} are still running.")
    _eventually(look, timeout)


def certificate_served(host: str, ingress_address: str, ca_pem: str, min_days_left: float = 30,
                       serial_differs_from: int | None = None, timeout: float = 20) -> None:
    """The gateway at `ingress_address` (`127.0.0.1:8443`) serves `host` a certificate that
    verifies with the CA `ca_pem` for that name, has at least `min_days_left` days to run, and,
    when `serial_differs_from` is given, is a new one: another serial number."""
    address, _, port = ingress_address.rpartition(":")

    def look():
        try:
            certificate = platform.served_certificate(host, ca_pem, (address.strip("[]"), int(port)))
        except ssl.SSLCertVerificationError as error:
            raise _NotYet(f"The certificate served for {host} at {ingress_address} does not verify with "
                          f"the lab's CA: {error.verify_message}.") from None
        except OSError as error:
            raise _NotYet(f"Nothing answers TLS for {host} at {ingress_address}: {error}.") from None
        left = (certificate.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)).total_seconds() / 86400
        if left < min_days_left:
            raise _NotYet(f"The certificate served for {host} expires in {left:.1f} days, fewer than "
                          f"{min_days_left:g}: renew it.")
        if serial_differs_from is not None and certificate.serial_number == serial_differs_from:
            raise _NotYet(f"{host} is still served the old certificate (serial {certificate.serial_number:x}): "
                          f"it has not been renewed.")
    _eventually(look, timeout)


def error_ratio_below(namespace: str, threshold: float, deployment: str = "api-server",
                      min_requests: int = 10, timeout: float = 60) -> None:
    """The pods of the Deployment's current revision fail a share of predictions below
    `threshold`, counted in Prometheus over everything they answered since they started; waits
    up to `timeout` for at least `min_requests` predictions to judge by."""
    current = platform.revision(namespace, deployment)["pod_template_hash"]

    def look():
        counted = platform.predictions(namespace, by="app", where=f'pod=~"{deployment}-{current}-.*"')
        requests, errors = counted.requests.sum(), counted.errors.sum()
        if requests < min_requests:
            raise _NotYet(f"Prometheus has seen only {requests:.0f} predictions answered by {deployment}'s "
                          f"current pods in {namespace}, too few to judge its error ratio (need {min_requests}).")
        if errors / requests >= threshold:
            raise AssertionError(f"{deployment}'s current pods in {namespace} fail {errors / requests:.1%} of "
                                 f"predictions ({errors:.0f} of {requests:.0f}); it should be below {threshold:.1%}.")
    _eventually(look, timeout)


def canary_verdict(namespace: str, over: str = "15m", min_requests: int = 20, timeout: float = 60) -> tuple[str, str]:
    """The verdict the canary rule gives on the canary's own predictions in Prometheus (its pods,
    also those stopped within `over`), and the evidence in a sentence."""
    def look():
        canary = platform.predictions(namespace, over=over)
        requests = canary.requests.get("canary", 0)
        if requests < min_requests:
            raise _NotYet(f"Prometheus holds only {requests:.0f} predictions answered by the canary in {namespace}, "
                          f"too few to judge it (need {min_requests}).")
        return canary.loc["canary"]
    measured = _eventually(look, timeout)
    good = measured.error_ratio <= CANARY_MAX_ERROR_RATIO and measured.p95_seconds <= CANARY_MAX_P95_SECONDS
    evidence = (f"the canary failed {measured.error_ratio:.1%} of {measured.requests:.0f} predictions (at most "
                f"{CANARY_MAX_ERROR_RATIO:.0%} allowed) with a p95 latency of {measured.p95_seconds * 1000:.0f} ms "
                f"(at most {CANARY_MAX_P95_SECONDS * 1000:.0f} ms allowed)")
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
        deployment_runs(namespace, stable, canary_tag)
    else:
        deployment_stopped(namespace, canary)
        deployment_runs(namespace, stable, stable_tag)
