"""Module 3's lab side, against the running lab: trainees' PrometheusRules are loaded by the rule
controller without a restart, scoped to their namespace, refused with Prometheus's own reason when
invalid, and unloaded when deleted; Prometheus and Alertmanager answer with their web UIs at the
guide's monitoring URLs, through the Ingress gateway over verified HTTPS."""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import statistics
import time

import kubernetes
import pytest
import requests

from opslab import cluster
from opslab.config import setting
from opslab.lab import monitoring
from opslab.lab.rule_sync import file_name
from opslab.lab.spec import LabSpec
from tests.waiting import wait_for

SPEC = LabSpec.default()
GROUP, VERSION, PLURAL = "monitoring.coreos.com", "v1", "prometheusrules"
WAIT = 30  # s: the controller polls once a second; a reload takes well under one
ALERT_WAIT = 45  # s: the group is evaluated every second, Prometheus sends at once


# --- helpers ------------------------------------------------------------------------------------
def prometheus_rule(name: str, rules: list[dict], group: str = "lab-test", interval: str = "1s") -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PrometheusRule", "metadata": {"name": name},
            "spec": {"groups": [{"name": group, "interval": interval, "rules": rules}]}}


def apply(api, namespace: str, body: dict) -> dict:
    custom = kubernetes.client.CustomObjectsApi(api)
    return custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def read(api, namespace: str, name: str) -> dict:
    return kubernetes.client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def loaded_condition(api, namespace: str, name: str) -> dict | None:
    obj = read(api, namespace, name)
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"]["generation"]:
        return None
    return next((c for c in status.get("conditions") or () if c["type"] == "Loaded"), None)


def groups_of(namespace: str, name: str) -> list[dict]:
    """The groups Prometheus evaluates from the object's rule file."""
    answer = requests.get(f"{setting('PROMETHEUS_URL')}/api/v1/rules", timeout=10).json()
    return [g for g in answer["data"]["groups"] if g["file"].endswith("/" + file_name(namespace, name))]


def firing(namespace: str, alertname: str) -> list[dict]:
    answer = requests.get(f"{setting('PROMETHEUS_URL')}/api/v1/alerts", timeout=10).json()
    return [a for a in answer["data"]["alerts"] if a["labels"].get("alertname") == alertname
            and a["labels"].get("namespace") == namespace and a["state"] == "firing"]


def in_alertmanager(namespace: str, alertname: str) -> list[dict]:
    filters = [f'alertname="{alertname}"', f'namespace="{namespace}"']
    answer = requests.get(f"{setting('ALERTMANAGER_URL')}/api/v2/alerts", params={"filter": filters}, timeout=10)
    answer.raise_for_status()
    return answer.json()


# --- PrometheusRules ----------------------------------------------------------------------------
def test_a_rule_is_loaded_scoped_to_its_namespace_and_its_alert_reaches_alertmanager(lab, api, namespace):
    rules = [
        {"alert": "OpslabLabTestAlwaysFiring", "expr": "vector(1)", "labels": {"severity": "P3"},
         "annotations": {"summary": "fires as soon as it is loaded"}},
        # Asks for another namespace's series, and claims another namespace: both are overruled.
        {"record": "opslab_test:up:sum", "expr": 'sum(up{namespace="mlops-production"})',
         "labels": {"namespace": "mlops-production"}},
    ]
    started = time.monotonic()
    apply(api, namespace, prometheus_rule("always-firing", rules))
    groups = wait_for(lambda: groups_of(namespace, "always-firing"), timeout=WAIT, what="the rule to be loaded")
    print(f"\nrule visible in /api/v1/rules {time.monotonic() - started:.1f}s after it was applied")
    loaded = groups[0]["rules"]
    assert [r["name"] for r in loaded] == ["OpslabLabTestAlwaysFiring", "opslab_test:up:sum"]
    assert all(r["labels"]["namespace"] == namespace for r in loaded)
    assert f'namespace="{namespace}"' in loaded[1]["query"] and "mlops-production" not in loaded[1]["query"]

    condition = wait_for(lambda: loaded_condition(api, namespace, "always-firing"), timeout=WAIT, what="a status")
    assert (condition["status"], condition["reason"]) == ("True", "Loaded"), condition
    assert "2 rule(s) in 1 group(s)" in condition["message"]

    wait_for(lambda: firing(namespace, "OpslabLabTestAlwaysFiring"), timeout=ALERT_WAIT, what="the alert to fire")
    received = wait_for(lambda: in_alertmanager(namespace, "OpslabLabTestAlwaysFiring"), timeout=ALERT_WAIT,
                        what="the alert to reach Alertmanager")
    assert received[0]["labels"]["severity"] == "P3"
    assert received[0]["generatorURL"].startswith(monitoring.external_url(SPEC, monitoring.PROMETHEUS_PATH))


