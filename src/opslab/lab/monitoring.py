"""The lab's observability: Prometheus, Alertmanager and what feeds them, as lab components.

Prometheus (built from its Go module: Debian's package has no Kubernetes service discovery)
discovers the platform's pods and the nodes through the lab's API server and scrapes them, the
control plane, kube-state-metrics and the lab's own exporters; it evaluates the platform's alert
rules (rules/platform.rules.yaml) and sends what fires to Alertmanager (Debian's), which routes
by the guide's severities to the lab's alert receiver. metrics-server serves `kubectl top` from
kwok's kubelet resource metrics, which the resource-usage publisher feeds from the pods' real
processes.

Trainees' own alerting and recording rules are PrometheusRule objects, as with the Prometheus
Operator: the rule controller (rule_sync.py) writes them into a rule folder of their own and
reloads Prometheus; the lab's rules stay files (rules/).

Prometheus and Alertmanager answer where the platform's guide has them, behind the Ingress
gateway: https://monitoring.mlops-platform.com/prometheus and /alertmanager, with their web UIs
(build.py compiles Prometheus's in, and unpacks Alertmanager's, which Debian's package leaves
out). Each runs under that path (its --web.external-url; the route prefix follows), directly on
loopback too: PROMETHEUS_URL and ALERTMANAGER_URL carry the prefix. The gateway proxies only to
a Service's EndpointSlice endpoints, and the API server refuses loopback endpoint addresses, so
each also listens on the lab link's host address, 10.243.255.1, the address a selector-less
Service in namespace `monitoring` points at with a hand-kept EndpointSlice
(manifests/monitoring-access.yaml), as metrics-server's does: the address is the host's own end
of the lab's veth, reachable from the host and from inside the lab's namespaces only, never from
the machine's network. The Ingress and its Certificate, issued by the lab's ClusterIssuer, are
manifests/monitoring-ingress.yaml.

Every listener is on loopback or on the lab link's host address (metrics-server, which the API
server reaches there, Prometheus and Alertmanager) (README: "The network boundary"); every scrape
target is on loopback or inside the lab's ranges.
"""

from __future__ import annotations

import base64
import functools
import shutil
import sys
from pathlib import Path

import requests
import yaml

from opslab.lab import build
from opslab.lab.build import BuildError
from opslab.lab.components import MANIFESTS, Component
from opslab.lab.network import bridge_ip
from opslab.lab.processes import Command
from opslab.lab.spec import LabSpec

RULES = Path(__file__).parent / "rules"
# Where the platform's guide has them: behind the Ingress gateway, each under its own path.
MONITORING_HOST = "monitoring.mlops-platform.com"
PROMETHEUS_PATH = "/prometheus"
ALERTMANAGER_PATH = "/alertmanager"
SCRAPE_INTERVAL = "5s"  # the platform's: a lesson sees a change within seconds
CONTROL_PLANE_INTERVAL = "15s"
RETENTION = "2d"
RELOAD_TIMEOUT = 10
# Debian's package (scripts/setup.sh installs it).
ALERTMANAGER = build.ALERTMANAGER
# The guide's severities, each routed to where such an alert would go, re-sent as often as its
# response time asks (P0 5 min, P1 15 min, P2 2 h, P3 next business day).
ROUTES = {
    "P0": ("page-oncall", "1s", "5m"),
    "P1": ("page-oncall", "1s", "15m"),
    "P2": ("ticket-platform-team", "5s", "2h"),
    "P3": ("digest-platform-team", "10s", "24h"),
}


# --- where they answer ---------------------------------------------------------------------------
def prometheus_url(spec: LabSpec) -> str:
    """Prometheus on loopback, route prefix included: PROMETHEUS_URL."""
    return f"http://127.0.0.1:{spec.ports.prometheus}{PROMETHEUS_PATH}"


def alertmanager_url(spec: LabSpec) -> str:
    """Alertmanager on loopback, route prefix included: ALERTMANAGER_URL."""
    return f"http://127.0.0.1:{spec.ports.alertmanager}{ALERTMANAGER_PATH}"


def external_url(spec: LabSpec, path: str) -> str:
    """The URL a browser uses, through the Ingress gateway; what the UIs' links and alerts' links name."""
    return f"https://{MONITORING_HOST}:{spec.ports.ingress}{path}"


# --- Prometheus -------------------------------------------------------------------------------
def _static(job: str, address: str, **options) -> dict:
    return {"job_name": job, "static_configs": [{"targets": [address]}], **options}


