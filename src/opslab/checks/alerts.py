"""Checks on alerting: a rule is loaded into Prometheus, stays quiet while all is well, and fires
when it should, all the way to Alertmanager and its receiver.

Judged on behaviour, never on the rule's text: any expression that is quiet on the baseline and
fires on the fault passes. A namespace's rules are the PrometheusRules in it (the Prometheus
Operator's kind, `monitoring.coreos.com/v1`); the alerts they raise carry `namespace="<it>"`.

    alerts.rule_loaded("PredictionErrorRatio", "mlops-production")
    alerts.quiet("PredictionErrorRatio", "mlops-production")
    alerts.fires("PredictionErrorRatio", "mlops-production", since=fault_began, severity="P1")
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from opslab import cluster, prometheus
from opslab.checks.core import NotYet, settle

GROUP, VERSION, PLURAL = "monitoring.coreos.com", "v1", "prometheusrules"
ACTIVE = ("pending", "firing")


def _prometheus_rules(namespace: str) -> list[dict]:
    try:
        return cluster.custom_objects().list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    except cluster.ApiError as error:
        if error.status == 404:
            raise AssertionError("This cluster does not serve PrometheusRules (monitoring.coreos.com/v1): "
                                 "its rule controller is not installed.") from None
        raise


def _declared(namespace: str, alert: str) -> list[dict]:
    """The PrometheusRules in `namespace` that declare an alert named `alert`; AssertionError when
    there are none (nothing applied, or the alert named otherwise), or when the rule controller
    refused the one that does (its status says why)."""
    objects = _prometheus_rules(namespace)
    if not objects:
        raise AssertionError(f"There is no PrometheusRule in {namespace}: write your rule and apply it with "
                             f"`kubectl apply -f <file> -n {namespace}`.")
    declaring = [o for o in objects if any(r.get("alert") == alert for g in (o.get("spec") or {}).get("groups") or []
                                           for r in g.get("rules") or [])]
    if not declaring:
        declared = sorted({r.get("alert") for o in objects for g in (o.get("spec") or {}).get("groups") or []
                           for r in g.get("rules") or [] if r.get("alert")})
        raise AssertionError(f"No PrometheusRule in {namespace} declares an alert named {alert} "
                             f"(they declare: {', '.join(declared) or 'no alerts'}): name it `alert: {alert}`.")
    for rule in declaring:
        status = rule.get("status") or {}
        current = status.get("observedGeneration") == rule["metadata"].get("generation")
        for condition in status.get("conditions") or []:
            if condition.get("type") == "Loaded" and condition.get("status") == "False" and current:
                raise AssertionError(f"The lab did not load PrometheusRule {rule['metadata']['name']}: "
                                     f"{condition.get('reason')}: {condition.get('message')}. Fix it and apply it again.")
    return declaring


def _loaded(alert: str, namespace: str, files: Iterable[str] = ()) -> list[dict]:
    """Prometheus's alerting rules named `alert` that come from `namespace`'s PrometheusRules: in
    one of their rule `files` (their status names it), or labelled with the namespace."""
    files = {f for f in files if f}
    groups = prometheus.rule_groups("alert")
    return [{**rule, "group": group["name"], "file": group.get("file", "")}
            for group in groups for rule in group["rules"]
            if rule["name"] == alert and (rule.get("labels", {}).get("namespace") == namespace
                                          or group.get("file") in files
                                          or any(group.get("file", "").endswith("/" + f) for f in files))]


def _files(declaring: list[dict]) -> list[str]:
    """The rule files the rule controller wrote for these PrometheusRules (from their status)."""
    return [(o.get("status") or {}).get("ruleFile", "") for o in declaring]


def states(alert: str, namespace: str) -> list[str]:
    """The states (`pending`, `firing`) of `alert`'s active alerts for `namespace` now; [] when
    it is quiet, None when Prometheus has not loaded it from the namespace's PrometheusRules."""
    try:
        files = _files(_declared(namespace, alert))
    except AssertionError:
        return None
    rules = _loaded(alert, namespace, files)
    return [a["state"] for a in _ours(rules[0], namespace)] if rules else None


def _ours(rule: dict, namespace: str) -> list[dict]:
    """The rule's active alerts that belong to `namespace`."""
    return [a for a in rule.get("alerts") or [] if a.get("labels", {}).get("namespace", namespace) == namespace]


