"""The notebook helpers without a lab: they fail fast, with a sentence saying what is wrong, when
Prometheus, Alertmanager, the receiver or the API server is not there; and the dashboards export
as Grafana dashboard JSON that Grafana imports."""

from __future__ import annotations

import json
import socket
import time

import pytest
import yaml

from opslab import cluster, dashboards, prometheus, tables

FAST = 3.0  # seconds: "fails fast"


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on: a connection there is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def silent_port():
    """A loopback port that accepts connections and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


def failure(call) -> tuple[Exception, float]:
    started = time.monotonic()
    with pytest.raises((prometheus.PrometheusError, cluster.ClusterError)) as caught:
        call()
    return caught.value, time.monotonic() - started


PROMETHEUS_CALLS = {
    "query": lambda: prometheus.query("up"),
    "query_range": lambda: prometheus.query_range("up", start=300, end=600, step=15),
    "targets": prometheus.targets,
    "alerts": prometheus.alerts,
    "dashboard": lambda: dashboards.panel_data(dashboards.SYSTEM_OVERVIEW.panels[0], "mlops-production"),
}


@pytest.mark.parametrize("name", PROMETHEUS_CALLS)
def test_prometheus_down_fails_fast_naming_the_url(name, closed_port, monkeypatch):
    url = f"http://127.0.0.1:{closed_port}"
    monkeypatch.setenv("PROMETHEUS_URL", url)
    error, seconds = failure(PROMETHEUS_CALLS[name])
    assert seconds < FAST
    assert url in str(error) and "opslab lab up" in str(error) and "PROMETHEUS_URL" in str(error)


@pytest.mark.parametrize("setting, call", [("ALERTMANAGER_URL", prometheus.alertmanager_alerts),
                                           ("ALERT_RECEIVER_URL", prometheus.notifications)])
def test_alertmanager_and_receiver_down_fail_fast(setting, call, closed_port, monkeypatch):
    monkeypatch.setenv(setting, f"http://127.0.0.1:{closed_port}")
    error, seconds = failure(call)
    assert seconds < FAST and f"127.0.0.1:{closed_port}" in str(error) and setting in str(error)


def test_a_prometheus_that_does_not_answer_times_out(silent_port, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_URL", f"http://127.0.0.1:{silent_port}")
    error, seconds = failure(lambda: prometheus.query("up", timeout=0.5))
    assert seconds < FAST and "did not answer within 0.5s" in str(error)


TABLES = {
    "pods": lambda: tables.pods("mlops-production"),
    "deployments": tables.deployments,
    "events": lambda: tables.events("mlops-production"),
    "rollout_history": lambda: tables.rollout_history("mlops-production", "api-server"),
}


@pytest.mark.parametrize("name", TABLES)
def test_tables_fail_fast_when_the_api_server_is_down(name, closed_port, tmp_path, monkeypatch):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "down",
        "clusters": [{"name": "down", "cluster": {"server": f"https://127.0.0.1:{closed_port}",
                                                  "insecure-skip-tls-verify": True}}],
        "users": [{"name": "nobody", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "down", "context": {"cluster": "down", "user": "nobody"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    error, seconds = failure(TABLES[name])
    assert seconds < FAST and "cannot reach the Kubernetes API server" in str(error)


# --- Grafana export --------------------------------------------------------------------------------
@pytest.mark.parametrize("dashboard", dashboards.DASHBOARDS, ids=lambda d: d.uid)
def test_grafana_json_is_importable(dashboard, tmp_path):
    document = json.loads(dashboards.export(dashboard, tmp_path / "dashboard.json").read_text())
    assert document["schemaVersion"] == dashboards.SCHEMA_VERSION and document["uid"] == dashboard.uid
    assert document["__inputs"][0]["name"] == "DS_PROMETHEUS"
    assert [v["name"] for v in document["templating"]["list"]] == ["namespace"]
    panels = document["panels"]
    assert len({p["id"] for p in panels}) == len(panels) == len(dashboard.panels)
    occupied = set()
    for panel in panels:
        place = panel["gridPos"]
        assert 0 <= place["x"] and place["x"] + place["w"] <= dashboards.GRID_COLUMNS
        cells = {(x, y) for x in range(place["x"], place["x"] + place["w"])
                 for y in range(place["y"], place["y"] + place["h"])}
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
        assert panel["targets"] and all(t["expr"] and t["datasource"]["uid"] == "${DS_PROMETHEUS}"
                                        for t in panel["targets"])
        assert panel["type"] in {"timeseries", "stat", "bargauge"}
