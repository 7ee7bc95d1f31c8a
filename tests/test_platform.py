"""The platform in the lab behaves like production: the training guide's commands work as
written against `mlops-production`, and a change has its real consequence.

Each test leaves the namespace as it found it (rolled back, password restored, data restored).
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
import requests
from cryptography import x509

from opslab import cluster
from opslab.config import setting
from tests.waiting import wait_for

NS = "mlops-production"
CERTIFICATES = Path(__file__).parents[1] / "infrastructure/production/security/certificates.yaml"
P = ("-n", NS)
GOOD, FAULTY = "registry.local/mlops/api-server:1.4.2", "registry.local/mlops/api-server:1.5.1"


def kubectl(*args: str, **kwargs) -> str:
    return cluster.kubectl(*args, **kwargs).stdout


def api_pods() -> list[dict]:
    return json.loads(kubectl("get", "pods", "-l", "app=api-server", *P, "-o", "json"))["items"]


def ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def psql(sql: str) -> str:
    return kubectl("exec", "postgres-0", *P, "--", "psql", "-U", "mlops", "mlops_prod", "-Atc", sql)


def rollout(*args: str) -> None:
    kubectl(*args, *P)
    kubectl("rollout", "status", "deployment/api-server", *P, "--timeout=120s", timeout=130)


def predict_counts(pod: dict) -> dict[str, float]:
    """`/predict` requests by status, read from the pod's own /metrics."""
    text = requests.get(f"http://{pod['status']['podIP']}:8000/metrics", timeout=5).text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith('http_requests_total{') and 'path="/predict"' in line:
            status = line.split('status="')[1].split('"')[0]
            counts[status] = counts.get(status, 0) + float(line.rsplit(" ", 1)[1])
    return counts


def server_error_ratio() -> float:
    totals: dict[str, float] = {}
    for pod in api_pods():
        if ready(pod) and not pod["metadata"].get("deletionTimestamp"):
            for status, count in predict_counts(pod).items():
                totals[status] = totals.get(status, 0) + count
    requests_seen = sum(totals.values())
    errors = sum(v for k, v in totals.items() if k.startswith("5"))
    return errors / requests_seen if requests_seen >= 10 else float("nan")


def test_guide_log_and_network_commands(lab):
    pod = api_pods()[0]["metadata"]["name"]
    lines = kubectl("logs", pod, *P).splitlines()
    assert lines and all(json.loads(line)["service"] == "api-server" for line in lines[-5:])
    recent = kubectl("logs", "-l", "app=api-server", "-n", NS, "--tail=100").splitlines()
    assert 0 < len(recent) <= 300  # at most 100 from each of the three pods

    lookup = kubectl("exec", pod, *P, "--", "nslookup", "postgres")
    postgres_ip = kubectl("get", "svc", "postgres", *P, "-o", "jsonpath={.spec.clusterIP}")
    assert f"Address: {postgres_ip}" in lookup
    health = json.loads(kubectl("exec", pod, *P, "--", "curl", "-s", "--max-time", "5", "http://api-server:8000/health"))
    assert health["status"] == "ok" and health["database"] == "ok"


def test_port_forward_to_the_api_server_service(lab):
    with socket.socket() as probe:  # the guide forwards 8080; any free local port shows the same
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    forward = subprocess.Popen([cluster.kubectl_path(), "port-forward", "svc/api-server", f"{port}:8000", *P],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: "Forwarding from 127.0.0.1" in (forward.stdout.readline() or ""), timeout=20,
                 what="kubectl port-forward")
        assert requests.get(f"http://localhost:{port}/health", timeout=5).json()["status"] == "ok"
    finally:
        forward.terminate()
        forward.wait(timeout=10)


def test_a_faulty_release_raises_the_5xx_rate_and_rollout_undo_brings_it_down(lab):
    rollout("set", "image", "deployment/api-server", f"api-server={FAULTY}")
    try:
        ratio = wait_for(lambda: (r := server_error_ratio()) > 0.1 and r, timeout=90,
                         what="5xx from the faulty release in /metrics")
        assert ratio < 0.6  # about 30% of predictions fail
    finally:
        rollout("rollout", "undo", "deployment/api-server")
    image = kubectl("get", "deployment/api-server", *P, "-o", "jsonpath={.spec.template.spec.containers[0].image}")
    assert image == GOOD
    wait_for(lambda: server_error_ratio() == 0.0, timeout=90, what="no 5xx once rolled back")


