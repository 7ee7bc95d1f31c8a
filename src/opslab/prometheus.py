"""Prometheus, Alertmanager and the alert receiver from a notebook, as pandas frames.

    from opslab import prometheus
    prometheus.query('sum by (namespace) (up)')                      # labels as columns, and value
    prometheus.query_range('rate(http_requests_total[1m])', start=timedelta(minutes=15), step="15s")
    prometheus.alerts(); prometheus.notifications()

Where each is comes from `opslab.config` (PROMETHEUS_URL, ALERTMANAGER_URL, ALERT_RECEIVER_URL:
the environment, else the running lab's state file), so the same cells run against any
Prometheus. Every call is bounded by a timeout, and every failure is a PrometheusError whose
message says what went wrong: Prometheus's own words for a bad query, which URL did not answer.
"""

from __future__ import annotations

import datetime as dt
import time

import pandas as pd
import requests

from opslab.config import setting
from opslab.errors import OpslabError

TIMEOUT = 10.0  # seconds for any one call


class PrometheusError(OpslabError):
    """A query was refused, or Prometheus (or Alertmanager, or the receiver) could not be reached."""


def _call(name: str, what: str, path: str, *, params: dict | None = None, data: dict | None = None,
          timeout: float = TIMEOUT):
    """One request to the service whose URL is setting `name`; its JSON answer."""
    base = setting(name).rstrip("/")
    url = f"{base}{path}"
    try:
        if data is None:
            response = requests.get(url, params=params, timeout=timeout)
        else:
            response = requests.post(url, data=data, timeout=timeout)
    except requests.ConnectionError as error:
        raise PrometheusError(f"{what} does not answer at {base} ({name}): start the lab with `opslab lab up`, "
                              f"or set {name} to where your {what} runs.") from error
    except requests.Timeout as error:
        raise PrometheusError(f"{what} at {base} did not answer within {timeout:g}s.") from error
    try:
        document = response.json()
    except ValueError:
        raise PrometheusError(f"{what} at {url} answered {response.status_code} with something other than JSON: "
                              f"{response.text[:200]!r}") from None
    if isinstance(document, dict) and document.get("status") == "error":
        raise PrometheusError(f"{what} refused it: {document.get('error')} ({document.get('errorType')})")
    if not response.ok:
        raise PrometheusError(f"{what} at {url} answered {response.status_code}: {str(document)[:200]}")
    return document


def _prometheus(path: str, data: dict, timeout: float) -> dict:
    # POST: a long PromQL expression does not fit in a URL. Prometheus stops the query itself too.
    return _call("PROMETHEUS_URL", "Prometheus", path, data={**data, "timeout": f"{timeout:g}s"},
                 timeout=timeout)["data"]


# --- time arguments ------------------------------------------------------------------------------
def _moment(value, end: float | None = None) -> float:
    """Seconds since the epoch from a datetime, a pandas Timestamp, an ISO string or a number; a
    timedelta counts back from `end` (default: now)."""
    if isinstance(value, (dt.timedelta, pd.Timedelta)):
        return (time.time() if end is None else end) - pd.Timedelta(value).total_seconds()
    if isinstance(value, (int, float)):
        return float(value)
    stamp = pd.Timestamp(value)
    return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp).timestamp()


def _step(value) -> str:
    if isinstance(value, (dt.timedelta, pd.Timedelta)):
        return f"{pd.Timedelta(value).total_seconds():g}s"
    return f"{value:g}s" if isinstance(value, (int, float)) else str(value)


# --- queries ---------------------------------------------------------------------------------------
def _timestamps(seconds) -> pd.Series:
    return pd.to_datetime(pd.Series(seconds, dtype=float), unit="s", utc=True)


def _frame(result_type: str, result) -> pd.DataFrame:
    """A query result as a frame: one row per sample, a column per label, then `value` (and
    `timestamp` for a range)."""
    if result_type in ("scalar", "string"):
        return pd.DataFrame({"timestamp": _timestamps([result[0]]), "value": [result[1]]})
    rows = []
    for series in result:
        samples = series["values"] if result_type == "matrix" else [series["value"]]
        rows.extend({**series["metric"], "timestamp": at, "value": float(value)} for at, value in samples)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["timestamp", "value"] if result_type == "matrix" else ["value"])
    labels = sorted(c for c in frame.columns if c not in ("timestamp", "value"))
    frame["timestamp"] = _timestamps(frame["timestamp"])
    ordered = frame[["timestamp", *labels, "value"]] if result_type == "matrix" else frame[[*labels, "value"]]
    return ordered.reset_index(drop=True)


def query(promql: str, at=None, timeout: float = TIMEOUT) -> pd.DataFrame:
    """An instant query: a row per series, its labels as columns, then `value`. `at` is a moment
    (datetime, ISO string, epoch seconds, or a timedelta back from now); default now."""
    data = {"query": promql}
    if at is not None:
        data["time"] = f"{_moment(at):.3f}"
    answer = _prometheus("/api/v1/query", data, timeout)
    return _frame(answer["resultType"], answer["result"])