def test_an_invalid_rule_is_refused_with_prometheus_reason_and_loads_nothing(lab, api, namespace):
    broken = [{"alert": "OpslabLabTestBroken", "expr": "sum(rate(http_requests_total[5m])"}]
    apply(api, namespace, prometheus_rule("broken", broken))
    condition = wait_for(lambda: loaded_condition(api, namespace, "broken"), timeout=WAIT, what="a status")
    assert (condition["status"], condition["reason"]) == ("False", "InvalidRules"), condition
    assert "parse error" in condition["message"] and f"PrometheusRule {namespace}/broken" in condition["message"]
    assert "/tmp/" not in condition["message"]  # the object is named, not the controller's scratch file
    assert not (SPEC.paths.prometheus_rules / file_name(namespace, "broken")).exists()
    assert groups_of(namespace, "broken") == []

    # What a trainee reads.
    described = cluster.kubectl("describe", "prometheusrule", "broken", "-n", namespace).stdout
    assert "InvalidRules" in described and "parse error" in described
    events = kubernetes.client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector="involvedObject.name=broken,reason=InvalidRules").items
    assert events and events[0].type == "Warning" and "parse error" in events[0].message
    listed = cluster.kubectl("get", "prometheusrules", "-n", namespace).stdout
    assert re.search(r"broken\s+False\s+InvalidRules", listed), listed

    # Mended, it loads; broken again, the file loaded before goes too.
    fixed = [{"alert": "OpslabLabTestBroken", "expr": "sum(rate(http_requests_total[5m])) > 1e9"}]
    custom = kubernetes.client.CustomObjectsApi(api)
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "broken",
                                          {"spec": prometheus_rule("broken", fixed)["spec"]})
    wait_for(lambda: groups_of(namespace, "broken"), timeout=WAIT, what="the mended rule to load")
    bad_duration = [{"alert": "OpslabLabTestBroken", "expr": "vector(1)", "for": "five minutes"}]
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "broken",
                                          {"spec": prometheus_rule("broken", bad_duration)["spec"]})
    wait_for(lambda: not groups_of(namespace, "broken"), timeout=WAIT, what="the broken rule to unload")
    condition = wait_for(lambda: loaded_condition(api, namespace, "broken"), timeout=WAIT, what="a status")
    assert condition["reason"] == "InvalidRules" and "five minutes" in condition["message"], condition


def test_deleting_a_rule_unloads_it(lab, api, namespace):
    rule = [{"record": "opslab_test:one", "expr": "vector(1)"}]
    apply(api, namespace, prometheus_rule("short-lived", rule))
    wait_for(lambda: groups_of(namespace, "short-lived"), timeout=WAIT, what="the rule to load")
    started = time.monotonic()
    kubernetes.client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                                            "short-lived")
    wait_for(lambda: not groups_of(namespace, "short-lived"), timeout=WAIT, what="the rule to unload")
    print(f"\nrule gone from /api/v1/rules {time.monotonic() - started:.1f}s after it was deleted")
    assert not (SPEC.paths.prometheus_rules / file_name(namespace, "short-lived")).exists()


def test_two_namespaces_rules_do_not_interfere(lab, api, namespace, other_namespace):
    same = [{"alert": "OpslabLabTestSameName", "expr": "vector(1)", "labels": {"severity": "P3"}}]
    for each in (namespace, other_namespace):
        apply(api, each, prometheus_rule("shared-name", same))
    for each in (namespace, other_namespace):
        wait_for(lambda n=each: groups_of(n, "shared-name"), timeout=WAIT, what=f"the rule in {each} to load")
        wait_for(lambda n=each: firing(n, "OpslabLabTestSameName"), timeout=ALERT_WAIT, what=f"{each}'s alert")

    # A broken rule in one namespace leaves the other's loaded; deleting it leaves the other's too.
    apply(api, other_namespace, prometheus_rule("broken", [{"record": "x", "expr": "up{"}]))
    condition = wait_for(lambda: loaded_condition(api, other_namespace, "broken"), timeout=WAIT, what="a status")
    assert condition["reason"] == "InvalidRules"
    assert groups_of(namespace, "shared-name") and groups_of(other_namespace, "shared-name")
    kubernetes.client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                                            "shared-name")
    wait_for(lambda: not groups_of(namespace, "shared-name"), timeout=WAIT, what="the first namespace's rule to go")
    assert groups_of(other_namespace, "shared-name")
    assert loaded_condition(api, other_namespace, "shared-name")["reason"] == "Loaded"


