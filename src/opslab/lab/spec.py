"""Every address, port and path the lab uses, in one place.

The ranges live only inside network namespaces the lab creates (README: "The network boundary"):
the host reaches them through one veth pair into the lab's node namespace.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from opslab.config import lab_home

NODE_NAMES = ("lab-node-1", "lab-node-2", "lab-node-3")


@dataclass(frozen=True)
class Network:
    link: ipaddress.IPv4Network = ipaddress.ip_network("10.243.255.0/30")
    cluster_cidr: ipaddress.IPv4Network = ipaddress.ip_network("10.244.0.0/16")
    service_cidr: ipaddress.IPv4Network = ipaddress.ip_network("10.96.0.0/16")
    node_namespace: str = "opslab-node"
    host_link: str = "opslab0"      # host end of the veth pair
    node_link: str = "uplink"       # its peer, inside the node namespace
    bridge: str = "cbr0"            # pods' veths attach here (part 2)

    @property
    def host_ip(self) -> str:
        """The host's end of the lab link: the API server's bind and advertise address."""
        return str(self.link[1])

    @property
    def node_ip(self) -> str:
        return str(self.link[2])

    @property
    def ranges(self) -> tuple[ipaddress.IPv4Network, ...]:
        return (self.link, self.cluster_cidr, self.service_cidr)

    @property
    def kubernetes_service_ip(self) -> str:
        return str(self.service_cidr[1])


@dataclass(frozen=True)
class Ports:
    etcd_client: int = 2379
    etcd_peer: int = 2380
    apiserver: int = 6443
    controller_manager: int = 10257
    scheduler: int = 10259
    kwok: int = 10250
    ingress: int = 8443
    # Observability: all on loopback except metrics-server, which the API server must reach.
    prometheus: int = 9090
    alertmanager: int = 9093
    alert_receiver: int = 9095
    backup_metrics: int = 9106
    kube_state_metrics: int = 9180
    kube_state_metrics_telemetry: int = 9181
    certificate_metrics: int = 9402  # cert-manager's own metrics port
    metrics_server: int = 4443


@dataclass(frozen=True)
class Paths:
    home: Path

    @property
    def pki(self) -> Path:
        return self.home / "pki"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def run(self) -> Path:
        return self.home / "run"

    @property
    def etcd_data(self) -> Path:
        return self.home / "etcd"

    @property
    def config(self) -> Path:
        return self.home / "config"

    @property
    def tools(self) -> Path:
        """The lab's command-line tools (promtool, etcdctl), linked here for the PATH `lab env` exports."""
        return self.home / "tools"

    @property
    def kubeconfig(self) -> Path:
        return self.home / "kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.logs / "audit.log"

    @property
    def baseline(self) -> Path:
        return self.home / "baseline.json"

    @property
    def prometheus_data(self) -> Path:
        return self.home / "prometheus"

    @property
    def prometheus_rules(self) -> Path:
        """Trainees' PrometheusRules as rule files, one per object (rule_sync.py keeps it)."""
        return self.config / "prometheus-rules"

    @property
    def alertmanager_data(self) -> Path:
        return self.home / "alertmanager"

    @property
    def notifications(self) -> Path:
        """Every notification Alertmanager sent to the lab's receiver, one JSON document a line."""
        return self.home / "alerts" / "notifications.jsonl"

    @property
    def backups(self) -> Path:
        """The lab's backup bucket: `mlops-backup-bucket/<prefix>/<object>` as files."""
        return self.home / "backups"


@dataclass(frozen=True)
class LabSpec:
    paths: Paths
    network: Network = Network()
    ports: Ports = Ports()

    @classmethod
    def default(cls) -> LabSpec:
        return cls(paths=Paths(lab_home()))

    @property
    def apiserver_url(self) -> str:
        return f"https://{self.network.host_ip}:{self.ports.apiserver}"

    @property
    def etcd_url(self) -> str:
        return f"https://127.0.0.1:{self.ports.etcd_client}"
