"""Certificates and TLS in the lab, for real: the certificate controller issues and renews X.509
certificates from the lab's CA, and the Ingress gateway serves them and proxies to endpoints.

Both components run as processes of this module against the running lab. Every packet goes to
127.0.0.1 (the gateway) or to the lab link's host address (the test's backends), nowhere else.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import kubernetes
import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from opslab import cluster
from opslab.lab.certificates import ensure_lab_ca
from opslab.lab.spec import LabSpec
from opslab.lab.x509 import issue_server_certificate, load_key_pair
from tests.waiting import wait_for

CRDS = Path(__file__).resolve().parents[1] / "infrastructure" / "cluster" / "crds"
LAB_LINK_ADDRESS = LabSpec.default().network.host_ip
GROUP, VERSION = "cert-manager.io", "v1"
WAIT = 30


# --- the components, as processes of this module ------------------------------------------------
def free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def start(module: str, *args: str, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", module, *args], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def kubeconfig(lab) -> str:
    return str(lab.spec.paths.kubeconfig)


@pytest.fixture(scope="module")
def lab_ca(lab, kubeconfig) -> Path:
    """The lab's CRDs and its CA issuer, as `lab up` makes them; the CA certificate's path."""
    cluster.kubectl("apply", "-k", str(CRDS))
    cluster.kubectl("wait", "--for=condition=Established", f"--timeout={WAIT}s",
                    "crd/certificates.cert-manager.io", "crd/clusterissuers.cert-manager.io", timeout=WAIT)
    pki = lab.spec.paths.pki
    ensure_lab_ca(kubeconfig, pki / "ca.crt", pki / "ca.key")
    return pki / "ca.crt"


@pytest.fixture(scope="module")
def controller(lab_ca, kubeconfig, api, tmp_path_factory) -> Path:
    """The certificate controller, running; the path of its log."""
    log = tmp_path_factory.mktemp("certificates") / "certificates.log"
    process = start("opslab.lab.certificates", "--kubeconfig", kubeconfig, log=log)
    try:
        wait_for(lambda: process.poll() is None and ready(custom(api).get_cluster_custom_object(
            GROUP, VERSION, "clusterissuers", "lab-ca")) == ("True", "KeyPairVerified"),
                 timeout=WAIT, what="the controller to find ClusterIssuer lab-ca ready")
        yield log
    finally:
        stop(process)
    assert b"PRIVATE KEY" not in log.read_bytes(), "the controller logged key material"


@pytest.fixture(scope="module")
def gateway(lab, kubeconfig, tmp_path_factory) -> int:
    """The Ingress gateway, listening on a free loopback port; the port."""
    port = free_port("127.0.0.1")
    log = tmp_path_factory.mktemp("ingress") / "ingress.log"
    process = start("opslab.lab.ingress", "--kubeconfig", kubeconfig, "--listen", f"127.0.0.1:{port}", log=log)

    def listening() -> bool:
        assert process.poll() is None, f"the gateway exited: {log.read_text()}"
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(listening, timeout=WAIT, what="the gateway to listen")
        yield port
    finally:
        stop(process)
    assert b"PRIVATE KEY" not in log.read_bytes(), "the gateway logged key material"


class Echo(BaseHTTPRequestHandler):
    """A backend that answers with what it received and which port it is."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = json.dumps({"port": self.server.server_address[1], "path": self.path,
                           "headers": dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def backends(lab) -> list[int]:
    """Two backends on the lab link's host address, a real address an EndpointSlice accepts; their ports."""
    servers = [socketserver.ThreadingTCPServer((LAB_LINK_ADDRESS, 0), Echo) for _ in range(2)]
    for server in servers:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield [server.server_address[1] for server in servers]
    for server in servers:
        server.shutdown()
        server.server_close()


# --- reading and writing the objects ------------------------------------------------------------
def custom(api) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(api)


def core(api) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api)


def ready(obj: dict) -> tuple[str, str] | None:
    """The Ready condition's status and reason."""
    found = [c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == "Ready"]
    return (found[0]["status"], found[0]["reason"]) if found else None


def certificate_manifest(namespace: str, name: str, dns: list[str], issuer: str = "lab-ca", **spec) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Certificate",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"secretName": f"{name}-tls", "dnsNames": dns,
                     "issuerRef": {"name": issuer, "kind": "ClusterIssuer"}, **spec}}


def create_certificate(api, namespace: str, name: str, dns: list[str], **spec) -> None:
    custom(api).create_namespaced_custom_object(GROUP, VERSION, namespace, "certificates",
                                                certificate_manifest(namespace, name, dns, **spec))


def read_certificate(api, namespace: str, name: str) -> dict:
    return custom(api).get_namespaced_custom_object(GROUP, VERSION, namespace, "certificates", name)


