"""Module 3, monitoring and observability: its set-up steps, the helpers its lessons reuse, and
the checks only it needs.

    from opslab.modules import monitoring
    monitoring.export_dashboards(folder)                 # the guide's four, as Grafana JSON
    monitoring.panel_now(dashboards.SYSTEM_OVERVIEW, "Memory by pod", namespace)
    monitoring.inject_fault(namespace, "api-server")      # a faulty release goes out
    monitoring.read_logs(namespace, "api-server")         # the pods' JSON log lines as a table

Every value a check compares an answer with is recomputed from the live lab when the check runs:
a dashboard panel's own PromQL, the pods' own logs. A trainee's answer is judged by meaning and
within a tolerance, since a live value moves between the moment it was read and the moment it
is checked.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import yaml

from opslab import cluster, dashboards, environments, gateway, plots, prometheus, rollouts
from opslab.checks import alerts
from opslab.checks.core import NotYet, settle

# The faulty release of each program (mlops_platform.releases): 30 % of predictions fail, +300 ms.
FAULTY = {"api-server": "1.5.1", "model-server": "2.2.1"}
GOOD = {"api-server": "1.4.2", "model-server": "2.1.0"}
PROMETHEUS_RULES = ("monitoring.coreos.com", "v1", "prometheusrules")
# The SLO of the lessons: 99 % of predictions succeed, over 30 days.
SLO_TARGET = 0.99
# The SRE workbook's pairs for a 30-day SLO: (burn rate, long window, short window, severity),
# and the lab's versions of those windows, about 30 times shorter, so that a lesson sees them move
# (a short window keeps at least four of the lab's 5 s scrapes).
BURN_RATE_ALERTS = (
    (14.4, "1h", "5m", "P1"),
    (6.0, "6h", "30m", "P2"),
)
LAB_WINDOWS = {"1h": "2m", "5m": "20s", "6h": "12m", "30m": "1m"}
PREDICT = 'app="api-server", path="/predict"'
ACCESS_LINE = re.compile(r"^[A-Z]+ /\S* \d{3}$")  # "POST /predict 500": the access log's own lines


# --- tools ---------------------------------------------------------------------------------------
def promtool() -> str:
    """Prometheus's own rule checker: on PATH after `eval "$(opslab lab env)"` (the lab's tools), or
    after `os.environ.update(cluster.shell_environment())` in a notebook."""
    found = shutil.which("promtool")
    if not found:
        raise FileNotFoundError("promtool is not on PATH: run `eval \"$(opslab lab env)\"` (the lab provides it), "
                                "or install Prometheus's promtool.")
    return found


def rules_file(manifest: str | Path, folder: str | Path | None = None) -> Path:
    """The rule groups of a PrometheusRule manifest (its `spec`), written as the plain rule file
    that Prometheus loads and `promtool check rules` checks; beside the manifest by default."""
    manifest = Path(manifest)
    document = yaml.safe_load(manifest.read_text())
    if not isinstance(document, dict) or "spec" not in document:
        raise ValueError(f"{manifest} is not a PrometheusRule: it has no spec (with spec.groups)")
    path = Path(folder or manifest.parent) / f"{manifest.stem}.rules.yaml"
    path.write_text(to_yaml(document["spec"]))
    return path


def check_rules(path: str | Path) -> subprocess.CompletedProcess:
    """`promtool check rules` on a rule file or a PrometheusRule manifest; prints what it says
    and raises ValueError when it finds a mistake."""
    path = Path(path)
    document = yaml.safe_load(path.read_text())
    if isinstance(document, dict) and document.get("kind") == "PrometheusRule":
        path = rules_file(path)
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=30)
    print((result.stdout + result.stderr).strip())
    if result.returncode != 0:
        raise ValueError(f"promtool found a mistake in {path}: {(result.stdout + result.stderr).strip()}")
    return result


class _Dumper(yaml.SafeDumper):
    """YAML as people write rule files: multi-line strings (expressions) as `|` blocks."""


_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def to_yaml(document: dict) -> str:
    """A manifest as YAML, keys in the order given, expressions as readable blocks."""
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=120)


def prometheus_rule(name: str, groups: list[dict], namespace: str | None = None) -> dict:
    """A PrometheusRule, as the Prometheus Operator defines it."""
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "/".join(PROMETHEUS_RULES[:2]), "kind": "PrometheusRule", "metadata": metadata,
            "spec": {"groups": groups}}


def prometheus_rules_served() -> bool:
    """True when the cluster knows the PrometheusRule kind (its CRD is installed)."""
    return cluster.kubectl("get", "crd", "prometheusrules.monitoring.coreos.com", check=False).returncode == 0


def namespace_rules(namespace: str) -> list[dict]:
    """The PrometheusRules in `namespace`."""
    try:
        listing = cluster.custom_objects().list_namespaced_custom_object(*PROMETHEUS_RULES[:2], namespace,
                                                                         PROMETHEUS_RULES[2])
    except cluster.ApiError as error:
        if error.status == 404:  # the kind is not served: no rules
            return []
        raise
    return listing.get("items", [])


def loaded_rules(kind: str = "alert") -> pd.DataFrame:
    """What Prometheus evaluates now: a row per rule, with its group, file, state, health, last
    error, last evaluation and the labels it adds."""
    groups = prometheus.rule_groups(kind)
    rows = [{"group": group["name"], "file": group.get("file", ""), "name": rule["name"],
             "state": rule.get("state", ""), "health": rule.get("health", ""), "last_error": rule.get("lastError", ""),
             "last_evaluation": rule.get("lastEvaluation"), "for_seconds": rule.get("duration", 0),
             "labels": rule.get("labels", {}), "alerts": rule.get("alerts", []), "query": rule.get("query", "")}
            for group in groups for rule in group["rules"]]
    columns = ["group", "file", "name", "state", "health", "last_error", "last_evaluation", "for_seconds", "labels",
               "alerts", "query"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["last_evaluation"] = pd.to_datetime(frame["last_evaluation"], utc=True, format="ISO8601")
    return frame


def series(promql: str, by: str) -> pd.Series:
    """An instant query's values indexed by one label (empty when nothing matches): for tables
    that put several queries side by side."""
    frame = prometheus.query(promql)
    if frame.empty or by not in frame:
        return pd.Series(dtype=float, name=by)
    return frame.set_index(by)["value"]


# --- dashboards ------------------------------------------------------------------------------------
def export_dashboards(folder: str | Path, namespace: str = "mlops-production") -> list[Path]:
    """The guide's four dashboards as Grafana JSON files in `folder`, one per dashboard."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [dashboards.export(board, folder / f"{board.uid}.json", namespace) for board in dashboards.DASHBOARDS]


