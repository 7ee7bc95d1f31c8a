"""Figures for observability in the lab: time from a fault to its alert notification, latency of
a 15-minute range query through the notebook helper, and Prometheus's memory at rest.

    .venv/bin/python benchmarks/observability.py [--rounds 2] [--queries 20]

The fault is the faulty release (api-server 1.5.1) rolled out in a copy of the production
platform in a namespace of its own; the time runs from the rollout to the error-rate notification
arriving at the lab's receiver, and includes the alert rule's `for: 30s`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time

from opslab import environments, prometheus, rollouts

NOTIFICATION_TIMEOUT = 240
QUERY = 'sum by (app) (rate(http_requests_total{namespace="mlops-production"}[1m]))'


def fault_to_notification(namespace: str) -> float:
    environments.ensure(namespace, "production")
    # The copy's pods scraped for a while first: the error ratio needs a baseline to rise from.
    time.sleep(30)
    fault = time.time()
    rollouts.set_release(namespace, "api-server", "1.5.1", wait=False)
    while time.time() - fault < NOTIFICATION_TIMEOUT:
        received = prometheus.notifications(since=fault)
        if not received.empty and "namespace" in received:
            hit = received[(received["alertname"] == "HighErrorRate") & (received["namespace"] == namespace)
                           & (received["status"] == "firing")]
            if not hit.empty:
                return hit["received_at"].iloc[0].timestamp() - fault
        time.sleep(1)
    raise TimeoutError(f"no HighErrorRate notification for {namespace} within {NOTIFICATION_TIMEOUT}s")


def range_query_seconds(count: int) -> list[float]:
    durations = []
    for _ in range(count):
        started = time.perf_counter()
        frame = prometheus.query_range(QUERY, start=dt.timedelta(minutes=15), step="15s")
        durations.append(time.perf_counter() - started)
        assert not frame.empty, "the range query returned nothing: is the platform scraped?"
    return durations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="faults injected, each in a fresh namespace")
    parser.add_argument("--queries", type=int, default=20, help="range queries timed")
    args = parser.parse_args()

    memory = prometheus.query('process_resident_memory_bytes{job="prometheus"}')["value"].iloc[0]
    series = prometheus.query("prometheus_tsdb_head_series")["value"].iloc[0]
    print(f"Prometheus memory at rest: {memory / 2**20:.0f} MiB resident, {series:.0f} series in the head block")

    durations = range_query_seconds(args.queries)
    print(f"15-minute range query through opslab.prometheus.query_range ({args.queries} runs): "
          f"median {statistics.median(durations) * 1000:.0f} ms, max {max(durations) * 1000:.0f} ms")

    results = []
    for round_number in range(args.rounds):
        namespace = environments.namespace_for("production", f"bench{int(time.time()) % 100000}")
        try:
            results.append(fault_to_notification(namespace))
            print(f"round {round_number + 1}: faulty release to notification at the receiver {results[-1]:.0f} s")
        finally:
            environments.delete(namespace)
    print(f"fault to notification: median {statistics.median(results):.0f} s over {len(results)} rounds "
          "(rule window 1m, for: 30s, scrape and evaluation every 5s, Alertmanager group_wait 1s)")


if __name__ == "__main__":
    main()
