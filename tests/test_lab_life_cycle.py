"""The lab's life cycle: a killed component is reported and brought back with the cluster's
state intact; `reset` restores the baseline; bad states give clear errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import kubernetes
import pytest

from opslab import cluster, config
from opslab.lab.lab import Lab, LabError
from opslab.lab.spec import NODE_NAMES, LabSpec, Paths, Ports
from tests.waiting import wait_for

OPSLAB = [sys.executable, "-m", "opslab.cli"]


def opslab(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*OPSLAB, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


COMPONENTS = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"]


@pytest.mark.parametrize("name", COMPONENTS)
def test_killed_component_is_reported_and_up_restores_it_with_state(lab, api, name):
    marker = f"survives-{name}-{uuid.uuid4().hex[:6]}"
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespaced_config_map("default", {"metadata": {"name": marker}, "data": {"k": "v"}})
    try:
        os.kill(lab.supervisor.pid(name), signal.SIGKILL)
        wait_for(lambda: lab.supervisor.exited_early(name), timeout=10, what=f"{name} to die")

        status = opslab("lab", "status")
        assert status.returncode != 0
        line = next(row for row in status.stdout.splitlines() if row.startswith(name + " "))
        assert "DOWN" in line, status.stdout

        up = opslab("lab", "up")
        assert up.returncode == 0, up.stderr
        assert f"starting {name}" in up.stdout
        assert opslab("lab", "status").returncode == 0
        assert core.read_namespaced_config_map(marker, "default").data == {"k": "v"}
    finally:
        core.delete_namespaced_config_map(marker, "default")


def test_a_restarted_kwok_takes_the_nodes_over_at_once_and_kube_proxy_keeps_running(lab, api):
    """kwok's new process must not wait for the old one's leases to expire: the nodes would turn
    NotReady, and re-initialising them once changed their addresses, which makes kube-proxy exit."""
    coordination = kubernetes.client.CoordinationV1Api(api)
    core = kubernetes.client.CoreV1Api(api)
    holders = lambda: {coordination.read_namespaced_lease(name, "kube-node-lease").spec.holder_identity
                       for name in NODE_NAMES}
    old_holders, kube_proxy = holders(), lab.supervisor.pid("kube-proxy")
    os.kill(lab.supervisor.pid("kwok"), signal.SIGKILL)
    wait_for(lambda: lab.supervisor.exited_early("kwok"), timeout=10, what="kwok to die")
    assert opslab("lab", "up").returncode == 0

    # Well inside the leases' 40 s: the old holder's leases were not waited out.
    wait_for(lambda: len(holders()) == 1 and not holders() & old_holders, timeout=15,
             what="the new kwok to hold every node's lease")
    for name in NODE_NAMES:
        node = core.read_node(name)
        assert {"type": "InternalIP", "address": lab.spec.network.host_ip} in [
            {"type": a.type, "address": a.address} for a in node.status.addresses], name
        assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions), name
    assert lab.supervisor.pid("kube-proxy") == kube_proxy


def test_status_and_env_describe_the_running_lab(lab):
    status = opslab("lab", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    for name in COMPONENTS:
        assert any(row.startswith(name + " ") and row.rstrip().endswith("ok") for row in status.stdout.splitlines())
    env = opslab("lab", "env").stdout
    assert config.parse_exports(env)["KUBECONFIG"] == str(lab.spec.paths.kubeconfig)
    assert env.startswith(config.state_file().read_text())
    assert env.splitlines()[-1] == f'export PATH={lab.spec.paths.tools}:"$PATH"'  # promtool, etcdctl first


def test_up_twice_does_no_harm(lab):
    pids = lab.pids()
    up = opslab("lab", "up")
    assert up.returncode == 0, up.stderr
    assert "starting" not in up.stdout
    assert lab.pids() == pids


def test_reset_restores_the_baseline_after_arbitrary_changes(lab, api):
    core = kubernetes.client.CoreV1Api(api)
    rbac = kubernetes.client.RbacAuthorizationV1Api(api)
    cluster.kubectl("create", "namespace", "scratch")
    cluster.kubectl("create", "deployment", "web", "--image=registry.local/web:1", "--replicas=2", "-n", "scratch")
    cluster.kubectl("cordon", "lab-node-2")
    cluster.kubectl("label", "node", "lab-node-2", "tier=changed")
    cluster.kubectl("delete", "node", "lab-node-3")
    cluster.kubectl("create", "clusterrole", "extra", "--verb=get", "--resource=pods")
    cluster.kubectl("create", "configmap", "leftover", "--from-literal=a=b", "-n", "default")

    result = opslab("lab", "reset")
    assert result.returncode == 0, result.stderr

    assert "scratch" not in {n.metadata.name for n in core.list_namespace().items}
    node2 = core.read_node("lab-node-2")
    assert not node2.spec.unschedulable and "tier" not in node2.metadata.labels
    wait_for(lambda: any(c.type == "Ready" and c.status == "True"
                         for c in (core.read_node("lab-node-3").status.conditions or [])),
             what="lab-node-3 back and Ready")
    assert "extra" not in {r.metadata.name for r in rbac.list_cluster_role().items}
    assert "leftover" not in {c.metadata.name for c in core.list_namespaced_config_map("default").items}
    # The scratch namespace can be made again at once: reset waited for it to go.
    cluster.kubectl("create", "namespace", "scratch")
    cluster.kubectl("delete", "namespace", "scratch", "--wait=false")


def test_up_refuses_a_taken_port_with_a_clear_message(lab, tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        spec = LabSpec(paths=Paths(tmp_path / "home"), ports=Ports(etcd_client=port))
        with pytest.raises(LabError, match=rf"port 127.0.0.1:{port} is taken by .*pid={os.getpid()}"):
            Lab(spec, out=open(os.devnull, "w")).up()


def test_missing_binaries_are_named(tmp_path):
    result = opslab("lab", "up", env={"OPSLAB_CACHE": str(tmp_path)})
    assert result.returncode == 1
    assert "lab binaries missing (etcd" in result.stderr and "opslab lab build" in result.stderr


def test_corrupt_state_file_gives_a_clear_error_and_up_repairs_it(lab, monkeypatch):
    path = config.state_file()
    path.write_text("export KUBECONFIG='unterminated\n\x00garbage")
    monkeypatch.delenv("KUBECONFIG")
    with pytest.raises(config.ConfigError, match=r"lab.env line 1 is not `export NAME=value`.*opslab lab up"):
        cluster.kubeconfig()
    up = opslab("lab", "up")
    assert up.returncode == 0, up.stderr
    assert "replacing the lab's unreadable state file" in up.stdout
    assert cluster.kubeconfig() == str(lab.spec.paths.kubeconfig)


def test_a_cluster_that_is_not_there_fails_fast(tmp_path, monkeypatch):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "x"}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    started = time.monotonic()
    with pytest.raises(cluster.ClusterError, match="cannot reach the Kubernetes API server"):
        cluster.dynamic()
    with pytest.raises(cluster.ClusterError, match="failed"):
        cluster.kubectl("get", "nodes", timeout=5)
    assert time.monotonic() - started < 20
