"""The lab's components: how each is started and how its health is read.

Every listener is on loopback, on the host end of the lab link, or inside the lab's node
namespace (README: "The network boundary").
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

from opslab.lab.build import KWOK_CRDS_FILE, KWOK_HEARTBEAT_FILE, KWOK_METRICS_FILE
from opslab.lab.network import bridge_ip
from opslab.lab.processes import Command
from opslab.lab.spec import NODE_NAMES, LabSpec

HEALTH_TIMEOUT = 2.0
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
MANIFESTS = Path(__file__).parent / "manifests"
# Commands that `kubectl exec` may run in a pod: kwok runs them through the pod shim.
POD_COMMANDS = ("sh", "bash", "env", "cat", "ls", "ps", "hostname", "curl", "nslookup", "dig",
                "psql", "pg_dump", "pg_isready", "python3", "ip", "ss", "sleep", "date", "id", "kill")


@dataclass(frozen=True)
class Component:
    name: str
    command: Command
    listen: tuple[str, int] | None  # checked free before it starts
    health_url: str | None  # None: running is healthy
    client_cert: str | None = None  # name of the lab identity that reads the health URL
    prerequisites: tuple[Path, ...] = ()  # manifests applied before it starts
    needs_nodes: bool = False  # starts only once the nodes are Ready with their addresses
    # `up` waits for it to be healthy before it starts the next; the others start together.
    needed_by_the_rest: bool = False

    def healthy(self, spec: LabSpec) -> tuple[bool, str]:
        if self.health_url is None:
            return True, "ok"
        pki = spec.paths.pki
        cert = (str(pki / f"{self.client_cert}.crt"), str(pki / f"{self.client_cert}.key")) if self.client_cert else None
        try:
            response = requests.get(self.health_url, cert=cert, verify=str(pki / "ca.crt"), timeout=HEALTH_TIMEOUT)
        except requests.RequestException as error:
            return False, f"no answer at {self.health_url} ({type(error).__name__})"
        if response.status_code != 200:
            return False, f"{self.health_url} answered {response.status_code}: {response.text[:200]}"
        return True, "ok"


def _flags(**values) -> list[str]:
    return [f"--{key.replace('_', '-')}={value}" for key, value in values.items()]


def write_configs(spec: LabSpec, binaries: Path) -> None:
    """Audit policy, encryption config and kwok's configuration, rewritten at every `up`."""
    config = spec.paths.config
    config.mkdir(parents=True, exist_ok=True)
    (config / "audit-policy.yaml").write_text(yaml.safe_dump(AUDIT_POLICY, sort_keys=False))
    kwok = {"apiVersion": "config.kwok.x-k8s.io/v1alpha1", "kind": "KwokConfiguration",
            # Written out in full: options absent from a config file are not defaulted.
            "options": {"nodeLeaseDurationSeconds": 40, "nodeLeaseParallelism": 4,
                        "podPlayStageParallelism": 4, "nodePlayStageParallelism": 4,
                        "podsOnNodeSyncParallelism": 1, "enableDebuggingHandlers": True}}
    # kwok also plays each node's kubelet resource metrics (its Metric) from what the pods' processes
    # really use (ResourceUsage objects, resource_usage.py). A pod with no such record (simulated, or
    # not measured yet) gets kwok's own default, 1m and 1Mi: metrics-server drops a pod that reports
    # no CPU at all, and `kubectl top pods` then fails for its whole namespace.
    # kwok counts a node's pods only with a pod stage loaded: this one matches no pod, so kwok
    # follows the pods and never changes one (the podlet plays them).
    no_usage = {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "ClusterResourceUsage",
                "metadata": {"name": "no-usage-recorded"},
                "spec": {"usages": [{"usage": {"cpu": {"value": "1m"}, "memory": {"value": "1Mi"}}}]}}
    follow_pods = {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": "pod-follow-only"},
                   "spec": {"resourceRef": {"apiGroup": "v1", "kind": "Pod"},
                            "selector": {"matchExpressions": [{"key": ".metadata.name", "operator": "DoesNotExist"}]},
                            "next": {}}}
    (config / "kwok.yaml").write_text("---\n".join([
        yaml.safe_dump(kwok), (MANIFESTS / "kwok-node-initialize.yaml").read_text(),
        (binaries / KWOK_HEARTBEAT_FILE).read_text(), (binaries / KWOK_METRICS_FILE).read_text(),
        yaml.safe_dump(no_usage), yaml.safe_dump(follow_pods)]))
    (config / "Corefile").write_text(_corefile(spec))
    _write_pod_shims(spec)