def find_panel(dashboard: dashboards.Dashboard, title: str) -> dashboards.Panel:
    for item in dashboard.panels:
        if item.title == title:
            return item
    raise KeyError(f"the {dashboard.title} dashboard has no panel {title!r}; its panels are: "
                   f"{', '.join(p.title for p in dashboard.panels)}")


def panel_now(dashboard: dashboards.Dashboard, title: str, namespace: str) -> pd.DataFrame:
    """A panel's queries asked as instant queries now: what its last point shows, a row per
    series (labels as columns, `series` its legend, and `value`)."""
    frames = []
    for query in find_panel(dashboard, title).queries:
        frame = prometheus.query(query.expr.replace("$namespace", namespace))
        labels = [c for c in frame.columns if c != "value"]
        frames.append(frame.assign(series=[plots.series_name(r, query.legend)
                                           for r in frame[labels].to_dict("records")] if labels else "value"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["series", "value"])


# --- faults ----------------------------------------------------------------------------------------
def inject_fault(namespace: str, program: str = "api-server") -> dict:
    """Start rolling `program` out to its faulty release, as a release goes out: its pods are
    replaced one at a time while users keep calling. Returns what and when (`began`, epoch s)."""
    began = time.time()
    rollouts.set_release(namespace, program, FAULTY[program], wait=False)
    return {"program": program, "release": FAULTY[program], "began": began}


def warm_up(namespace: str, users: int = 40, timeout: float = 30) -> pd.DataFrame:
    """Wait until the platform in `namespace` is ready, send `users` predictions through its
    Ingress, and wait until Prometheus has scraped them twice (a rate needs two samples)."""
    environments.wait_ready(namespace)
    answers = gateway.send_predictions(namespace, count=users)

    def look():
        if prometheus.query(f'rate(http_requests_total{{namespace="{namespace}", {PREDICT}}}[1m]) > 0').empty:
            raise NotYet(f"Prometheus has no rate of {namespace}'s predictions yet")
    settle(look, timeout)
    return answers


# --- latency and saturation ------------------------------------------------------------------------
def latency_quantile(namespace: str, quantile: float, window: str = "2m", by: str = "") -> pd.DataFrame:
    """The `quantile` of the api-server's /predict latency over `window`, read from its histogram
    the right way: rate of each bucket first, summed by `le` (and `by`), then histogram_quantile."""
    grouping = f"{by}, le" if by else "le"
    return prometheus.query(f"histogram_quantile({quantile}, sum by ({grouping}) "
                            f"(rate(http_request_duration_seconds_bucket{{namespace=\"{namespace}\", {PREDICT}}}[{window}])))")


def error_ratio(namespace: str, window: str = "2m") -> float:
    """The share of the api-server's predictions answered with a 5xx over `window` (NaN without traffic)."""
    frame = prometheus.query(
        f'sum(rate(http_requests_total{{namespace="{namespace}", {PREDICT}, status=~"5.."}}[{window}])) '
        f'/ sum(rate(http_requests_total{{namespace="{namespace}", {PREDICT}}}[{window}]))')
    return float(frame["value"].iloc[0]) if not frame.empty else 0.0


def saturation(namespace: str) -> pd.DataFrame:
    """Each container's CPU and memory as a share of its limit: how full it is."""
    ns = f'namespace="{namespace}"'
    queries = {
        "cpu_cores": f"sum by (pod, container) (rate(container_cpu_usage_seconds_total{{{ns}}}[1m]))",
        "cpu_limit": f'sum by (pod, container) (kube_pod_container_resource_limits{{{ns}, resource="cpu"}})',
        "memory_bytes": f"sum by (pod, container) (container_memory_working_set_bytes{{{ns}}})",
        "memory_limit": f'sum by (pod, container) (kube_pod_container_resource_limits{{{ns}, resource="memory"}})',
    }
    columns = {}
    for name, promql in queries.items():
        frame = prometheus.query(promql)
        columns[name] = frame.set_index(["pod", "container"])["value"] if not frame.empty else pd.Series(dtype=float)
    table = pd.DataFrame(columns)
    table["cpu_used"] = table.cpu_cores / table.cpu_limit
    table["memory_used"] = table.memory_bytes / table.memory_limit
    return table.sort_values("memory_used", ascending=False)


# --- logs ------------------------------------------------------------------------------------------
def parse_log_lines(lines: Iterable[str], pod: str = "") -> pd.DataFrame:
    """JSON log lines as a table: ts, level, service, msg and every other field; lines that are
    not JSON are kept with level `raw`."""
    rows = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = {"level": "raw", "msg": line}
        if not isinstance(record, dict):
            record = {"level": "raw", "msg": line}
        rows.append({"pod": pod, **record})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["pod", "ts", "level", "service", "msg"])
    if "ts" in frame:
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True, format="ISO8601", errors="coerce")
    return frame