def wait_ready(api, namespace: str, name: str, reason: str = "Ready") -> dict:
    want = ("True", "Ready") if reason == "Ready" else ("False", reason)
    return wait_for(lambda: ready(certificate := read_certificate(api, namespace, name)) == want and certificate,
                    timeout=WAIT, what=f"certificate {name} to be Ready {want}")


def secret_pair(api, namespace: str, name: str):
    data = core(api).read_namespaced_secret(name, namespace).data
    return load_key_pair(base64.b64decode(data["tls.crt"]), base64.b64decode(data["tls.key"]))


def event_reasons(api, namespace: str, name: str) -> set[str]:
    events = core(api).list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return {e.reason for e in events}


@pytest.fixture
def issuer(api) -> str:
    """A ClusterIssuer of the test's own, on the lab's CA, that the test may break."""
    name = f"t-issuer-{uuid.uuid4().hex[:8]}"
    custom(api).create_cluster_custom_object(GROUP, VERSION, "clusterissuers", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterIssuer", "metadata": {"name": name},
        "spec": {"ca": {"secretName": "lab-ca"}}})
    yield name
    custom(api).delete_cluster_custom_object(GROUP, VERSION, "clusterissuers", name)


def point_issuer_at(api, issuer: str, secret_name: str) -> None:
    custom(api).patch_cluster_custom_object(GROUP, VERSION, "clusterissuers", issuer,
                                            {"spec": {"ca": {"secretName": secret_name}}})


def expose(api, namespace: str, service: str, ports: list[int], ready_endpoints: bool = True) -> None:
    """A selector-less Service and one EndpointSlice per backend port, all on the lab link's address."""
    core(api).create_namespaced_service(namespace, {
        "metadata": {"name": service}, "spec": {"ports": [{"name": "http", "port": 80}]}})
    for index, port in enumerate(ports):
        kubernetes.client.DiscoveryV1Api(api).create_namespaced_endpoint_slice(namespace, {
            "metadata": {"name": f"{service}-{index}", "labels": {
                "kubernetes.io/service-name": service, "endpointslice.kubernetes.io/managed-by": "opslab-tests"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [LAB_LINK_ADDRESS], "conditions": {"ready": ready_endpoints}}]})


def set_endpoints_ready(api, namespace: str, service: str, value: bool) -> None:
    discovery = kubernetes.client.DiscoveryV1Api(api)
    for endpoint_slice in discovery.list_namespaced_endpoint_slice(
            namespace, label_selector=f"kubernetes.io/service-name={service}").items:
        discovery.patch_namespaced_endpoint_slice(endpoint_slice.metadata.name, namespace, [
            {"op": "replace", "path": "/endpoints/0/conditions/ready", "value": value}])


def create_ingress(api, namespace: str, rules: list[dict], tls: list[dict] | None = None) -> None:
    kubernetes.client.NetworkingV1Api(api).create_namespaced_ingress(namespace, {
        "metadata": {"name": "web"}, "spec": {"ingressClassName": "lab", "rules": rules, "tls": tls or []}})


def rule(host: str, *paths: tuple[str, str, str]) -> dict:
    return {"host": host, "http": {"paths": [
        {"path": path, "pathType": kind, "backend": {"service": {"name": service, "port": {"number": 80}}}}
        for path, kind, service in paths]}}


# --- a client of the gateway --------------------------------------------------------------------
def https_get(port: int, host: str, path: str, ca_file: Path | None) -> tuple[int, bytes]:
    """GET through the gateway at 127.0.0.1 with `host` as SNI and Host; verified against the CA
    when one is given (ssl.SSLCertVerificationError when the certificate does not verify)."""
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else ssl._create_unverified_context()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        connection = http.client.HTTPConnection(host, timeout=10)
        connection.sock = context.wrap_socket(raw, server_hostname=host)  # given a socket, it never connects
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, response.read()


def verification_error(port: int, host: str, ca_file: Path) -> str | None:
    """Why the gateway's certificate for `host` fails verification, or None when a request succeeds."""
    try:
        https_get(port, host, "/", ca_file)
    except ssl.SSLCertVerificationError as error:
        return error.verify_message
    return None


# --- the certificate controller -----------------------------------------------------------------
def test_the_lab_ca_issuer_is_ready(controller, api, lab_ca):
    issuer = custom(api).get_cluster_custom_object(GROUP, VERSION, "clusterissuers", "lab-ca")
    assert issuer["spec"]["ca"]["secretName"] == "lab-ca"
    assert ready(issuer) == ("True", "KeyPairVerified")
    secret = core(api).read_namespaced_secret("lab-ca", "cert-manager")
    assert base64.b64decode(secret.data["tls.crt"]) == lab_ca.read_bytes()


