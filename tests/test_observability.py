"""Observability against the running lab: Prometheus finds the platform's pods through the
Kubernetes API and scrapes only inside the network boundary; a faulty rollout raises the
error-rate alert all the way to the receiver, and a rollback resolves it; `kubectl top` reads
what the pods' processes really use; the dashboards render from live data."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
import time
from urllib.parse import urlsplit

import kubernetes
import matplotlib
import pandas as pd
import pytest

from opslab import cluster, dashboards, environments, prometheus, rollouts, tables
from opslab.lab.spec import LabSpec
from tests.waiting import wait_for

matplotlib.use("Agg")
SPEC = LabSpec.default()
ANNOTATIONS = {"prometheus.io/scrape": "true", "prometheus.io/port": "8080", "prometheus.io/path": "/metrics"}
MONITORING_PORTS = {SPEC.ports.prometheus, SPEC.ports.alertmanager, SPEC.ports.alert_receiver,
                    SPEC.ports.backup_metrics, SPEC.ports.kube_state_metrics,
                    SPEC.ports.kube_state_metrics_telemetry, SPEC.ports.certificate_metrics,
                    SPEC.ports.metrics_server}


def inside_boundary(host: str) -> bool:
    address = ipaddress.ip_address(host)
    return address.is_loopback or any(address in network for network in SPEC.network.ranges)


def test_every_scrape_target_is_inside_the_network_boundary(lab):
    found = prometheus.targets()
    outside = [url for url in found["scrape_url"] if not inside_boundary(urlsplit(url).hostname)]
    assert not outside, f"targets outside loopback and the lab's ranges: {outside}"
    jobs = set(found["job"])
    assert {"prometheus", "alertmanager", "apiserver", "etcd", "kube-controller-manager", "kube-scheduler",
            "kube-proxy", "coredns", "kwok", "kubelet", "kube-state-metrics", "certificates", "backups",
            "kubernetes-pods"} <= jobs
    down = found[found["health"] != "up"]
    assert down[~down["job"].eq("kubernetes-pods")].empty, down[["job", "scrape_url", "last_error"]].to_string()


def test_observability_listens_on_loopback_or_the_lab_link_only(lab):
    sockets = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, timeout=10).stdout.split("\n")
    ours = [line.split()[3] for line in sockets if line.strip()
            and int(line.split()[3].rpartition(":")[2]) in MONITORING_PORTS]
    assert len(ours) >= len(MONITORING_PORTS), ours
    assert all(inside_boundary(address.rpartition(":")[0].strip("[]")) for address in ours), ours


def test_a_pod_is_an_up_target_seconds_after_running_and_drops_when_it_goes(lab, api, namespace):
    apps = kubernetes.client.AppsV1Api(api)
    labels = {"app": "scraped"}
    container = {"name": "model-server", "image": rollouts.image("2.1.0", "model-server"),
                 "ports": [{"name": "http", "containerPort": 8080}],
                 "env": [{"name": "LISTEN_ADDRESS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]}
    apps.create_namespaced_deployment(namespace, {
        "metadata": {"name": "scraped"}, "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                                                   "template": {"metadata": {"labels": labels, "annotations": ANNOTATIONS},
                                                                "spec": {"containers": [container]}}}})
    wait_for(lambda: tables.pods(namespace).query("status == 'Running'").shape[0] == 1, timeout=90,
             what="the pod to run")
    started = time.monotonic()
    up = f'up{{namespace="{namespace}", job="kubernetes-pods"}}'
    # Discovery hands Prometheus new targets every 5 s, and it scrapes every 5 s.
    wait_for(lambda: not prometheus.query(f"{up} == 1").empty, timeout=20, what="an up target")
    print(f"\nup target {time.monotonic() - started:.1f}s after the pod was Running")

    apps.delete_namespaced_deployment("scraped", namespace)
    wait_for(lambda: tables.pods(namespace).empty, timeout=60, what="the pod to go")
    gone = time.monotonic()
    wait_for(lambda: namespace not in set(prometheus.targets().get("namespace", pd.Series(dtype=str))),
             timeout=20, what="the target to drop")
    print(f"target dropped {time.monotonic() - gone:.1f}s after the pod was deleted")


def test_a_bad_query_is_refused_in_prometheus_own_words(lab):
    with pytest.raises(prometheus.PrometheusError, match="parse error"):
        prometheus.query("sum(rate(http_requests_total[1m])")


def test_frames_have_labels_as_columns(lab):
    frame = prometheus.query('sum by (namespace, app) (up{job="kubernetes-pods", namespace="mlops-production"})')
    assert list(frame.columns) == ["app", "namespace", "value"]
    assert set(frame["app"]) >= {"api-server", "model-server"} and (frame["value"] >= 1).all()
    series = prometheus.query_range('up{job="apiserver"}', start=dt.timedelta(minutes=2), step="15s")
    assert list(series.columns[:1]) == ["timestamp"] and series.columns[-1] == "value" and len(series) >= 2


def test_certificate_expiry_is_exported(lab):
    frame = prometheus.query('certmanager_certificate_expiration_timestamp_seconds{namespace="mlops-production"}')
    assert not frame.empty and (frame["value"] > time.time()).all()


def test_the_cluster_as_tables(lab):
    pods = tables.pods("mlops-production")
    assert {"api-server", "model-server", "postgres", "traffic-generator"} <= set(pods["app"])
    assert pods["ip"].map(lambda ip: inside_boundary(ip) if ip else True).all()
    deployments = tables.deployments("mlops-production").set_index("name")
    history = tables.rollout_history("mlops-production", "api-server")
    assert history["current"].sum() == 1
    assert history.loc[history["current"], "revision"].item() == deployments.loc["api-server", "revision"]
    events = tables.events("mlops-production")
    assert list(events.columns) == ["last_seen", "namespace", "type", "reason", "object", "message", "count"]
    assert events["last_seen"].is_monotonic_increasing


# --- the platform in a namespace of its own ---------------------------------------------------------
@pytest.fixture(scope="module")
def platform_copy(lab):
    """The production overlay in a namespace of the test's own, deleted afterwards."""
    namespace = environments.namespace_for("production", f"obs{int(time.time()) % 100000}")
    environments.ensure(namespace, "production")
    yield namespace
    environments.delete(namespace)