def _corefile(spec: LabSpec) -> str:
    # Authoritative for the cluster's names and nothing else: no forwarder, so no query leaves.
    address = bridge_ip(spec.network).ip
    return f"""\
.:53 {{
    bind {address}
    errors
    health {address}:8080
    ready {address}:8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {spec.paths.config / "coredns.kubeconfig"} opslab
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    prometheus {address}:9153
    cache 30
}}
"""


POD_SHIM = """\
#!/bin/sh
# kwok runs `kubectl exec` commands on this machine; this shim runs them inside the pod instead:
# its network namespace and DNS (ip netns exec), and the container's environment.
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
name=${0##*/}
[ -n "$OPSLAB_POD_NETNS" ] || { echo "$name: not a lab pod" >&2; exit 126; }
[ -r "$OPSLAB_POD_ENV" ] && . "$OPSLAB_POD_ENV"
if [ -p /dev/stdin ]; then  # `kubectl exec -i` without a terminal: see opslab/lab/exec_stdin.py
  exec ip netns exec "$OPSLAB_POD_NETNS" @PYTHON@ -m opslab.lab.exec_stdin "$name" "$@"
fi
exec ip netns exec "$OPSLAB_POD_NETNS" "$name" "$@"
"""


def shim_dir(spec: LabSpec) -> Path:
    return spec.paths.home / "pod-shims"


def _write_pod_shims(spec: LabSpec) -> None:
    folder = shim_dir(spec)
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / ".pod-exec"
    shim.write_text(POD_SHIM.replace("@PYTHON@", sys.executable))
    shim.chmod(0o755)
    for name in POD_COMMANDS:
        link = folder / name
        if not link.is_symlink():
            link.symlink_to(shim.name)


# Secrets are audited without their bodies; writes everywhere with their request; reads of
# anything else not at all, to keep the log small enough to read in a notebook.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "None", "users": ["system:kube-scheduler", "system:kube-controller-manager",
                                    "system:kwok-controller", "system:apiserver", "opslab:resource-usage"]},
        {"level": "None", "userGroups": ["system:serviceaccounts:kube-system", "system:nodes"]},
        {"level": "None", "nonResourceURLs": ["/healthz*", "/readyz*", "/livez*", "/version", "/metrics"]},
        {"level": "None", "resources": [{"group": "", "resources": ["events"]},
                                        {"group": "coordination.k8s.io", "resources": ["leases"]}]},
        {"level": "Metadata", "resources": [{"group": "", "resources": ["secrets"]}]},
        {"level": "None", "verbs": ["get", "list", "watch"]},
        {"level": "Request"},
    ],
}