def _control_plane(job: str, address: str, **options) -> dict:
    # Histogram buckets are most of the control plane's series (some 40 000, nine in ten of all
    # the lab's): its histograms keep their _sum and _count, an average latency for each.
    drop_buckets = {"source_labels": ["__name__"], "regex": ".+_bucket", "action": "drop"}
    return _static(job, address, scrape_interval=CONTROL_PLANE_INTERVAL, metric_relabel_configs=[drop_buckets],
                   **options)


def _copy(source: str, target: str) -> dict:
    return {"source_labels": [source], "target_label": target}


def prometheus_config(spec: LabSpec) -> dict:
    pki, net, ports = spec.paths.pki, spec.network, spec.ports
    ca = {"ca_file": str(pki / "ca.crt")}
    identity = {**ca, "cert_file": str(pki / "prometheus.crt"), "key_file": str(pki / "prometheus.key")}
    discovery = lambda role: [{"role": role, "api_server": spec.apiserver_url, "tls_config": identity}]
    loopback = lambda port: f"127.0.0.1:{port}"
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": "4s", "evaluation_interval": SCRAPE_INTERVAL},
        # The lab's own rules, then trainees' PrometheusRules (rule_sync.py keeps that folder).
        "rule_files": [str(spec.paths.config / "rules" / "*.yaml"), str(spec.paths.prometheus_rules / "*.yaml")],
        "alerting": {"alertmanagers": [{"path_prefix": ALERTMANAGER_PATH,
                                        "static_configs": [{"targets": [loopback(ports.alertmanager)]}]}]},
        "scrape_configs": [
            _static("prometheus", loopback(ports.prometheus), metrics_path=f"{PROMETHEUS_PATH}/metrics"),
            _static("alertmanager", loopback(ports.alertmanager), metrics_path=f"{ALERTMANAGER_PATH}/metrics"),
            # The control plane, each where components.py has it listen.
            _control_plane("apiserver", f"{net.host_ip}:{ports.apiserver}", scheme="https", tls_config=identity),
            _control_plane("etcd", "127.0.0.1:2381"),
            _control_plane("kube-controller-manager", loopback(ports.controller_manager), scheme="https",
                           tls_config=identity),
            _control_plane("kube-scheduler", loopback(ports.scheduler), scheme="https", tls_config=identity),
            _control_plane("kube-proxy", f"{net.node_ip}:10249"),
            _static("coredns", f"{bridge_ip(net).ip}:9153"),
            _static("kwok", f"{net.host_ip}:{ports.kwok}", scheme="https", tls_config=ca),
            # Cluster state as metrics; its own labels (namespace, pod) are the ones that count.
            _static("kube-state-metrics", loopback(ports.kube_state_metrics), honor_labels=True),
            _static("certificates", loopback(ports.certificate_metrics)),
            _static("backups", loopback(ports.backup_metrics)),
            # Each node's kubelet resource metrics (served by kwok) at the path its annotation names.
            {"job_name": "kubelet", "scheme": "https", "tls_config": ca, "kubernetes_sd_configs": discovery("node"),
             "relabel_configs": [
                 {"source_labels": ["__meta_kubernetes_node_annotation_metrics_k8s_io_resource_metrics_path"],
                  "regex": "(.+)", "action": "keep"},
                 _copy("__meta_kubernetes_node_annotation_metrics_k8s_io_resource_metrics_path", "__metrics_path__"),
                 _copy("__meta_kubernetes_node_name", "node"),
                 _copy("__meta_kubernetes_node_name", "instance"),
             ]},
            # The platform's pods, by their prometheus.io annotations, while they run.
            {"job_name": "kubernetes-pods", "kubernetes_sd_configs": discovery("pod"), "relabel_configs": [
                {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"], "regex": "true",
                 "action": "keep"},
                {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Running", "action": "keep"},
                {"source_labels": ["__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port"],
                 "regex": r"([^:]+)(?::\d+)?;(\d+)", "replacement": "$1:$2", "target_label": "__address__"},
                {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"], "regex": "(.+)",
                 "target_label": "__metrics_path__"},
                _copy("__meta_kubernetes_namespace", "namespace"),
                _copy("__meta_kubernetes_pod_name", "pod"),
                _copy("__meta_kubernetes_pod_node_name", "node"),
                _copy("__meta_kubernetes_pod_label_app", "app"),
                _copy("__meta_kubernetes_pod_label_track", "track"),
            ]},
        ],
    }