def rule_loaded(alert: str, namespace: str, timeout: float = 45) -> dict:
    """Prometheus evaluates an alerting rule `alert` from a PrometheusRule of `namespace`, and it
    evaluates without error; returns that rule as Prometheus reports it."""
    def look():
        declaring = _declared(namespace, alert)
        rules = _loaded(alert, namespace, _files(declaring))
        if not rules:
            raise NotYet(f"Your PrometheusRule declares {alert}, but Prometheus has not loaded it yet.")
        rule = rules[0]
        if rule.get("health") == "err":
            raise AssertionError(f"Prometheus cannot evaluate {alert}: {rule.get('lastError')}. Fix the expression "
                                 "(`promtool check rules` finds most mistakes before you apply).")
        if rule.get("health") != "ok":
            raise NotYet(f"Prometheus has loaded {alert} but not evaluated it yet.")
        return rule
    return settle(look, timeout)


def quiet(alert: str, namespace: str, evaluations: int = 2, timeout: float = 45) -> None:
    """`alert` is loaded and, evaluated `evaluations` more times, is neither pending nor firing:
    a rule that fires while all is well would page someone for nothing."""
    first = pd.Timestamp(rule_loaded(alert, namespace, timeout)["lastEvaluation"])
    files = _files(_declared(namespace, alert))
    seen: set[pd.Timestamp] = set()

    def look():
        [rule, *_] = _loaded(alert, namespace, files) or [None]
        if rule is None:
            raise NotYet(f"Prometheus no longer shows {alert}.")
        active = _ours(rule, namespace)
        if active:
            states = ", ".join(sorted({a["state"] for a in active}))
            value = active[0].get("value", "?")
            raise AssertionError(f"{alert} is {states} while {namespace} is healthy (its expression gives "
                                 f"{value}): raise the threshold, or measure what the task names.")
        evaluated = pd.Timestamp(rule["lastEvaluation"])
        if evaluated > first:
            seen.add(evaluated)
        if len(seen) < evaluations:
            raise NotYet(f"Prometheus has evaluated {alert} {len(seen)} more time(s); waiting for {evaluations}.")
    settle(look, timeout)


def fires(alert: str, namespace: str, since: float, severity: str | None = None, timeout: float = 120) -> dict:
    """`alert` fires for `namespace` in Prometheus, Alertmanager holds it (with `severity`, when
    given), and its firing notification reached the receiver after `since` (epoch seconds);
    returns that notification (receiver, received_at, labels)."""
    files = _files(_declared(namespace, alert))

    def look():
        rules = _loaded(alert, namespace, files)
        if not rules:
            raise NotYet(f"Prometheus has not loaded {alert} from {namespace}'s PrometheusRules.")
        active = _ours(rules[0], namespace)
        if not any(a["state"] == "firing" for a in active):
            state = active[0]["state"] if active else "inactive"
            raise NotYet(f"{alert} is {state} in Prometheus: it has not fired. Does its expression rise above the "
                         f"threshold under the fault, and is its `for:` short (seconds, in this lab)?")
        held = prometheus.alertmanager_alerts()
        held = held[held["alertname"].eq(alert) & held.get("namespace", pd.Series(dtype=str)).eq(namespace)]
        if held.empty:
            raise NotYet(f"{alert} fires in Prometheus, but Alertmanager does not hold it yet.")
        if severity and not held["severity"].eq(severity).any():
            raise AssertionError(f"{alert} reaches Alertmanager with severity {held['severity'].iloc[0]!r}, not "
                                 f"{severity!r}: Alertmanager routes on that label; set `severity: {severity}`.")
        if held["state"].eq("suppressed").all():
            raise NotYet(f"Alertmanager holds {alert} but suppresses it (a silence, or a P0 in {namespace}).")
        sent = prometheus.notifications(since=since)
        sent = sent[sent["alertname"].eq(alert) & sent.get("namespace", pd.Series(dtype=str)).eq(namespace)
                    & sent["status"].eq("firing")]
        if sent.empty:
            raise NotYet(f"Alertmanager holds {alert}, but its notification has not reached the receiver yet.")
        return sent.iloc[0].to_dict()
    return settle(look, timeout)