def read_logs(namespace: str, app: str, tail: int | None = None) -> pd.DataFrame:
    """The logs of every pod of `app` in `namespace` (what `kubectl logs -l app=<app>` shows), as
    one table, oldest first."""
    frames = []
    for pod in cluster.core().list_namespaced_pod(namespace, label_selector=f"app={app}").items:
        if pod.status.phase not in ("Running", "Succeeded", "Failed"):
            continue
        try:
            text = cluster.core().read_namespaced_pod_log(pod.metadata.name, namespace, container=app,
                                                          **({"tail_lines": tail} if tail else {}))
        except cluster.ApiError:
            continue  # gone meanwhile, or not started yet
        frames.append(parse_log_lines(text.splitlines(), pod.metadata.name))
    frame = pd.concat(frames, ignore_index=True) if frames else parse_log_lines([])
    return frame.sort_values("ts", ignore_index=True) if "ts" in frame and not frame.empty else frame


def error_lines(logs: pd.DataFrame) -> pd.DataFrame:
    """The error lines that are not the access log's own `POST /predict 500`: what the program
    said went wrong."""
    if logs.empty or "level" not in logs:
        return logs.iloc[0:0]
    errors = logs[logs["level"].eq("error")]
    return errors[~errors["msg"].astype(str).str.match(ACCESS_LINE)]