def components(spec: LabSpec, binaries: Path) -> list[Component]:
    """The control plane in start order."""
    pki, net, ports, config = spec.paths.pki, spec.network, spec.ports, spec.paths.config
    host = net.host_ip
    etcd_url = spec.etcd_url
    peer_url = f"https://127.0.0.1:{ports.etcd_peer}"
    tls = lambda name: _flags(tls_cert_file=pki / f"{name}.crt", tls_private_key_file=pki / f"{name}.key")
    delegated = lambda name: _flags(
        kubeconfig=config / f"{name}.kubeconfig", authentication_kubeconfig=config / f"{name}.kubeconfig",
        authorization_kubeconfig=config / f"{name}.kubeconfig", client_ca_file=pki / "ca.crt",
        requestheader_client_ca_file=pki / "front-proxy-ca.crt", leader_elect="false",
        bind_address="127.0.0.1")

    etcd = [
        str(binaries / "etcd"),
        *_flags(name="opslab", data_dir=spec.paths.etcd_data, log_level="warn",
                listen_client_urls=etcd_url, advertise_client_urls=etcd_url,
                listen_peer_urls=peer_url, initial_advertise_peer_urls=peer_url,
                initial_cluster=f"opslab={peer_url}",
                listen_metrics_urls="http://127.0.0.1:2381",
                cert_file=pki / "etcd-server.crt", key_file=pki / "etcd-server.key",
                trusted_ca_file=pki / "ca.crt", client_cert_auth="true",
                peer_cert_file=pki / "etcd-server.crt", peer_key_file=pki / "etcd-server.key",
                peer_trusted_ca_file=pki / "ca.crt", peer_client_cert_auth="true"),
    ]
    apiserver = [
        str(binaries / "kube-apiserver"),
        *_flags(bind_address=host, advertise_address=host, secure_port=ports.apiserver,
                etcd_servers=etcd_url, etcd_cafile=pki / "ca.crt",
                etcd_certfile=pki / "apiserver-etcd-client.crt", etcd_keyfile=pki / "apiserver-etcd-client.key",
                client_ca_file=pki / "ca.crt",
                service_cluster_ip_range=net.service_cidr,
                service_account_issuer="https://kubernetes.default.svc.cluster.local",
                service_account_key_file=pki / "sa.pub", service_account_signing_key_file=pki / "sa.key",
                authorization_mode="Node,RBAC", enable_admission_plugins="NodeRestriction",
                allow_privileged="true", profiling="false",
                audit_policy_file=config / "audit-policy.yaml", audit_log_path=spec.paths.audit_log,
                audit_log_maxsize=50, audit_log_maxbackup=2,
                encryption_provider_config=pki / "encryption.yaml",
                kubelet_client_certificate=pki / "apiserver-kubelet-client.crt",
                kubelet_client_key=pki / "apiserver-kubelet-client.key",
                kubelet_certificate_authority=pki / "ca.crt",
                kubelet_preferred_address_types="InternalIP",
                requestheader_client_ca_file=pki / "front-proxy-ca.crt",
                requestheader_allowed_names="front-proxy-client",
                requestheader_username_headers="X-Remote-User", requestheader_group_headers="X-Remote-Group",
                requestheader_extra_headers_prefix="X-Remote-Extra-",
                proxy_client_cert_file=pki / "front-proxy-client.crt",
                proxy_client_key_file=pki / "front-proxy-client.key",
                enable_aggregator_routing="true"),
        *tls("apiserver"),
    ]
    controller_manager = [
        str(binaries / "kube-controller-manager"),
        *delegated("controller-manager"), *tls("controller-manager"),
        *_flags(secure_port=ports.controller_manager,
                service_account_private_key_file=pki / "sa.key", root_ca_file=pki / "ca.crt",
                cluster_signing_cert_file=pki / "ca.crt", cluster_signing_key_file=pki / "ca.key",
                use_service_account_credentials="true",
                allocate_node_cidrs="true", cluster_cidr=net.cluster_cidr, node_cidr_mask_size=24,
                service_cluster_ip_range=net.service_cidr,
                # Quick enough for a lesson to watch a node go NotReady and pods move.
                node_monitor_grace_period="40s"),
    ]
    scheduler = [
        str(binaries / "kube-scheduler"),
        *delegated("scheduler"), *tls("scheduler"), *_flags(secure_port=ports.scheduler),
    ]
    kwok = [
        str(binaries / "kwok"),
        *_flags(kubeconfig=config / "kwok.kubeconfig", config=config / "kwok.yaml",
                manage_all_nodes="false", manage_nodes_with_annotation_selector=f"{KWOK_NODE_ANNOTATION}=fake",
                # kwok hands out pod IPs from each node's podCIDR; this range is only its fallback.
                cidr=f"{net.cluster_cidr[254 * 256]}/24",
                node_ip=host, node_port=ports.kwok, server_address=f"{host}:{ports.kwok}",
                tls_cert_file=pki / "kwok.crt", tls_private_key_file=pki / "kwok.key",
                enable_crds="Exec,Logs,PortForward,ResourceUsage"),
    ]
    node = net.node_ip
    kube_proxy = [
        str(binaries / "kube-proxy"),
        *_flags(kubeconfig=config / "kube-proxy.kubeconfig", proxy_mode="iptables",
                cluster_cidr=net.cluster_cidr, hostname_override="lab-node-1", bind_address=node,
                healthz_bind_address=f"{node}:10256", metrics_bind_address=f"{node}:10249",
                nodeport_addresses=f"{node}/32", iptables_localhost_nodeports="false",
                # The node namespace shares the machine's conntrack table: leave its limits alone.
                conntrack_max_per_core=0, conntrack_tcp_timeout_established=0, conntrack_tcp_timeout_close_wait=0),
    ]
    dns = bridge_ip(net).ip
    coredns = [str(binaries / "coredns"), "-conf", str(config / "Corefile")]
    module = lambda name: [sys.executable, "-m", name]
    admin = ["--kubeconfig", str(spec.paths.kubeconfig)]
    podlet = [*module("opslab.lab.podlet"), "--home", str(spec.paths.home)]
    return [
        Component("etcd", Command("etcd", etcd), ("127.0.0.1", ports.etcd_client),
                  f"{etcd_url}/health", client_cert="apiserver-etcd-client", needed_by_the_rest=True),
        Component("kube-apiserver", Command("kube-apiserver", apiserver), (host, ports.apiserver),
                  f"{spec.apiserver_url}/readyz", client_cert="admin", needed_by_the_rest=True),
        Component("kube-controller-manager", Command("kube-controller-manager", controller_manager),
                  ("127.0.0.1", ports.controller_manager), f"https://127.0.0.1:{ports.controller_manager}/healthz"),
        Component("kube-scheduler", Command("kube-scheduler", scheduler),
                  ("127.0.0.1", ports.scheduler), f"https://127.0.0.1:{ports.scheduler}/healthz"),
        # Healthy once it also serves a node's resource metrics: a kwok started without them is restarted.
        Component("kwok", Command("kwok", kwok, env={"PATH": str(shim_dir(spec))}), (host, ports.kwok),
                  f"https://{host}:{ports.kwok}/metrics/nodes/{NODE_NAMES[0]}/metrics/resource",
                  prerequisites=(binaries / KWOK_CRDS_FILE,)),
        # kube-proxy exits when its node's addresses change, so it waits for them.
        Component("kube-proxy", Command("kube-proxy", kube_proxy, netns=net.node_namespace),
                  (node, 10256), f"http://{node}:10256/healthz", needs_nodes=True),
        Component("coredns", Command("coredns", coredns, netns=net.node_namespace), (str(dns), 53),
                  f"http://{dns}:8080/health", prerequisites=(MANIFESTS / "dns.yaml",)),
        Component("podlet", Command("podlet", podlet), ("127.0.0.1", 10248), "http://127.0.0.1:10248/healthz"),
        Component("certificates", Command("certificates", [*module("opslab.lab.certificates"), *admin, "--metrics-address",
                                                           f"127.0.0.1:{ports.certificate_metrics}"]),
                  ("127.0.0.1", ports.certificate_metrics), f"http://127.0.0.1:{ports.certificate_metrics}/metrics"),
        Component("ingress", Command("ingress", [*module("opslab.lab.ingress"), *admin,
                                                 "--listen", f"127.0.0.1:{ports.ingress}"]),
                  ("127.0.0.1", ports.ingress), None),
    ]
