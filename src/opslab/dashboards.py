"""The guide's four dashboards, defined once: rendered from live PromQL with matplotlib, and
exported as Grafana dashboard JSON that Grafana imports.

    from opslab import dashboards
    figure = dashboards.render(dashboards.APPLICATION_PERFORMANCE, namespace="mlops-production")
    dashboards.export(dashboards.APPLICATION_PERFORMANCE, "application-performance.json")

A panel is a title, one or more PromQL queries (with Grafana's legend templates), a kind
(timeseries, stat, bar), a Grafana unit and a size on Grafana's 24-column grid. `$namespace` in a
query is the dashboard's namespace variable: Grafana offers it as a drop-down, `render` fills it in.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from opslab import plots, prometheus

GRID_COLUMNS = 24  # Grafana's
SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
INCH_PER_GRID_ROW = 0.42


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""  # Grafana's legendFormat: `{{pod}}`


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"  # timeseries, stat or bar
    unit: str = "short"
    width: int = 8  # of Grafana's 24 columns
    height: int = 8


def panel(title: str, expr: str, legend: str = "", **options) -> Panel:
    """A panel of one query."""
    return Panel(title, (Query(expr, legend),), **options)


def stat(title: str, expr: str, unit: str = "short") -> Panel:
    return panel(title, expr, kind="stat", unit=unit, width=6, height=4)


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


NS = 'namespace="$namespace"'
PREDICT = f'{NS}, path=~"/predict.*"'


def _quantiles(metric: str, selector: str, by: str = "") -> tuple[Query, ...]:
    grouping = f"{by}, le" if by else "le"
    return tuple(Query(f"histogram_quantile({q}, sum by ({grouping}) (rate({metric}_bucket{{{selector}}}[1m])))",
                       f"p{int(q * 100)}" + (f" {{{{{by}}}}}" if by else "")) for q in (0.5, 0.95, 0.99))


SYSTEM_OVERVIEW = Dashboard(
    "opslab-system-overview", "System overview",
    "CPU and memory of the pods and nodes (measured from the pods' processes), request traffic and "
    "latency between the services, and the health of pods and scrape targets. The lab has no "
    "persistent volumes and no per-interface network counters: storage and bytes on the wire "
    "are not shown.",
    (
        stat("Pods ready", f'sum(kube_pod_status_ready{{{NS}, condition="true"}})'),
        stat("Scrape targets up", f"avg(up{{{NS}}})", "percentunit"),
        stat("Container restarts, last hour",
             f"sum(increase(kube_pod_container_status_restarts_total{{{NS}}}[1h]))"),
        stat("Alerts firing", f'count(ALERTS{{{NS}, alertstate="firing"}}) or vector(0)'),
        panel("CPU by pod (cores)", f"sum by (pod) (rate(container_cpu_usage_seconds_total{{{NS}}}[1m]))",
              "{{pod}}"),
        panel("Memory by pod", f"sum by (pod) (container_memory_working_set_bytes{{{NS}}})", "{{pod}}",
              unit="bytes"),
        panel("Memory by node", "sum by (node) (node_memory_working_set_bytes)", "{{node}}", unit="bytes"),
        panel("Requests by service", f"sum by (app) (rate(http_requests_total{{{NS}}}[1m]))", "{{app}}",
              unit="reqps"),
        panel("p95 latency by service",
              f"histogram_quantile(0.95, sum by (app, le) (rate(http_request_duration_seconds_bucket{{{NS}}}[1m])))",
              "{{app}}", unit="s"),
        panel("Pods by phase", f"sum by (phase) (kube_pod_status_phase{{{NS}}}) > 0", "{{phase}}", kind="bar"),
    ),
)

APPLICATION_PERFORMANCE = Dashboard(
    "opslab-application-performance", "Application performance",
    "The prediction API's response times and throughput, the model's inference latency, and error "
    "and success rates per service.",
    (
        stat("Prediction success rate, 5 min",
             f'sum(rate(http_requests_total{{{PREDICT}, status!~"5.."}}[5m])) '
             f"/ sum(rate(http_requests_total{{{PREDICT}}}[5m]))", "percentunit"),
        stat("Predictions per second", f'sum(rate(http_requests_total{{{PREDICT}, app="api-server"}}[1m]))',
             "reqps"),
        stat("API p95, 5 min",
             f"histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket"
             f'{{{PREDICT}, app="api-server"}}[5m])))', "s"),
        stat("Model p95, 5 min",
             f"histogram_quantile(0.95, sum by (le) (rate(model_inference_duration_seconds_bucket{{{NS}}}[5m])))",
             "s"),
        Panel("API response time (/predict)",
              _quantiles("http_request_duration_seconds", f'{PREDICT}, app="api-server"'), unit="s"),
        panel("API throughput by status", f'sum by (status) (rate(http_requests_total{{{NS}, app="api-server"}}[1m]))',
              "{{status}}", unit="reqps"),
        panel("Error rate by service",
              f'sum by (app) (rate(http_requests_total{{{PREDICT}, status=~"5.."}}[1m])) '
              f"/ sum by (app) (rate(http_requests_total{{{PREDICT}}}[1m]))", "{{app}}", unit="percentunit"),
        Panel("Model inference latency", _quantiles("model_inference_duration_seconds", NS), unit="s"),
        panel("Resident memory by pod",
              f'process_resident_memory_bytes{{{NS}, app=~"api-server|model-server"}}', "{{pod}}", unit="bytes"),
        panel("Database errors per second", f"sum by (pod) (rate(db_errors_total{{{NS}}}[1m]))", "{{pod}}"),
    ),
)

BUSINESS_METRICS = Dashboard(
    "opslab-business-metrics", "Business metrics",
    "User activity, predictions served by model version and by class, and which API features are "
    "used. The platform exports no revenue figures: predictions served stand in for business volume.",
    (
        # Each api-server pod counts the users it served: the largest count is a floor for all.
        stat("Active users, last 5 min (most seen by one pod)", f"max(active_users{{{NS}}})"),
        stat("Predictions, last hour", f"sum(increase(predictions_total{{{NS}}}[1h]))"),
        stat("Predictions per minute", f"sum(rate(predictions_total{{{NS}}}[5m])) * 60"),
        stat("Refused for a bad API key, last hour", f"sum(increase(auth_failures_total{{{NS}}}[1h]))"),
        panel("Predictions per minute by model version",
              f"sum by (model_version) (rate(predictions_total{{{NS}}}[1m])) * 60", "{{model_version}}",
              width=12),
        panel("Predictions by class, last hour",
              f'sum by (class) (increase(model_predictions_total{{{NS}}}[1h]))', "{{class}}", kind="bar", width=12),
        panel("Feature usage: requests by endpoint",
              f'sum by (path) (rate(http_requests_total{{{NS}, app="api-server", path!~"/metrics|/health"}}[1m]))',
              "{{path}}", unit="reqps", width=12),
        panel("Active users by api-server pod", f"active_users{{{NS}}}", "{{pod}}", width=12),
    ),
)

SECURITY = Dashboard(
    "opslab-security", "Security",
    "Authentication attempts and failures at the API, client errors, requests the Kubernetes API "
    "server refused, certificate expiry, and compliance indicators from the cluster's state.",
    (
        stat("Days until the TLS certificate expires",
             f"min(certmanager_certificate_expiration_timestamp_seconds{{{NS}}} - time()) / 86400", "d"),
        stat("Containers without a memory limit",
             f"count(kube_pod_container_info{{{NS}}}) - "
             f'(count(kube_pod_container_resource_limits{{{NS}, resource="memory"}}) or vector(0))'),
        stat("Auth failures, last hour", f"sum(increase(auth_failures_total{{{NS}}}[1h]))"),
        stat("Share of predictions refused (401)",
             f'(sum(rate(http_requests_total{{{PREDICT}, status="401"}}[5m])) or vector(0)) '
             f"/ sum(rate(http_requests_total{{{PREDICT}}}[5m]))", "percentunit"),
        # Every prediction request is an authentication attempt when the API requires a key.
        Panel("Authentication attempts and failures",
              (Query(f'sum(rate(http_requests_total{{{PREDICT}, app="api-server"}}[1m]))', "attempts"),
               Query(f"sum(rate(auth_failures_total{{{NS}}}[1m]))", "failures")), unit="reqps"),
        panel("Client errors by status",
              f'sum by (status) (rate(http_requests_total{{{NS}, status=~"4.."}}[1m]))', "{{status}}", unit="reqps"),
        panel("Kubernetes API requests refused (401/403)",
              'sum by (code) (rate(apiserver_request_total{code=~"401|403"}[5m]))', "{{code}}", unit="reqps"),
    ),
)

DASHBOARDS = (SYSTEM_OVERVIEW, APPLICATION_PERFORMANCE, BUSINESS_METRICS, SECURITY)


# --- layout: Grafana's grid, used for the figure too -------------------------------------------
def layout(dashboard: Dashboard) -> list[dict]:
    """Each panel's gridPos: left to right, a new row when the next one does not fit."""
    positions, x, y, row_height = [], 0, 0, 0
    for item in dashboard.panels:
        if x + item.width > GRID_COLUMNS:
            x, y, row_height = 0, y + row_height, 0
        positions.append({"x": x, "y": y, "w": item.width, "h": item.height})
        x, row_height = x + item.width, max(row_height, item.height)
    return positions