def test_rule_load_latency(lab, api, namespace):
    """Object applied -> its group in /api/v1/rules; printed, never asserted (a figure, not a test)."""
    taken = []
    for number in range(3):
        started = time.monotonic()
        apply(api, namespace, prometheus_rule(f"latency-{number}", [{"record": f"opslab_test:n{number}",
                                                                      "expr": "vector(1)"}]))
        wait_for(lambda n=number: groups_of(namespace, f"latency-{n}"), timeout=WAIT, what="the rule to load",
                 interval=0.05)
        taken.append(time.monotonic() - started)
    print(f"\nrule load latency: median {statistics.median(taken):.2f}s of {[round(t, 2) for t in taken]}")


def test_the_lab_own_rules_stay_loaded(lab):
    answer = requests.get(f"{setting('PROMETHEUS_URL')}/api/v1/rules", timeout=10).json()
    files = {g["file"] for g in answer["data"]["groups"]}
    assert str(SPEC.paths.config / "rules" / "platform.rules.yaml") in files


# --- the monitoring URLs ------------------------------------------------------------------------
def gateway_get(path: str) -> tuple[int, dict[str, str], bytes]:
    """GET https://monitoring.mlops-platform.com<path> at the Ingress gateway, verified with the lab's
    CA for that name, as `curl --cacert .opslab/pki/ca.crt --resolve ...` would."""
    host, port = monitoring.MONITORING_HOST, SPEC.ports.ingress
    context = ssl.create_default_context(cafile=str(SPEC.paths.pki / "ca.crt"))
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=10)
    connection.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                          server_hostname=host)  # given a socket, it never connects
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_prometheus_answers_with_its_ui_at_the_monitoring_url(lab):
    status, _, body = wait_for(lambda: (answer := gateway_get("/prometheus/query"))[0] == 200 and answer,
                               timeout=WAIT, what="the Prometheus UI through the gateway")
    page = body.decode()
    assert "<title>Prometheus" in page and 'id="root"' in page, page[:500]
    script = re.search(r'src="\./(assets/index-[^"]+\.js)"', page)
    assert script, page[:2000]
    status, headers, code = gateway_get(f"/prometheus/{script.group(1)}")
    assert status == 200 and "javascript" in headers["content-type"] and len(code) > 100_000
    status, _, body = gateway_get("/prometheus/api/v1/query?query=up")
    assert status == 200 and json.loads(body)["status"] == "success"
    status, headers, _ = gateway_get("/prometheus")
    assert status in (301, 302) and "/prometheus" in headers["location"]


def test_alertmanager_answers_with_its_ui_at_the_monitoring_url(lab):
    status, _, body = wait_for(lambda: (answer := gateway_get("/alertmanager/"))[0] == 200 and answer,
                               timeout=WAIT, what="the Alertmanager UI through the gateway")
    page = body.decode()
    assert "<title>Alertmanager</title>" in page and "Elm.Main.init" in page, page[:500]
    status, headers, code = gateway_get("/alertmanager/script.js")
    assert status == 200 and b"Elm" in code and len(code) > 50_000
    status, _, body = gateway_get("/alertmanager/api/v2/status")
    assert status == 200 and json.loads(body)["cluster"]["status"] == "disabled"


def test_the_monitoring_certificate_is_the_lab_issuer_s(lab):
    with pytest.raises(ssl.SSLCertVerificationError):
        context = ssl.create_default_context()  # the machine's CAs do not know the lab's
        with socket.create_connection(("127.0.0.1", SPEC.ports.ingress), timeout=10) as raw:
            context.wrap_socket(raw, server_hostname=monitoring.MONITORING_HOST)
    certificate = kubernetes.client.CustomObjectsApi(cluster.api_client()).get_namespaced_custom_object(
        "cert-manager.io", "v1", "monitoring", "certificates", "monitoring-cert")
    ready = next(c for c in certificate["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