def log_findings(namespace: str, programs: Iterable[str] = ("api-server", "model-server")) -> dict:
    """What the logs say, for the checks: the most frequent error (not an access line) across
    the programs' pods, which program logs it, and the release its lines name."""
    errors = []
    for program in programs:
        logs = error_lines(read_logs(namespace, program))
        if not logs.empty:
            errors.append(logs.assign(program=program))
    if not errors:
        return {}
    found = pd.concat(errors, ignore_index=True)
    message = found["msg"].value_counts().index[0]
    lines = found[found["msg"].eq(message)]
    versions = lines["version"].dropna() if "version" in lines else pd.Series(dtype=str)
    return {"message": message, "program": lines["program"].value_counts().index[0],
            "release": versions.value_counts().index[0] if not versions.empty else None, "count": len(lines)}


# --- SLO, burn rates -------------------------------------------------------------------------------
def burn_rates(namespace: str, windows: Iterable[str] = ("30s", "1m", "5m", "30m"),
               target: float = SLO_TARGET) -> pd.DataFrame:
    """For each window, the error ratio of predictions and the burn rate: how many times faster
    than the SLO allows the error budget is being spent (1 = exactly on budget)."""
    rows = []
    for window in windows:
        ratio = error_ratio(namespace, window)
        rows.append({"window": window, "error_ratio": ratio, "burn_rate": ratio / (1 - target)})
    return pd.DataFrame(rows).set_index("window")


def burn_rate_rule(namespace: str, target: float = SLO_TARGET, lab_windows: bool = True) -> dict:
    """A PrometheusRule with the multiwindow, multi-burn-rate alerts of the predictions SLO: a
    page when both a long and a short window burn fast, a ticket when both burn steadily. With
    `lab_windows` the windows are LAB_WINDOWS, shorter than production's, for a lesson's minutes."""
    budget = 1 - target

    def ratio(window: str) -> str:
        selector = f'namespace="{namespace}", {PREDICT}'
        return (f'sum(rate(http_requests_total{{{selector}, status=~"5.."}}[{window}])) '
                f"/ sum(rate(http_requests_total{{{selector}}}[{window}]))")

    rules = []
    for rate, long, short, severity in BURN_RATE_ALERTS:
        long_w, short_w = (LAB_WINDOWS[long], LAB_WINDOWS[short]) if lab_windows else (long, short)
        rules.append({
            "alert": f"PredictionsErrorBudgetBurn{'Fast' if severity == 'P1' else 'Slow'}",
            "expr": f"({ratio(long_w)}) > {rate} * {budget:g}\nand\n({ratio(short_w)}) > {rate} * {budget:g}\n",
            "labels": {"severity": severity, "slo": "predictions-99"},
            "annotations": {"summary": f"Predictions in {namespace} burn the error budget {rate:g} times too fast "
                                       f"({long} and {short} windows{', lab scale' if lab_windows else ''})"},
        })
    return prometheus_rule("predictions-slo", [{"name": "predictions-slo", "rules": rules}], namespace)