# --- rendering from live data -------------------------------------------------------------------
def _substitute(expr: str, namespace: str) -> str:
    return expr.replace("$namespace", namespace)


def panel_data(item: Panel, namespace: str, minutes: float = 15, step: str = "15s") -> pd.DataFrame:
    """The panel's data: a `series` column (the legend filled in) beside `value`, and
    `timestamp` for a time series."""
    frames = []
    for query in item.queries:
        expr = _substitute(query.expr, namespace)
        frame = (prometheus.query_range(expr, start=dt.timedelta(minutes=minutes), step=step)
                 if item.kind == "timeseries" else prometheus.query(expr))
        labels = [c for c in frame.columns if c not in ("timestamp", "value")]
        records = frame[labels].to_dict("records") if labels else [{}] * len(frame)
        frames.append(frame.drop(columns=labels).assign(series=[plots.series_name(r, query.legend) for r in records]))
    return pd.concat(frames, ignore_index=True)


def render(dashboard: Dashboard, namespace: str = "mlops-production", minutes: float = 15,
           step: str = "15s") -> Figure:
    """The dashboard as a matplotlib figure, from what Prometheus holds now: Grafana's rows, each
    panel as wide as its share of the 24 columns."""
    rows: dict[int, list[tuple[Panel, dict]]] = {}
    for item, place in zip(dashboard.panels, layout(dashboard)):
        rows.setdefault(place["y"], []).append((item, place))
    heights = [max(place["h"] for _, place in row) for row in rows.values()]
    figure = plt.figure(figsize=(18, sum(heights) * INCH_PER_GRID_ROW + 0.6), layout="constrained")
    figure.suptitle(f"{dashboard.title} — {namespace}, last {minutes:g} minutes", fontsize=14, x=0.01,
                    ha="left", fontweight="bold")
    for band, row in zip(figure.subfigures(len(rows), 1, height_ratios=heights, squeeze=False)[:, 0], rows.values()):
        spare = GRID_COLUMNS - sum(place["w"] for _, place in row)
        widths = [place["w"] for _, place in row] + ([spare] if spare else [])
        axes = band.subplots(1, len(widths), width_ratios=widths, squeeze=False)[0]
        for ax, (item, _) in zip(axes, row):
            plots.PANELS[item.kind](ax, panel_data(item, namespace, minutes, step), item.title, item.unit,
                                    legend="{{series}}")
        if spare:
            axes[-1].set_visible(False)
    return figure


