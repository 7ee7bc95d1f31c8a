"""The lab's control plane behaves as a real cluster, through the Python client and kubectl."""

from __future__ import annotations

import json
import subprocess

import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from opslab import cluster
from opslab.lab import build
from opslab.lab.spec import NODE_NAMES
from tests.waiting import wait_for


def kubectl_json(*args: str) -> dict:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def deployment(name: str, image: str = "registry.local/api-server:1.0.0", replicas: int = 3) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": name, "image": image}]}}},
    }


def available(api, namespace: str, name: str, replicas: int):
    status = kubernetes.client.AppsV1Api(api).read_namespaced_deployment(name, namespace).status
    return status.available_replicas == replicas and status.updated_replicas == replicas or (
        replicas == 0 and not status.replicas)


def test_three_ready_nodes_through_the_python_client(api):
    nodes = kubernetes.client.CoreV1Api(api).list_node().items
    ready = {n.metadata.name for n in nodes
             if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)}
    assert ready == set(NODE_NAMES)


def test_three_ready_nodes_through_kubectl(lab):
    nodes = kubectl_json("get", "nodes")["items"]
    ready = [n["metadata"]["name"] for n in nodes
             if {"type": "Ready", "status": "True"}.items() <= next(
                 c for c in n["status"]["conditions"] if c["type"] == "Ready").items()]
    assert sorted(ready) == sorted(NODE_NAMES)
    assert all(n["spec"]["podCIDR"] for n in nodes), "every node has a pod range from the controller-manager"


def test_deployment_rollout_undo_and_scale(api, namespace):
    apps = kubernetes.client.AppsV1Api(api)
    apps.create_namespaced_deployment(namespace, deployment("api-server"))
    wait_for(lambda: available(api, namespace, "api-server", 3), what="3 available replicas")
    pods = kubernetes.client.CoreV1Api(api).list_namespaced_pod(namespace).items
    assert len({p.spec.node_name for p in pods}) > 1, "the scheduler spreads replicas over nodes"
    assert all(p.status.pod_ip and p.status.pod_ip.startswith("10.244.") for p in pods)

    ns = ("-n", namespace)
    cluster.kubectl("set", "image", "deployment/api-server", "api-server=registry.local/api-server:1.1.0", *ns)
    cluster.kubectl("rollout", "status", "deployment/api-server", "--timeout=60s", *ns, timeout=70)
    history = cluster.kubectl("rollout", "history", "deployment/api-server", *ns).stdout
    revisions = [line.split()[0] for line in history.splitlines() if line[:1].isdigit()]
    assert revisions == ["1", "2"], history

    cluster.kubectl("rollout", "undo", "deployment/api-server", *ns)
    cluster.kubectl("rollout", "status", "deployment/api-server", "--timeout=60s", *ns, timeout=70)
    image = apps.read_namespaced_deployment("api-server", namespace).spec.template.spec.containers[0].image
    assert image == "registry.local/api-server:1.0.0"

    cluster.kubectl("scale", "deployment/api-server", "--replicas=0", *ns)
    wait_for(lambda: not kubernetes.client.CoreV1Api(api).list_namespaced_pod(namespace).items,
             what="all pods gone after scaling to 0")
    cluster.kubectl("scale", "deployment/api-server", "--replicas=3", *ns)
    wait_for(lambda: available(api, namespace, "api-server", 3), what="3 replicas back")


@pytest.fixture
def reader(api, namespace):
    """A ServiceAccount that may read pods in `namespace` only, and a client holding its token."""
    rbac = kubernetes.client.RbacAuthorizationV1Api(api)
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}]})
    token = cluster.kubectl("create", "token", "reader", "-n", namespace).stdout.strip()
    configuration = kubernetes.client.Configuration()
    configuration.host = api.configuration.host
    configuration.ssl_ca_cert = api.configuration.ssl_ca_cert
    configuration.api_key = {"authorization": f"Bearer {token}"}
    return kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(configuration))


def test_namespaced_role_is_denied_outside_its_namespace(reader, namespace):
    who = f"--as=system:serviceaccount:{namespace}:reader"
    inside = cluster.kubectl("auth", "can-i", "list", "pods", "-n", namespace, who, check=False)
    outside = cluster.kubectl("auth", "can-i", "list", "pods", "-n", "kube-system", who, check=False)
    assert (inside.stdout.strip(), outside.stdout.strip()) == ("yes", "no")

    assert reader.list_namespaced_pod(namespace).items == []
    with pytest.raises(ApiException) as denied:
        reader.list_namespaced_pod("kube-system")
    assert denied.value.status == 403


def test_privileged_pod_is_rejected_under_restricted_pod_security(api, namespace):
    core = kubernetes.client.CoreV1Api(api)
    core.patch_namespace(namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    pod = {"metadata": {"name": "root-shell"}, "spec": {"containers": [
        {"name": "shell", "image": "debian:12", "securityContext": {"privileged": True}}]}}
    with pytest.raises(ApiException) as rejected:
        core.create_namespaced_pod(namespace, pod)
    assert rejected.value.status == 403
    assert 'violates PodSecurity "restricted:latest"' in json.loads(rejected.value.body)["message"]
    result = cluster.kubectl("apply", "-f", "-", "-n", namespace,
                             input=json.dumps({"apiVersion": "v1", "kind": "Pod", **pod}), check=False)
    assert result.returncode != 0 and "privileged" in result.stderr


def test_secret_is_encrypted_at_rest_in_etcd(lab, api, namespace):
    value = "s3cret-value-that-must-not-appear"
    kubernetes.client.CoreV1Api(api).create_namespaced_secret(
        namespace, {"metadata": {"name": "db"}, "stringData": {"password": value}})
    assert cluster.kubectl("get", "secret", "db", "-n", namespace, "-o", "jsonpath={.data.password}").stdout

    pki = lab.spec.paths.pki
    stored = subprocess.run(
        [str(build.installed() / "etcdctl"), "get", f"/registry/secrets/{namespace}/db",
         f"--endpoints={lab.spec.etcd_url}", f"--cacert={pki / 'ca.crt'}",
         f"--cert={pki / 'apiserver-etcd-client.crt'}", f"--key={pki / 'apiserver-etcd-client.key'}",
         "--print-value-only"], capture_output=True, timeout=15, check=True).stdout
    assert stored.startswith(b"k8s:enc:aescbc:v1:lab-key-1:")
    assert value.encode() not in stored