# --- cardinality and alert fatigue -----------------------------------------------------------------
def cardinality(top: int = 10) -> dict[str, pd.DataFrame]:
    """Prometheus's own figures of its head block: series per metric name, distinct values per
    label name, and series per label pair."""
    answer = prometheus.tsdb_status(top)
    frame = lambda key, column: pd.DataFrame(answer.get(key) or [], columns=["name", "value"]).rename(
        columns={"value": column}).set_index("name")
    return {"series_by_metric": frame("seriesCountByMetricName", "series"),
            "values_by_label": frame("labelValueCountByLabelName", "values"),
            "series_by_label_pair": frame("seriesCountByLabelValuePair", "series"),
            "head_series": answer.get("headStats", {}).get("numSeries")}


def alert_history(notifications: pd.DataFrame) -> pd.DataFrame:
    """The receiver's notifications summarised per alert: how many times each fired, how often it
    resolved, how long a firing lasted, and how many of its firings were over within 5 minutes
    (short blips that woke someone for nothing)."""
    if notifications.empty:
        return pd.DataFrame(columns=["fired", "resolved", "median_minutes_firing", "over_within_5_min", "severity"])
    frame = notifications.copy()
    frame["key"] = frame.apply(lambda r: (r.get("alertname"), r.get("namespace"), r.get("pod"), r.get("app"),
                                          r.get("since")), axis=1)
    firing = frame[frame.status.eq("firing")].drop_duplicates("key")
    resolved = frame[frame.status.eq("resolved")].drop_duplicates("key").set_index("key")["received_at"]
    firing = firing.assign(ended=firing["key"].map(resolved))
    firing["minutes"] = (firing["ended"] - firing["since"]).dt.total_seconds() / 60
    summary = firing.groupby("alertname").agg(
        fired=("key", "size"), resolved=("ended", "count"), median_minutes_firing=("minutes", "median"),
        over_within_5_min=("minutes", lambda m: int((m < 5).sum())), severity=("severity", "first"))
    return summary.sort_values("fired", ascending=False)


# --- checks of this module's answers -----------------------------------------------------------------
def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            return float(str(value).strip().rstrip("%")) / (100 if str(value).strip().endswith("%") else 1)
        except ValueError:
            raise AssertionError(f"{name} should be a number, not {value!r}.") from None
    return float(value)


def check_top_memory_pod(namespace: str, app: str, answer, tolerance: float = 0.10, timeout: float = 20) -> None:
    """`answer` names the pod of `app` with the most memory on the System overview's "Memory by
    pod" panel now, or one within `tolerance` of it (two pods can be neck and neck)."""
    if not isinstance(answer, str) or not answer.strip():
        raise AssertionError(f"answer_top_memory_pod should be the name of a pod, such as {app}-…, not {answer!r}.")
    wanted = answer.strip().lower().removeprefix("pod/")

    def look():
        memory = panel_now(dashboards.SYSTEM_OVERVIEW, "Memory by pod", namespace)
        memory = memory[memory["pod"].str.startswith(f"{app}-")] if "pod" in memory else memory.iloc[0:0]
        if memory.empty:
            raise NotYet(f"The Memory by pod panel shows no {app} pod in {namespace} yet.")
        by_pod = memory.set_index("pod")["value"]
        if wanted not in by_pod.index:
            raise AssertionError(f"{answer!r} is not one of the {app} pods on the Memory by pod panel of {namespace} "
                                 f"({', '.join(by_pod.index)}).")
        top = by_pod.idxmax()
        if by_pod[wanted] < (1 - tolerance) * by_pod.max():
            raise AssertionError(f"{answer} uses {by_pod[wanted] / 2**20:.0f} MiB, but {top} uses "
                                 f"{by_pod.max() / 2**20:.0f} MiB: read the Memory by pod panel again.")
    settle(look, timeout)


def check_stat(dashboard: dashboards.Dashboard, title: str, namespace: str, answer, name: str,
               relative: float = 0.0, absolute: float = 0.0, timeout: float = 20) -> None:
    """`answer` is what the stat panel `title` shows now, within `relative` (a share of the
    value) or `absolute` of it."""
    answered = _number(answer, name)

    def look():
        shown = panel_now(dashboard, title, namespace)
        if shown.empty or pd.isna(shown["value"].iloc[0]):
            raise NotYet(f"The {title!r} panel of {dashboard.title} shows no value for {namespace} yet.")
        value = float(shown["value"].iloc[0])
        if abs(answered - value) > max(relative * abs(value), absolute):
            raise AssertionError(f"{name} is {answered:g}, but the {title!r} panel shows {value:.4g} now "
                                 f"(the answer may differ by {max(relative * abs(value), absolute):.3g}).")
    settle(look, timeout)


