"""Pods on the lab's nodes are real processes: their own network namespace and address, a
status that follows the process, and the guide's kubectl commands working against them."""

from __future__ import annotations

import json
import socket
import subprocess

import kubernetes
import pytest
import requests

from opslab import cluster
from opslab.lab import network, podnet
from opslab.lab.podlet import pod_processes, process_name
from tests.waiting import wait_for

MODEL_SERVER = "registry.local/mlops/model-server:2.1.0"


def deployment(name: str, image: str, replicas: int = 2, port: int = 8080) -> dict:
    labels = {"app": name}
    container = {
        "name": name, "image": image, "ports": [{"name": "http", "containerPort": port}],
        "env": [{"name": "LISTEN_ADDRESS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 1},
    }
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}}}}


def service(name: str, port: int = 8080) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": port, "targetPort": port}]}}


def pods(api, namespace: str, app: str) -> list:
    return kubernetes.client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"app={app}").items


def ready(pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


@pytest.fixture
def model_server(api, namespace, lab):
    apps = kubernetes.client.AppsV1Api(api)
    apps.create_namespaced_deployment(namespace, deployment("model-server", MODEL_SERVER))
    kubernetes.client.CoreV1Api(api).create_namespaced_service(namespace, service("model-server"))
    wait_for(lambda: len([p for p in pods(api, namespace, "model-server") if ready(p)]) == 2,
             timeout=90, what="2 ready model-server pods")
    return pods(api, namespace, "model-server")


def test_each_pod_is_a_process_in_its_own_namespace_with_its_address(lab, model_server):
    processes = pod_processes(lab.spec)
    for pod in model_server:
        netns = podnet.netns_name(pod.metadata.uid)
        addresses = network.ip("-4", "-br", "addr", "show", "eth0", netns=netns)
        assert f"{pod.status.pod_ip}/16" in addresses
        assert processes.pid(process_name(pod.to_dict(), "model-server")) is not None
        assert network.ip("route", "show", "default", netns=netns).strip() == ""


def test_exec_logs_dns_and_service_through_kubectl(model_server, namespace):
    pod = model_server[0].metadata.name
    ns = ("-n", namespace)
    # kube-proxy programs a Service's endpoints within a second or two of the pods turning Ready.
    health = wait_for(lambda: cluster.kubectl("exec", pod, *ns, "--", "curl", "-sf", "--max-time", "5",
                                              "http://model-server:8080/health", check=False).stdout,
                      timeout=15, what="the Service to answer from inside a pod")
    assert json.loads(health)["status"] == "ok"
    lookup = cluster.kubectl("exec", pod, *ns, "--", "nslookup", "model-server").stdout
    service_ip = cluster.kubectl("get", "svc", "model-server", *ns, "-o", "jsonpath={.spec.clusterIP}").stdout
    assert service_ip in lookup and f"model-server.{namespace}.svc.cluster.local" in lookup
    logs = cluster.kubectl("logs", "-l", "app=model-server", "--tail=100", *ns).stdout
    assert any(json.loads(line).get("msg") for line in logs.splitlines() if line.startswith("{"))
    endpoints = cluster.kubectl("get", "endpoints", "model-server", *ns, "-o", "json").stdout
    addresses = {a["ip"] for s in json.loads(endpoints)["subsets"] for a in s["addresses"]}
    assert addresses == {p.status.pod_ip for p in model_server}


def test_port_forward_to_a_service(model_server, namespace):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    forward = subprocess.Popen(
        [cluster.kubectl_path(), "port-forward", "svc/model-server", f"{port}:8080", "-n", namespace,
         "--address", "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: "Forwarding from" in (forward.stdout.readline() or ""), timeout=20, what="port-forward")
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["status"] == "ok"
    finally:
        forward.terminate()
        forward.wait(timeout=10)


def test_no_process_outlives_its_pod(lab, api, model_server, namespace):
    processes = pod_processes(lab.spec)
    names = [n for n in processes.names() if n.startswith(namespace + "_")]
    assert len(names) == 2
    cluster.kubectl("scale", "deployment/model-server", "--replicas=0", "-n", namespace)
    wait_for(lambda: all(processes.pid(n) is None for n in names), timeout=30, what="processes gone")
    wait_for(lambda: not pods(api, namespace, "model-server"), timeout=30, what="pods gone")
    for pod in model_server:
        assert podnet.netns_name(pod.metadata.uid) not in network.namespaces()


def test_a_release_that_fails_to_start_ends_in_crash_loop_back_off(api, namespace):
    kubernetes.client.AppsV1Api(api).create_namespaced_deployment(
        namespace, deployment("broken", "registry.local/mlops/model-server:2.3.0", replicas=1))

    def crash_looping():
        for pod in pods(api, namespace, "broken"):
            status = (pod.status.container_statuses or [None])[0]
            if status and status.restart_count >= 1 and status.state.waiting \
                    and status.state.waiting.reason == "CrashLoopBackOff":
                return pod
    pod = wait_for(crash_looping, timeout=60, what="CrashLoopBackOff")
    assert pod.status.container_statuses[0].last_state.terminated.exit_code != 0
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                             f"involvedObject.name={pod.metadata.name}", "-o", "json").stdout
    assert "BackOff" in {e["reason"] for e in json.loads(events)["items"]}
    logs = cluster.kubectl("logs", pod.metadata.name, "-n", namespace).stdout
    assert "startup failed" in logs


def test_a_missing_secret_holds_the_container_with_a_clear_reason(api, namespace):
    spec = deployment("needs-secret", MODEL_SERVER, replicas=1)
    spec["spec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "password"}}})
    kubernetes.client.AppsV1Api(api).create_namespaced_deployment(namespace, spec)

    def waiting_reason():
        for pod in pods(api, namespace, "needs-secret"):
            status = (pod.status.container_statuses or [None])[0]
            if status and status.state.waiting and status.state.waiting.reason == "CreateContainerConfigError":
                return status.state.waiting.message
    assert 'secret "absent" not found' in wait_for(waiting_reason, timeout=30, what="CreateContainerConfigError")


def test_addresses_are_handed_out_round_the_range_not_reused_at_once():
    assert podnet.allocate("10.244.1.0/24", set()) == "10.244.1.2"
    assert podnet.allocate("10.244.1.0/24", {"10.244.1.3"}, after="10.244.1.2") == "10.244.1.4"
    assert podnet.allocate("10.244.1.0/24", {"10.244.1.2"}, after="10.244.1.254") == "10.244.1.3"
