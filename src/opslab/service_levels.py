"""The platform's service levels, from Prometheus: what users asked, what failed, how fast."""

from __future__ import annotations

import pandas as pd

from opslab import prometheus


def predictions(namespace: str, by: str = "track", where: str = "", over: str | None = None) -> pd.DataFrame:
    """The predictions the api-server's pods in `namespace` answered, from Prometheus, grouped
    `by` a label of theirs (`track`, `pod`): requests, server errors (5xx), their ratio, and the
    p95 latency that histogram_quantile reads from the latency buckets.

    A pod's counters start at zero when it starts, so their values now count everything the
    running pods have answered. With `over` (a PromQL duration such as "15m"), each series'
    highest value within that time is taken instead, which still counts pods that stopped
    meanwhile. `where` adds label matchers (`pod=~"api-server-5d4f.*"`). The PromQL asked is in
    the table's `attrs["promql"]`.
    """
    matchers = f'namespace="{namespace}", app="api-server", path="/predict"' + (f", {where}" if where else "")

    def series(metric: str, extra: str = "") -> str:
        selected = f"{metric}{{{matchers}{extra}}}"
        return f"max_over_time({selected}[{over}])" if over else selected

    server_errors = ', status=~"5.."'
    queries = {
        "requests": f"sum by ({by}) ({series('http_requests_total')})",
        "errors": f"sum by ({by}) ({series('http_requests_total', server_errors)})",
        "p95_seconds": f"histogram_quantile(0.95, sum by ({by}, le) ({series('http_request_duration_seconds_bucket')}))",
    }
    answers = {}
    for name, promql in queries.items():
        frame = prometheus.query(promql)
        answers[name] = frame.set_index(by)["value"] if by in frame else pd.Series(dtype=float)
    table = pd.DataFrame({"requests": answers["requests"],
                          "errors": answers["errors"].reindex(answers["requests"].index, fill_value=0.0)})
    table["error_ratio"] = table.errors / table.requests
    table["p95_seconds"] = answers["p95_seconds"].reindex(table.index)
    table.attrs["promql"] = queries  # what was asked, for whoever wants to ask it themselves
    return table.rename_axis(by)