def check_latency_quantile(namespace: str, quantile: float, window: str, answer_ms, relative: float = 0.15,
                           timeout: float = 20) -> None:
    """`answer_ms` is the api-server's `quantile` latency for predictions over `window`, in
    milliseconds, as histogram_quantile reads it now, within `relative`."""
    answered = _number(answer_ms, "answer_latency_ms")
    if 0 < answered < 5:
        raise AssertionError(f"answer_latency_ms is {answered:g}: is that seconds? Give milliseconds.")

    def look():
        frame = latency_quantile(namespace, quantile, window)
        if frame.empty or pd.isna(frame["value"].iloc[0]):
            raise NotYet(f"Prometheus has no prediction latencies for {namespace} over the last {window} yet.")
        value = float(frame["value"].iloc[0]) * 1000
        if abs(answered - value) > relative * value:
            raise AssertionError(f"answer_latency_ms is {answered:.0f}, but the p{quantile * 100:g} over the last "
                                 f"{window} is {value:.0f} ms now: take the rate of the buckets over {window}, sum "
                                 f"them by le, then ask histogram_quantile({quantile}, …).")
    settle(look, timeout)


def check_error_ratio(namespace: str, window: str, answer, absolute: float = 0.04, timeout: float = 20) -> None:
    """`answer` is the share of predictions that failed over `window`, a number between 0 and 1."""
    answered = _number(answer, "answer_error_ratio")
    if answered > 1:
        raise AssertionError(f"answer_error_ratio is {answered:g}: give a share between 0 and 1 (0.25 for 25 %).")
    value = error_ratio(namespace, window)
    if abs(answered - value) > absolute:
        raise AssertionError(f"answer_error_ratio is {answered:.3f}, but {value:.3f} of the predictions over the last "
                             f"{window} failed (5xx).")


def _plain(text) -> str:
    """Letters, digits and underscores only, lower case: wording compared without its punctuation."""
    return re.sub(r"[^a-z0-9_]", "", str(text).lower())


def check_log_findings(namespace: str, release, message, program=None) -> None:
    """The answers name the release that the error lines name and the error itself (its wording,
    or the part that names the exception), and, when given, the program whose pods log it, as the
    live logs say."""
    found = log_findings(namespace)
    if not found:
        raise AssertionError(f"No pod in {namespace} logs an error: the fault has not been injected yet "
                             "(run the Lab 2 fault cell).")
    if program is not None and str(program).strip().lower().removeprefix("deployment/") != found["program"]:
        raise AssertionError(f"The program is {program!r}, but the errors are not logged there: "
                             "follow a failed request's request_id through both programs' logs.")
    if rollouts_tag(release) != found["release"]:
        raise AssertionError(f"answer_faulty_release is {release!r}, but the error lines name another version.")
    said, wanted = _plain(message), _plain(found["message"])
    last = _plain(found["message"].rsplit(":", 1)[-1])
    if not (wanted in said or (len(said) >= 8 and said in wanted and last in said)):
        raise AssertionError(f"answer_error_message is {message!r}, which is not the error the faulty pods log "
                             "(give the message of the error lines, not the access log's `POST /predict 500`).")


def rollouts_tag(release) -> str:
    """`1.5.1` from `1.5.1`, `v1.5.1`, `api-server:1.5.1` or a whole image reference."""
    text = str(release).strip()
    return text.rpartition(":")[2].removeprefix("v") if text else ""