# --- Grafana -------------------------------------------------------------------------------------
_GRAFANA_KIND = {"timeseries": "timeseries", "stat": "stat", "bar": "bargauge"}


def _grafana_panel(number: int, item: Panel, place: dict) -> dict:
    instant = item.kind != "timeseries"
    body = {
        "id": number, "type": _GRAFANA_KIND[item.kind], "title": item.title, "datasource": DATASOURCE,
        "gridPos": place,
        "targets": [{"refId": chr(ord("A") + index), "datasource": DATASOURCE, "expr": query.expr,
                     "legendFormat": query.legend or "__auto", "instant": instant, "range": not instant}
                    for index, query in enumerate(item.queries)],
        "fieldConfig": {"defaults": {"unit": item.unit}, "overrides": []},
        "options": {},
    }
    if instant:
        body["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
        if item.kind == "bar":
            body["options"] |= {"orientation": "horizontal", "displayMode": "basic"}
    return body


def grafana_json(dashboard: Dashboard, namespace: str = "mlops-production") -> dict:
    """The dashboard as Grafana imports it (Dashboards → Import): its Prometheus data source is
    an input chosen at import, `$namespace` a drop-down of the namespaces Prometheus knows."""
    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "description": "", "type": "datasource",
                      "pluginId": "prometheus", "pluginName": "Prometheus"}],
        "__requires": [{"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.4.0"},
                       {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
                       *({"type": "panel", "id": kind, "name": kind, "version": ""}
                         for kind in sorted({_GRAFANA_KIND[p.kind] for p in dashboard.panels}))],
        "uid": dashboard.uid, "title": dashboard.title, "description": dashboard.description,
        "tags": ["mlops-platform", "opslab"], "timezone": "browser", "editable": True,
        "schemaVersion": SCHEMA_VERSION, "version": 1, "refresh": "10s",
        "time": {"from": "now-15m", "to": "now"},
        "templating": {"list": [{
            "name": "namespace", "label": "Namespace", "type": "query", "datasource": DATASOURCE,
            "query": "label_values(up, namespace)", "definition": "label_values(up, namespace)",
            "refresh": 2, "sort": 1,  # refreshed when the time range changes; sorted by name
            "current": {"selected": True, "text": namespace, "value": namespace},
        }]},
        "annotations": {"list": []},
        "panels": [_grafana_panel(number, item, place)
                   for number, (item, place) in enumerate(zip(dashboard.panels, layout(dashboard)), 1)],
    }


def export(dashboard: Dashboard, path: str | Path, namespace: str = "mlops-production") -> Path:
    """Write the dashboard's Grafana JSON to `path`."""
    path = Path(path)
    path.write_text(json.dumps(grafana_json(dashboard, namespace), indent=2) + "\n")
    return path