def notifications(since: float, namespace: str, status: str, alertname: str = "HighErrorRate") -> list[dict]:
    """The receiver's notifications about one alert of the namespace, since a moment."""
    return [row for row in prometheus.notifications(since=since).to_dict("records")
            if row["alertname"] == alertname and row.get("namespace") == namespace and row["status"] == status]


def test_faulty_release_fires_the_error_rate_alert_and_rollback_resolves_it(platform_copy):
    namespace = platform_copy
    quiet = f'ALERTS{{alertname="HighErrorRate", namespace="{namespace}"}}'
    assert prometheus.query(quiet).empty, "the error-rate alert fires before the faulty release"
    fault = time.time()
    rollouts.set_release(namespace, "api-server", "1.5.1", wait=False)
    first = wait_for(lambda: notifications(fault, namespace, "firing"), timeout=150, interval=1,
                     what="the error-rate notification")[0]
    assert first["severity"] == "P1" and first["receiver"] == "page-oncall" and first["app"] == "api-server"
    print(f"\nfault to notification: {first['received_at'].timestamp() - fault:.0f}s")

    rollback = time.time()
    cluster.kubectl("rollout", "undo", "deployment/api-server", "-n", namespace)
    wait_for(lambda: notifications(rollback, namespace, "resolved"), timeout=150, interval=1,
             what="the resolved notification")
    print(f"rollback to resolved: {time.time() - rollback:.0f}s")


@pytest.fixture(scope="module")
def resource_metrics(lab):
    """kwok serves the pods' resource metrics: it counts a node's pods only when it was started with
    the lab's current configuration (a pod stage loaded)."""
    if prometheus.query('count(container_memory_working_set_bytes{job="kubelet"})').empty:
        pytest.fail("kwok reports no container metrics: it runs a configuration older than the lab's; "
                    "stop it and run `opslab lab up` to start it again")
    # A metrics-server just started has nothing to serve until its second scrape (15 s apart).
    wait_for(lambda: cluster.kubectl("top", "nodes", check=False).returncode == 0, timeout=60, interval=2,
             what="metrics-server to serve node metrics")


def test_kubectl_top_and_prometheus_show_a_leaking_release_growing(platform_copy, resource_metrics):
    namespace = platform_copy
    assert "lab-node-1" in cluster.kubectl("top", "nodes").stdout
    rollouts.set_release(namespace, "api-server", "1.5.2")

    def memory() -> dict[str, int]:
        """MiB per pod; empty while metrics-server has not scraped the new pods twice yet."""
        top = cluster.kubectl("top", "pods", "-n", namespace, "-l", "app=api-server", "--no-headers", check=False)
        return {line.split()[0]: int(line.split()[2].rstrip("Mi")) for line in top.stdout.splitlines()}

    def serving() -> set[str]:  # the old release's pods may still be terminating
        return set(tables.pods(namespace, selector="app=api-server").query("status == 'Running'")["name"])

    first = wait_for(lambda: (seen := memory()) and set(seen) == serving() and seen, timeout=90, interval=2,
                     what="kubectl top for the new pods")
    pods = set(first)
    time.sleep(30)
    second = memory()
    grown = {pod: second[pod] - first[pod] for pod in pods}
    print(f"\nkubectl top: api-server memory grew by {grown} MiB in 30 s")
    assert all(growth >= 20 for growth in grown.values()), grown
    growth = prometheus.query(f'deriv(container_memory_working_set_bytes{{namespace="{namespace}", '
                              f'container="api-server"}}[1m])')
    growth = growth[growth["pod"].isin(pods)]  # the old release's pods are still in the last minute
    assert len(growth) == len(pods) and (growth["value"] > 2**20 / 2).all(), growth
    memory_alerts = prometheus.alerts().query("alertname == 'MemoryGrowth'")
    assert set(pods) <= set(memory_alerts.get("pod", [])), "the memory-growth alert is not pending or firing"


def test_kubectl_top_pods_in_production(resource_metrics):
    lines = cluster.kubectl("top", "pods", "-n", "mlops-production", "--no-headers").stdout.splitlines()
    usage = {line.split()[0]: line.split()[1:] for line in lines}
    api_servers = [pod for pod in usage if pod.startswith("api-server-")]
    assert len(api_servers) >= 3 and all(usage[pod][1] != "0Mi" for pod in api_servers), usage


# --- dashboards -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dashboard", dashboards.DASHBOARDS, ids=lambda d: d.uid)
def test_every_dashboard_query_runs(lab, dashboard):
    for panel in dashboard.panels:
        data = dashboards.panel_data(panel, "mlops-production", minutes=5, step="30s")
        assert list(data.columns)[-1] == "series", panel.title


def test_dashboard_renders_from_live_data(lab):
    folder = SPEC.paths.home / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    for dashboard in (dashboards.SYSTEM_OVERVIEW, dashboards.APPLICATION_PERFORMANCE):
        path = folder / f"{dashboard.uid}.png"
        figure = dashboards.render(dashboard, namespace="mlops-production", minutes=15)
        figure.savefig(path, dpi=80)
        assert path.stat().st_size > 20_000
        print(f"\ndashboard rendered from live data: {path}")