def test_a_certificate_is_issued_from_the_lab_ca(controller, api, namespace, lab_ca):
    host = f"api.{namespace}.opslab.test"
    create_certificate(api, namespace, "web", [host, f"www.{host}"], commonName=host, duration="2160h")
    status = wait_ready(api, namespace, "web")["status"]

    secret = core(api).read_namespaced_secret("web-tls", namespace)
    assert secret.type == "kubernetes.io/tls"
    assert secret.metadata.annotations["cert-manager.io/certificate-name"] == "web"
    assert secret.metadata.annotations["cert-manager.io/issuer-name"] == "lab-ca"
    ca = x509.load_pem_x509_certificate(lab_ca.read_bytes())
    assert base64.b64decode(secret.data["ca.crt"]) == lab_ca.read_bytes()
    cert = secret_pair(api, namespace, "web-tls").cert
    cert.verify_directly_issued_by(ca)
    assert cert.issuer == ca.subject
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(names.get_values_for_type(x509.DNSName)) == sorted([host, f"www.{host}"])
    assert ExtendedKeyUsageOID.SERVER_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == dt.timedelta(hours=2160)
    now = dt.datetime.now(dt.UTC)
    assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc

    as_status = lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    assert status["notAfter"] == as_status(cert.not_valid_after_utc)
    assert status["renewalTime"] == as_status(cert.not_valid_after_utc - lifetime / 3)
    assert status["revision"] == 1
    assert {"Issuing", "Issued"} <= event_reasons(api, namespace, "web")


def test_deleting_and_reapplying_the_certificate_issues_a_new_one(controller, api, namespace, tmp_path):
    """The guide's forced renewal, with its own commands."""
    manifest = tmp_path / "certificates.yaml"
    manifest.write_text(yaml.safe_dump(certificate_manifest(namespace, "web", [f"api.{namespace}.opslab.test"])))
    cluster.kubectl("apply", "-f", str(manifest))
    wait_ready(api, namespace, "web")
    first = secret_pair(api, namespace, "web-tls").cert.serial_number

    cluster.kubectl("delete", "certificate", "web", "-n", namespace)
    assert secret_pair(api, namespace, "web-tls").cert.serial_number == first, "the secret outlives its Certificate"
    cluster.kubectl("apply", "-f", str(manifest))

    wait_for(lambda: secret_pair(api, namespace, "web-tls").cert.serial_number != first,
             timeout=WAIT, what="a new certificate in the secret")
    assert wait_ready(api, namespace, "web")["status"]["revision"] == 1


def test_a_certificate_is_renewed_at_its_renewal_time(controller, api, namespace):
    create_certificate(api, namespace, "short", [f"short.{namespace}.opslab.test"], duration="60s", renewBefore="55s")
    first = wait_ready(api, namespace, "short")["status"]
    renewed = wait_for(lambda: (status := read_certificate(api, namespace, "short")["status"]).get("revision", 0) > 1
                       and status, timeout=WAIT, what="the certificate to be renewed")
    renewal_time = dt.datetime.fromisoformat(first["renewalTime"])
    assert dt.datetime.fromisoformat(renewed["notBefore"]) >= renewal_time
    assert renewed["notAfter"] > first["notAfter"]


def test_a_certificate_with_a_missing_issuer_is_not_ready(controller, api, namespace):
    create_certificate(api, namespace, "orphan", [f"orphan.{namespace}.opslab.test"], issuer="no-such-issuer")
    certificate = wait_ready(api, namespace, "orphan", reason="IssuerNotFound")
    ready_condition = next(c for c in certificate["status"]["conditions"] if c["type"] == "Ready")
    assert "no-such-issuer" in ready_condition["message"]
    assert not core(api).list_namespaced_secret(namespace, field_selector="metadata.name=orphan-tls").items
    assert "IssuerNotFound" in event_reasons(api, namespace, "orphan")