# --- Alertmanager -----------------------------------------------------------------------------
def alertmanager_config(spec: LabSpec) -> dict:
    receiver_url = f"http://127.0.0.1:{spec.ports.alert_receiver}/alerts"
    receivers = sorted({receiver for receiver, _, _ in ROUTES.values()})
    return {
        "global": {"resolve_timeout": "1m"},
        "route": {
            "receiver": ROUTES["P3"][0],  # an alert without a severity is read with the least urgent
            "group_by": ["alertname", "namespace", "severity"],
            "group_wait": "5s", "group_interval": "10s", "repeat_interval": "24h",
            "routes": [{"matchers": [f'severity="{severity}"'], "receiver": receiver, "group_wait": wait,
                        "repeat_interval": repeat} for severity, (receiver, wait, repeat) in ROUTES.items()],
        },
        # An outage (P0) makes the lesser alerts of its namespace noise: they are held back meanwhile.
        "inhibit_rules": [{"source_matchers": ['severity="P0"'], "target_matchers": ['severity=~"P1|P2|P3"'],
                           "equal": ["namespace"]}],
        "receivers": [{"name": name, "webhook_configs": [{"url": receiver_url, "send_resolved": True}]}
                      for name in receivers],
    }


# --- metrics-server's APIService: it carries the lab's CA -------------------------------------
def metrics_apiservice(spec: LabSpec) -> dict:
    ca = base64.b64encode((spec.paths.pki / "ca.crt").read_bytes()).decode()
    return {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": "v1beta1.metrics.k8s.io"},
            "spec": {"group": "metrics.k8s.io", "version": "v1beta1", "groupPriorityMinimum": 100,
                     "versionPriority": 100, "caBundle": ca,
                     "service": {"name": "metrics-server", "namespace": "kube-system", "port": 443}}}


def write_configs(spec: LabSpec) -> None:
    """Prometheus's and Alertmanager's configurations, the alert rules and metrics-server's
    APIService, rewritten at every `up`; a running Prometheus or Alertmanager whose files changed
    reloads them."""
    if not shutil.which(ALERTMANAGER):
        raise BuildError(f"{ALERTMANAGER} is not installed: run scripts/setup.sh (Debian's package of that name).")
    config = spec.paths.config
    (config / "rules").mkdir(parents=True, exist_ok=True)
    spec.paths.prometheus_rules.mkdir(parents=True, exist_ok=True)
    prometheus = {config / "prometheus.yml": yaml.safe_dump(prometheus_config(spec), sort_keys=False),
                  **{config / "rules" / source.name: source.read_text() for source in RULES.glob("*.yaml")}}
    alertmanager = {config / "alertmanager.yml": yaml.safe_dump(alertmanager_config(spec), sort_keys=False)}
    files = {**prometheus, **alertmanager,
             config / "metrics-apiservice.yaml": yaml.safe_dump(metrics_apiservice(spec), sort_keys=False)}
    changed = {path for path, text in files.items() if not path.exists() or path.read_text() != text}
    for path in changed:
        path.write_text(files[path])
    reloads = {f"{prometheus_url(spec)}/-/reload": changed & prometheus.keys(),
               f"{alertmanager_url(spec)}/-/reload": changed & alertmanager.keys()}
    for url, paths in reloads.items():
        if paths:
            try:
                requests.post(url, timeout=RELOAD_TIMEOUT)
            except requests.ConnectionError:
                pass  # not running: it reads the new files when it starts


@functools.cache
def alertmanager_ui_path() -> Path | None:
    """Alertmanager's web UI as `opslab lab build` unpacked it; None before (Debian's placeholder)."""
    try:
        folder = build.cache_root() / "alertmanager-ui" / build.alertmanager_version(ALERTMANAGER)
    except (BuildError, OSError):
        return None
    return folder if (folder / "index.html").exists() else None