def _rotate(password: str) -> None:
    """The guide's rotation, in the database and in the Secret (with the `-n` it leaves out)."""
    psql(f"ALTER USER mlops PASSWORD '{password}'")
    # username too: applied client-side, the guide's password-only Secret would drop that key
    # once an earlier apply recorded it (module 5 shows this pitfall on purpose).
    manifest = kubectl("create", "secret", "generic", "mlops-database-credentials", "--from-literal=username=mlops",
                       f"--from-literal=password={password}", "--dry-run=client", "-o", "yaml", *P)
    kubectl("apply", "-f", "-", *P, input=manifest)


def test_password_rotation_breaks_only_pods_that_did_not_restart(lab):
    original = base64.b64decode(kubectl("get", "secret", "mlops-database-credentials", *P, "-o",
                                        "jsonpath={.data.password}")).decode()
    _rotate(secrets.token_urlsafe(16))
    try:
        wait_for(lambda: not any(ready(p) for p in api_pods()), timeout=60,
                 what="every running api-server to fail its health check with the old password")
        database = json.loads(kubectl("exec", api_pods()[0]["metadata"]["name"], *P, "--", "curl", "-s",
                                      "--max-time", "8", "http://localhost:8000/health"))["database"]
        assert database.startswith("error")
        rollout("rollout", "restart", "deployment/api-server")
        assert all(ready(p) for p in api_pods() if not p["metadata"].get("deletionTimestamp"))
    finally:
        _rotate(original)
        rollout("rollout", "restart", "deployment/api-server")


@pytest.fixture
def quiet_database(lab):
    """The guide's restore procedure stops the writers first: api-server scaled to 0."""
    kubectl("scale", "deployment", "api-server", "--replicas=0", *P)
    wait_for(lambda: not api_pods(), timeout=60, what="api-server scaled to 0")
    yield
    kubectl("scale", "deployment", "api-server", "--replicas=3", *P)
    kubectl("rollout", "status", "deployment/api-server", *P, "--timeout=120s", timeout=130)


def fingerprint() -> str:
    return psql("SELECT string_agg(t || ':' || n || ':' || h, ' ' ORDER BY t) FROM ("
                "SELECT 'users' t, count(*) n, md5(string_agg(u::text, '|' ORDER BY u::text)) h FROM users u UNION ALL "
                "SELECT 'models', count(*), md5(string_agg(m::text, '|' ORDER BY m::text)) FROM models m UNION ALL "
                "SELECT 'predictions', count(*), md5(string_agg(p::text, '|' ORDER BY p::text)) FROM predictions p) s")


def test_a_pg_dump_backup_restores_into_a_wiped_database(quiet_database, tmp_path):
    before = fingerprint()
    backup = tmp_path / "backup.sql"
    with open(backup, "w") as out:  # kubectl exec postgres-0 -n mlops-production -- pg_dump … > backup.sql
        subprocess.run([cluster.kubectl_path(), "exec", "postgres-0", *P, "--", "pg_dump", "-U", "mlops",
                        "mlops_prod"], stdout=out, check=True, timeout=60)
    psql("DROP TABLE predictions, models, users CASCADE")
    assert "users" not in psql("SELECT string_agg(tablename, ',') FROM pg_tables WHERE schemaname = 'public'")
    with open(backup) as restore:  # kubectl exec -i postgres-0 … -- psql -U mlops mlops_prod < restore.sql
        subprocess.run([cluster.kubectl_path(), "exec", "-i", "postgres-0", *P, "--", "psql", "-U", "mlops",
                        "mlops_prod"], stdin=restore, capture_output=True, check=True, timeout=60)
    assert fingerprint() == before


def served_certificate(host: str) -> x509.Certificate:
    address, port = setting("INGRESS_ADDRESS").rsplit(":", 1)
    with socket.create_connection((address, int(port)), timeout=5) as raw:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # read what is served, whatever it is
        with context.wrap_socket(raw, server_hostname=host) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def test_forced_certificate_renewal_serves_a_new_certificate(lab):
    host = "api.mlops-platform.com"
    before = served_certificate(host).serial_number
    kubectl("delete", "certificate", "mlops-platform-cert", *P)
    kubectl("apply", "-f", str(CERTIFICATES))
    after = wait_for(lambda: (s := served_certificate(host).serial_number) != before and s, timeout=30,
                     what="the renewed certificate at the ingress")
    assert after != before