def query_range(promql: str, start, end=None, step="15s", timeout: float = TIMEOUT) -> pd.DataFrame:
    """A range query in long format: a row per sample with `timestamp`, the labels, `value`.
    `start` and `end` as for `query`'s `at` (a timedelta `start` counts back from `end`); `step`
    in seconds, a timedelta, or a Prometheus duration such as "15s"."""
    end_seconds = _moment(end) if end is not None else time.time()
    data = {"query": promql, "start": f"{_moment(start, end_seconds):.3f}", "end": f"{end_seconds:.3f}",
            "step": _step(step)}
    answer = _prometheus("/api/v1/query_range", data, timeout)
    return _frame(answer["resultType"], answer["result"])


def targets(timeout: float = TIMEOUT) -> pd.DataFrame:
    """What Prometheus scrapes: job, scrape URL, health, last error, then the target's labels."""
    answer = _call("PROMETHEUS_URL", "Prometheus", "/api/v1/targets", params={"state": "active"},
                   timeout=timeout)["data"]
    rows = [{"job": t["labels"].get("job"), "scrape_url": t["scrapeUrl"], "health": t["health"],
             "last_error": t["lastError"], **{k: v for k, v in t["labels"].items() if k != "job"}}
            for t in answer["activeTargets"]]
    return pd.DataFrame(rows, columns=None if rows else ["job", "scrape_url", "health", "last_error"])


def rule_groups(kind: str = "alert", timeout: float = TIMEOUT) -> list[dict]:
    """The rule groups Prometheus evaluates now, as its API gives them: each with its name, file
    and rules (`kind`: "alert" or "record")."""
    return _call("PROMETHEUS_URL", "Prometheus", "/api/v1/rules", params={"type": kind}, timeout=timeout)["data"]["groups"]


def tsdb_status(limit: int = 10, timeout: float = TIMEOUT) -> dict:
    """Prometheus's own figures of its head block: series per metric name, values per label, …"""
    return _call("PROMETHEUS_URL", "Prometheus", "/api/v1/status/tsdb", params={"limit": str(limit)},
                 timeout=timeout)["data"]


def alertmanager_status(timeout: float = TIMEOUT) -> dict:
    """Alertmanager's status: its version, cluster state and the configuration it runs."""
    return _call("ALERTMANAGER_URL", "Alertmanager", "/api/v2/status", timeout=timeout)


# --- alerts ----------------------------------------------------------------------------------------
_ALERT_COLUMNS = ["alertname", "severity", "state", "since", "summary"]


def _alert_frame(rows: list[dict]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame(columns=_ALERT_COLUMNS)
    frame = pd.DataFrame(rows)
    frame["since"] = pd.to_datetime(frame["since"], utc=True, format="ISO8601")
    rest = sorted(c for c in frame.columns if c not in _ALERT_COLUMNS)
    return frame[[*_ALERT_COLUMNS, *rest]].sort_values(["severity", "alertname"], ignore_index=True)


def alerts(timeout: float = TIMEOUT) -> pd.DataFrame:
    """Prometheus's alerts now: `pending` (the condition holds, its `for` has not yet passed) or
    `firing`; a row each with its labels and summary."""
    answer = _call("PROMETHEUS_URL", "Prometheus", "/api/v1/alerts", timeout=timeout)["data"]
    return _alert_frame([{**a["labels"], "state": a["state"], "since": a.get("activeAt"),
                          "summary": a.get("annotations", {}).get("summary", "")} for a in answer["alerts"]])


def alertmanager_alerts(timeout: float = TIMEOUT) -> pd.DataFrame:
    """What Alertmanager holds: `active` (being notified), or `suppressed` by a silence or by
    an inhibition (a P0 in the same namespace holds back the lesser alerts)."""
    answer = _call("ALERTMANAGER_URL", "Alertmanager", "/api/v2/alerts", timeout=timeout)
    return _alert_frame([{**a["labels"], "state": a["status"]["state"], "since": a["startsAt"],
                          "summary": a.get("annotations", {}).get("summary", "")} for a in answer])


def notifications(since=None, timeout: float = TIMEOUT) -> pd.DataFrame:
    """The notifications Alertmanager sent to the lab's receiver, oldest first: a row per alert
    in each, with when it arrived, the receiver it was routed to, and whether it was firing or
    resolved. `since`: only those that arrived later (a moment, as for `query`'s `at`)."""
    params = {"since": f"{_moment(since):.3f}"} if since is not None else None
    answer = _call("ALERT_RECEIVER_URL", "The alert receiver", "/notifications", params=params, timeout=timeout)
    rows = [{"received_at": n["received_at"], "receiver": n.get("receiver"), "status": a.get("status"),
             **a.get("labels", {}), "since": a.get("startsAt"), "summary": a.get("annotations", {}).get("summary", "")}
            for n in answer for a in n.get("alerts", [])]
    columns = ["received_at", "receiver", "status", "alertname", "severity", "since", "summary"]
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows)
    frame["received_at"] = _timestamps(frame["received_at"])
    frame["since"] = pd.to_datetime(frame["since"], utc=True, format="ISO8601")
    rest = sorted(c for c in frame.columns if c not in columns)
    return frame[[*columns, *rest]]