# --- the components ---------------------------------------------------------------------------
def monitoring_components(spec: LabSpec, binaries: Path) -> list[Component]:
    """In start order: what Prometheus scrapes and alerts to comes up before it."""
    pki, ports, config, home = spec.paths.pki, spec.ports, spec.paths.config, spec.paths.home
    host = spec.network.host_ip
    module = lambda name, *args: Command(name, [sys.executable, "-m", f"opslab.lab.{name.replace('-', '_')}", *args])
    loopback = lambda port: ("127.0.0.1", port)
    rbac = (MANIFESTS / "monitoring.yaml",)
    access = (MANIFESTS / "monitoring-access.yaml",)
    rule_sync = [
        "--kubeconfig", str(spec.paths.kubeconfig), "--rules-dir", str(spec.paths.prometheus_rules),
        "--promtool", str(binaries / "promtool"), "--prometheus-url", prometheus_url(spec),
    ]

    kube_state_metrics = [
        str(binaries / "kube-state-metrics"), f"--kubeconfig={config / 'kube-state-metrics.kubeconfig'}",
        "--host=127.0.0.1", f"--port={ports.kube_state_metrics}",
        "--telemetry-host=127.0.0.1", f"--telemetry-port={ports.kube_state_metrics_telemetry}",
        "--resources=cronjobs,daemonsets,deployments,endpointslices,horizontalpodautoscalers,ingresses,jobs,"
        "namespaces,networkpolicies,nodes,persistentvolumeclaims,persistentvolumes,poddisruptionbudgets,pods,"
        "replicasets,resourcequotas,services,statefulsets",
    ]
    metrics_server = [
        str(binaries / "metrics-server"),
        f"--bind-address={host}", f"--secure-port={ports.metrics_server}",
        f"--tls-cert-file={pki / 'metrics-server.crt'}", f"--tls-private-key-file={pki / 'metrics-server.key'}",
        *(f"--{flag}={config / 'metrics-server.kubeconfig'}"
          for flag in ("kubeconfig", "authentication-kubeconfig", "authorization-kubeconfig")),
        # kwok answers for every node at the node's address, with a certificate from the lab's CA.
        "--kubelet-preferred-address-types=InternalIP", "--kubelet-use-node-status-port",
        f"--kubelet-certificate-authority={pki / 'ca.crt'}",
        "--metric-resolution=15s",
    ]
    # Each on loopback, and on the lab link's host address for the Ingress gateway (see above).
    ui_path = alertmanager_ui_path()
    alertmanager = [
        ALERTMANAGER, f"--config.file={config / 'alertmanager.yml'}", f"--storage.path={spec.paths.alertmanager_data}",
        f"--web.listen-address=127.0.0.1:{ports.alertmanager}", f"--web.listen-address={host}:{ports.alertmanager}",
        f"--web.external-url={external_url(spec, ALERTMANAGER_PATH)}",
        *([f"--web.ui-path={ui_path}/"] if ui_path else []),
        "--cluster.listen-address=",  # one instance: no gossip port, which would listen on a wildcard
    ]
    prometheus = [
        str(binaries / "prometheus"), f"--config.file={config / 'prometheus.yml'}",
        f"--storage.tsdb.path={spec.paths.prometheus_data}", f"--storage.tsdb.retention.time={RETENTION}",
        f"--web.listen-address=127.0.0.1:{ports.prometheus}", f"--web.listen-address={host}:{ports.prometheus}",
        f"--web.external-url={external_url(spec, PROMETHEUS_PATH)}",
        # `up` reloads changed rules and configuration with POST /-/reload; so does the rule
        # controller when a PrometheusRule changes.
        "--web.enable-lifecycle",
        # A stop writes the in-memory chunks out, so that the next start need not replay the whole
        # write-ahead log (11 s after a test run's churn, against under 2 s).
        "--enable-feature=memory-snapshot-on-shutdown",
    ]
    return [
        Component("resource-usage", module("resource-usage", "--home", str(home)), None, None,
                  prerequisites=rbac),
        Component("kube-state-metrics", Command("kube-state-metrics", kube_state_metrics),
                  loopback(ports.kube_state_metrics), f"http://127.0.0.1:{ports.kube_state_metrics}/livez",
                  prerequisites=rbac),
        Component("metrics-server", Command("metrics-server", metrics_server), (host, ports.metrics_server),
                  f"https://{host}:{ports.metrics_server}/livez",
                  prerequisites=(*rbac, config / "metrics-apiservice.yaml")),
        Component("backup-exporter", module("backup-exporter", "--root", str(spec.paths.backups),
                                            "--listen", f"127.0.0.1:{ports.backup_metrics}"),
                  loopback(ports.backup_metrics), f"http://127.0.0.1:{ports.backup_metrics}/metrics"),
        Component("alert-receiver", module("alert-receiver", "--listen", f"127.0.0.1:{ports.alert_receiver}",
                                           "--store", str(spec.paths.notifications)),
                  loopback(ports.alert_receiver), f"http://127.0.0.1:{ports.alert_receiver}/healthz"),
        Component("alertmanager", Command("alertmanager", alertmanager), loopback(ports.alertmanager),
                  f"{alertmanager_url(spec)}/-/ready", prerequisites=access),
        Component("prometheus", Command("prometheus", prometheus), loopback(ports.prometheus),
                  f"{prometheus_url(spec)}/-/ready", prerequisites=access),
        Component("rule-sync", module("rule-sync", *rule_sync), None, None,
                  prerequisites=(MANIFESTS / "prometheusrule-crd.yaml",)),
    ]