# --- certificates at the gateway ----------------------------------------------------------------
def test_an_expired_certificate_fails_at_the_gateway_until_the_issuer_is_fixed(
        controller, gateway, backends, api, namespace, lab_ca, issuer):
    host = f"api.{namespace}.opslab.test"
    create_certificate(api, namespace, "web", [host], issuer=issuer)
    expose(api, namespace, "echo", backends[:1])
    create_ingress(api, namespace, [rule(host, ("/", "Prefix", "echo"))], tls=[{"hosts": [host], "secretName": "web-tls"}])
    wait_ready(api, namespace, "web")
    wait_for(lambda: verification_error(gateway, host, lab_ca) is None, timeout=WAIT,
             what="the gateway to serve the issued certificate")

    # The issuer breaks, then time passes: the certificate in the secret has expired.
    point_issuer_at(api, issuer, "no-such-secret")
    wait_for(lambda: ready(custom(api).get_cluster_custom_object(GROUP, VERSION, "clusterissuers", issuer))
             == ("False", "ErrGetKeyPair"), timeout=WAIT, what="the issuer to be not ready")
    ca = load_key_pair(lab_ca.read_bytes(), (lab_ca.parent / "ca.key").read_bytes())
    now = dt.datetime.now(dt.UTC)
    expired = issue_server_certificate([host], None, now - dt.timedelta(days=91), now - dt.timedelta(days=1), ca)
    secret = core(api).read_namespaced_secret("web-tls", namespace)
    secret.data |= {"tls.crt": base64.b64encode(expired.cert_pem).decode(),
                    "tls.key": base64.b64encode(expired.key_pem).decode()}
    core(api).replace_namespaced_secret("web-tls", namespace, secret)

    assert wait_for(lambda: verification_error(gateway, host, lab_ca), timeout=WAIT,
                    what="the gateway to serve the expired certificate") == "certificate has expired"
    wait_ready(api, namespace, "web", reason="IssuerNotReady")
    assert secret_pair(api, namespace, "web-tls").cert.serial_number == expired.cert.serial_number, \
        "with its issuer broken, the controller leaves the secret alone"

    point_issuer_at(api, issuer, "lab-ca")
    wait_for(lambda: verification_error(gateway, host, lab_ca) is None, timeout=WAIT,
             what="the renewed certificate at the gateway")
    status, body = https_get(gateway, host, "/", lab_ca)
    assert status == 200 and json.loads(body)["port"] == backends[0]
    assert wait_ready(api, namespace, "web")["status"]["notAfter"] > now.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- routing at the gateway ---------------------------------------------------------------------
def test_the_gateway_routes_by_host_and_path_to_ready_endpoints(gateway, backends, api, namespace):
    host, other = f"api.{namespace}.opslab.test", f"other.{namespace}.opslab.test"
    expose(api, namespace, "echo", backends)
    create_ingress(api, namespace, [
        rule(host, ("/api", "Prefix", "echo"), ("/health", "Exact", "echo")),
        rule(other, ("/", "Prefix", "absent")),
    ])
    networking = kubernetes.client.NetworkingV1Api(api)
    wait_for(lambda: (networking.read_namespaced_ingress("web", namespace).status.load_balancer.ingress or [None])[0]
             and networking.read_namespaced_ingress("web", namespace).status.load_balancer.ingress[0].ip == "127.0.0.1",
             timeout=WAIT, what="the Ingress to show the gateway's address")
    get = lambda host, path: https_get(gateway, host, path, ca_file=None)  # noqa: E731 - routing, not TLS, here
    wait_for(lambda: get(host, "/api/v1/models")[0] == 200, timeout=WAIT, what="the route to be served")

    answers = [json.loads(get(host, "/api/v1/models?limit=2")[1]) for _ in range(4)]
    assert {a["port"] for a in answers} == set(backends), "round-robin over both ready endpoints"
    assert answers[0]["path"] == "/api/v1/models?limit=2"
    assert answers[0]["headers"]["X-Forwarded-For"] == "127.0.0.1"
    assert answers[0]["headers"]["X-Forwarded-Proto"] == "https"
    assert answers[0]["headers"]["Host"] == host
    assert get(host, "/health")[0] == 200
    assert get(host, "/health/deep")[0] == 404, "Exact matches the path only"
    assert get(host, "/apis")[0] == 404, "Prefix matches whole path segments"
    assert get(f"unknown.{namespace}.opslab.test", "/api")[0] == 404
    status, body = get(other, "/")
    assert status == 503 and b"service" in body and b"not found" in body

    set_endpoints_ready(api, namespace, "echo", False)
    status, body = wait_for(lambda: (answer := get(host, "/api"))[0] == 503 and answer, timeout=WAIT,
                            what="503 with no ready endpoint")
    assert b"no ready endpoints" in body

    closed = free_port(LAB_LINK_ADDRESS)  # nothing listens there any more
    expose(api, namespace, "closed", [closed])
    networking.patch_namespaced_ingress("web", namespace, [{"op": "add", "path": "/spec/rules/0/http/paths/-", "value": {
        "path": "/closed", "pathType": "Prefix", "backend": {"service": {"name": "closed", "port": {"number": 80}}}}}])
    status, body = wait_for(lambda: (answer := get(host, "/closed"))[0] == 502 and answer, timeout=WAIT,
                            what="502 from an endpoint that refuses connections")
    assert b"accepted a connection" in body
