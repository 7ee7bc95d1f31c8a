"""The platform's public entry: HTTPS through the Ingress gateway, verified with the CA that
issued the namespace's certificate, as a user's client would call it."""

from __future__ import annotations

import base64
import http.client
import json
import random
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
from cryptography import x509

from opslab import cluster
from opslab.config import setting

TLS_SECRET = "mlops-platform-tls"
REQUEST_TIMEOUT = 10  # s


def api_host(namespace: str) -> str:
    """The public host of the platform in `namespace`, read from its Ingress."""
    return cluster.networking().read_namespaced_ingress("mlops-platform", namespace).spec.rules[0].host


def lab_ca(namespace: str) -> str:
    """The PEM certificate of the CA that issued the namespace's TLS certificate (`ca.crt` of its
    TLS Secret): public, and what a client verifies the gateway with."""
    secret = cluster.core().read_namespaced_secret(TLS_SECRET, namespace)
    return base64.b64decode(secret.data["ca.crt"]).decode()


def gateway_address() -> tuple[str, int]:
    """Where the Ingress gateway listens: `INGRESS_ADDRESS` (`127.0.0.1:8443` in the lab)."""
    host, _, port = setting("INGRESS_ADDRESS").rpartition(":")
    return host.strip("[]"), int(port)


def served_certificate(host: str, ca_pem: str, address: tuple[str, int] | None = None) -> x509.Certificate:
    """The certificate the gateway serves for `host`, after verifying it with `ca_pem` for that
    host: raises ssl.SSLCertVerificationError when it does not verify."""
    context = ssl.create_default_context(cadata=ca_pem)
    with socket.create_connection(address or gateway_address(), timeout=REQUEST_TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


class _Connection(http.client.HTTPSConnection):
    """HTTPS to `host` (SNI, Host header, certificate check) at the gateway's address, as
    `curl --resolve` does: no DNS entry needed."""

    def __init__(self, host: str, address: tuple[str, int], context: ssl.SSLContext, timeout: float):
        super().__init__(host, address[1], context=context, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = self._context.wrap_socket(socket.create_connection(self.address, self.timeout),
                                              server_hostname=self.host)


def call(namespace: str, path: str, body: dict | None = None, timeout: float = REQUEST_TIMEOUT) -> tuple[int, dict, float]:
    """One request to the platform in `namespace` through its Ingress, verified with the lab's CA:
    GET, or POST when there is a JSON `body`. Returns status, JSON answer and seconds taken."""
    connection = _Connection(api_host(namespace), gateway_address(),
                             ssl.create_default_context(cadata=lab_ca(namespace)), timeout)
    return _exchange(connection, path, body)


def send_predictions(namespace: str, count: int = 100, concurrency: int = 4) -> pd.DataFrame:
    """`count` predictions for random flowers through the Ingress, `concurrency` at a time, as
    users would send them: one row per request, with its status and seconds."""
    host, address = api_host(namespace), gateway_address()
    context = ssl.create_default_context(cadata=lab_ca(namespace))
    flowers = random.Random(count)

    def one(_) -> tuple[int, float]:
        features = [round(flowers.uniform(low, high), 1) for low, high in ((4.3, 7.9), (2.0, 4.4), (1.0, 6.9), (0.1, 2.5))]
        try:
            status, _, seconds = _exchange(_Connection(host, address, context, REQUEST_TIMEOUT), "/predict",
                                           {"features": features})
        except OSError:
            status, seconds = 0, float("nan")  # no answer at all
        return status, seconds

    with ThreadPoolExecutor(concurrency) as pool:
        return pd.DataFrame(pool.map(one, range(count)), columns=["status", "seconds"])


def _exchange(connection: http.client.HTTPSConnection, path: str, body: dict | None) -> tuple[int, dict, float]:
    started = time.perf_counter()
    try:
        if body is None:
            connection.request("GET", path)
        else:
            connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        text = response.read()
    finally:
        connection.close()
    try:
        answer = json.loads(text)
    except ValueError:
        answer = {"text": text.decode(errors="replace")}
    return response.status, answer, time.perf_counter() - started
