"""Checks on service levels, counted in Prometheus."""

from __future__ import annotations

from opslab import rollouts, service_levels
from opslab.checks.core import NotYet, settle


def error_ratio_below(namespace: str, threshold: float, deployment: str = "api-server",
                      min_requests: int = 10, timeout: float = 60) -> None:
    """The pods of the Deployment's current revision fail a share of predictions below
    `threshold`, counted in Prometheus over everything they answered since they started; waits
    up to `timeout` for at least `min_requests` predictions to judge by."""
    current = rollouts.revision(namespace, deployment)["pod_template_hash"]

    def look():
        counted = service_levels.predictions(namespace, by="app", where=f'pod=~"{deployment}-{current}-.*"')
        requests, errors = counted.requests.sum(), counted.errors.sum()
        if requests < min_requests:
            raise NotYet(f"Prometheus has seen only {requests:.0f} predictions answered by {deployment}'s "
                         f"current pods in {namespace}, too few to judge its error ratio (need {min_requests}).")
        if errors / requests >= threshold:
            raise AssertionError(f"{deployment}'s current pods in {namespace} fail {errors / requests:.1%} of "
                                 f"predictions ({errors:.0f} of {requests:.0f}); it should be below {threshold:.1%}.")
    settle(look, timeout)