# --- set-up steps ----------------------------------------------------------------------------------
def baseline(namespace: str, environment: str = "production") -> None:
    """Put `namespace` back to its overlay when its api-server is not on the current release (an
    earlier run left the fault there), then wait until its metrics are calm."""
    current = rollouts.revision(namespace, "api-server")["images"]
    if current != [rollouts.image(GOOD["api-server"], "api-server")]:
        environments.ensure(namespace, environment)
    rollouts.wait_rolled_out(namespace, "api-server")
    wait_calm(namespace)


def wait_calm(namespace: str, timeout: float = 90) -> None:
    """Wait until the last minute of the namespace's predictions shows no fault (a run before
    this one may have left it faulty, or a fresh copy answered its first requests before the
    model-server was ready): under 1 % errors, p95 under 300 ms (a loaded machine's baseline
    stays below, a faulty release's is above)."""
    def look():
        errors = error_ratio(namespace, "1m")
        p95 = latency_quantile(namespace, 0.95, "1m")
        slow = float(p95["value"].iloc[0]) if not p95.empty and not pd.isna(p95["value"].iloc[0]) else 0.0
        if errors >= 0.01 or slow >= 0.3:
            raise NotYet(f"{namespace} still shows the last fault: {errors:.1%} errors, p95 {slow * 1000:.0f} ms "
                         "over the last minute")
    settle(look, timeout)


def alertmanager_routes() -> pd.DataFrame:
    """Alertmanager's routing tree as it runs now: which alerts go to which receiver (the
    notification channel), how long it waits to group them, and how often it repeats."""
    status = prometheus.alertmanager_status()
    config = yaml.safe_load(status["config"]["original"])
    top = config["route"]
    rows = [{"matchers": ", ".join(route.get("matchers", [])) or "(anything else)",
             "receiver": route.get("receiver", top["receiver"]),
             "group_wait": route.get("group_wait", top.get("group_wait")),
             "repeat_interval": route.get("repeat_interval", top.get("repeat_interval"))}
            for route in [*top.get("routes", []), {"receiver": top["receiver"]}]]
    channels = {r["name"]: ", ".join(f"{kind.removesuffix('_configs')} {c.get('url', '')}".strip()
                                     for kind, configs in r.items() if kind.endswith("_configs") for c in configs)
                for r in config.get("receivers", [])}
    frame = pd.DataFrame(rows)
    frame["channel"] = frame["receiver"].map(channels)
    return frame


def watch_alert(alert: str, namespace: str, since: float, timeout: float = 120, interval: float = 2,
                unloaded_timeout: float = 20) -> pd.DataFrame:
    """Follow `alert` of `namespace` from `since` (epoch seconds) until its notification reaches
    the receiver, or `timeout`: a row each time what Prometheus, Alertmanager or the receiver
    says about it changes, with the seconds since `since`. Gives up after `unloaded_timeout`
    when Prometheus has not loaded the alert at all."""
    rows, last = [], None
    started = time.monotonic()
    deadline = started + timeout
    while True:
        found = alerts.states(alert, namespace)
        in_prometheus = ("not loaded" if found is None else "firing" if "firing" in found
                         else "pending" if found else "inactive")
        held = prometheus.alertmanager_alerts()
        held = held[held["alertname"].eq(alert) & (held["namespace"].eq(namespace) if "namespace" in held else False)]
        in_alertmanager = held["state"].iloc[0] if not held.empty else "-"
        sent = prometheus.notifications(since=since)
        sent = sent[sent["alertname"].eq(alert) & (sent["namespace"].eq(namespace) if "namespace" in sent else False)
                    & sent["status"].eq("firing")]
        at_receiver = sent["receiver"].iloc[0] if not sent.empty else "-"
        now = (in_prometheus, in_alertmanager, at_receiver)
        if now != last:
            rows.append({"seconds": round(time.time() - since, 1), "prometheus": in_prometheus,
                         "alertmanager": in_alertmanager, "receiver": at_receiver})
            last = now
        unloaded = in_prometheus == "not loaded" and time.monotonic() - started > unloaded_timeout
        if at_receiver != "-" or unloaded or time.monotonic() > deadline:
            return pd.DataFrame(rows).set_index("seconds")
        time.sleep(interval)
