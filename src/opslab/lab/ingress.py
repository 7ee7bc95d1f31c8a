"""The lab's Ingress gateway: the TLS front door of Ingresses of class `lab`, as ingress-nginx is.

    python -m opslab.lab.ingress [--kubeconfig PATH] [--listen 127.0.0.1:8443]

TLS with SNI: a host's certificate is the one in its Ingress's `spec.tls[].secretName` secret,
re-read within a second or two of a change, so a renewed or an expired certificate is exactly what
clients see; an unknown name gets a self-signed default. Requests are routed by Host and path to
the Ingress's backend Service and proxied to one of its ready endpoints from the EndpointSlices,
round-robin, not through the ClusterIP. It listens on loopback only (README: "The network boundary").

The routing table is rebuilt from the API once a second; while the API server is away, the last
table keeps serving.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import ipaddress
import itertools
import json
import os
import signal
import socket
import socketserver
import ssl
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import kubernetes
from kubernetes.client.rest import ApiException

from mlops_platform.logs import JsonLog
from opslab import cluster
from opslab.lab.x509 import issue_server_certificate

INGRESS_CLASS = "lab"
DEFAULT_LISTEN = "127.0.0.1:8443"
POLL_INTERVAL = 1.0
API_TIMEOUT = 5
HANDSHAKE_TIMEOUT = 5
CLIENT_IDLE_TIMEOUT = 30
UPSTREAM_CONNECT_TIMEOUT = 2
UPSTREAM_READ_TIMEOUT = 30
MAX_REQUEST_BODY = 16 * 2**20
# Meaningful for one connection only (RFC 9110 §7.6.1): never forwarded in either direction.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
              "te", "trailer", "transfer-encoding", "upgrade"}

log = JsonLog("ingress")


# --- the routing table ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Backend:
    namespace: str
    service: str
    port: int | str  # the Service's port, by number or by name

    def __str__(self) -> str:
        return f"{self.namespace}/{self.service}:{self.port}"


@dataclass(frozen=True)
class Route:
    ingress: str  # namespace/name
    host: str | None  # None: any host
    path: str
    path_type: str  # Exact, Prefix; ImplementationSpecific is taken as Prefix
    backend: Backend

    def matches(self, host: str, path: str) -> bool:
        if self.host is not None and not host_matches(self.host, host):
            return False
        if self.path_type == "Exact":
            return path == self.path
        prefix = self.path.rstrip("/")
        return path == prefix or path.startswith(prefix + "/")  # whole path segments, as Kubernetes says

    @property
    def precedence(self) -> tuple:
        """Most specific first: a named host over a wildcard over none, then the longest path, then
        Exact over Prefix, as the Ingress API orders matches."""
        host_rank = 0 if self.host is None else 1 if self.host.startswith("*.") else 2
        return host_rank, len(self.path), self.path_type == "Exact"


def host_matches(pattern: str, host: str) -> bool:
    """A host, or a wildcard `*.example.com` standing for exactly one more label."""
    if pattern.startswith("*."):
        label, _, rest = host.partition(".")
        return bool(label) and rest == pattern[2:]
    return host == pattern


@dataclass(frozen=True)
class Upstreams:
    addresses: tuple[tuple[str, int], ...]
    problem: str = ""  # why there are none


@dataclass(frozen=True)
class Routing:
    routes: tuple[Route, ...] = ()  # by precedence
    upstreams: dict[Backend, Upstreams] = field(default_factory=dict)
    certificates: dict[str, ssl.SSLContext] = field(default_factory=dict)  # by host pattern

    def route(self, host: str, path: str) -> Route | None:
        return next((r for r in self.routes if r.matches(host, path)), None)

    def certificate(self, server_name: str) -> ssl.SSLContext | None:
        """The context for a name: its own host's first, else a wildcard's."""
        return self.certificates.get(server_name) or next(
            (context for pattern, context in self.certificates.items() if host_matches(pattern, server_name)), None)


def server_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A TLS server context for a PEM key pair; ssl.SSLError when they do not make one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # `ssl` loads key pairs from files only: a private directory, gone as soon as they are read.
    with tempfile.TemporaryDirectory(prefix="opslab-ingress-") as folder:
        cert_file, key_file = os.path.join(folder, "tls.crt"), os.path.join(folder, "tls.key")
        for path, data in ((cert_file, cert_pem), (key_file, key_pem)):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
                out.write(data)
        context.load_cert_chain(cert_file, key_file)
    return context


# --- reading the table from the cluster ----------------------------------------------------------
def _is_lab_ingress(ingress: dict) -> bool:
    annotated = (ingress["metadata"].get("annotations") or {}).get("kubernetes.io/ingress.class")
    return (ingress["spec"].get("ingressClassName") or annotated) == INGRESS_CLASS


def _backend(namespace: str, backend: dict | None) -> Backend | None:
    service = (backend or {}).get("service")
    if not service or not service.get("port"):
        return None  # a resource backend: not something this gateway proxies to
    return Backend(namespace, service["name"], service["port"].get("number") or service["port"].get("name"))


class ClusterRouting:
    """Builds the routing table from Ingresses, Services, EndpointSlices and TLS secrets."""

    def __init__(self, api: kubernetes.client.ApiClient, address: str):
        self.core = kubernetes.client.CoreV1Api(api)
        self.networking = kubernetes.client.NetworkingV1Api(api)
        self.discovery = kubernetes.client.DiscoveryV1Api(api)
        self.address = address
        self._contexts: dict[tuple[str, str], tuple[str, ssl.SSLContext | None]] = {}  # by secret, per version

    @staticmethod
    def _call(method, *args, **kwargs) -> dict | None:
        """The API's answer as it sent it, None for 404. Not the client's models: they refuse some
        valid objects, an EndpointSlice without endpoints among them."""
        try:
            return json.loads(method(*args, _preload_content=False, _request_timeout=API_TIMEOUT, **kwargs).data)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def sync(self) -> Routing:
        """The routing table as the cluster has it now; each Ingress is given the gateway's address."""
        ingresses = [i for i in self._call(self.networking.list_ingress_for_all_namespaces)["items"]
                     if _is_lab_ingress(i)]
        routes, certificates, used = [], {}, set()
        for ingress in ingresses:
            self._publish_address(ingress)
            routes += self._routes(ingress)
            for tls in ingress["spec"].get("tls") or ():
                secret = (ingress["metadata"]["namespace"], tls.get("secretName"))
                used.add(secret)
                context = self._context(*secret) if tls.get("secretName") else None
                for host in (tls.get("hosts") or ()) if context else ():
                    certificates.setdefault(host.lower(), context)
        routes.sort(key=lambda r: r.precedence, reverse=True)
        self._contexts = {key: value for key, value in self._contexts.items() if key in used}
        return Routing(tuple(routes), {b: self._upstreams(b) for b in {r.backend for r in routes}}, certificates)

    @staticmethod
    def _routes(ingress: dict) -> list[Route]:
        namespace, spec = ingress["metadata"]["namespace"], ingress["spec"]
        where = f"{namespace}/{ingress['metadata']['name']}"
        routes = []
        default = _backend(namespace, spec.get("defaultBackend"))
        if default:
            routes.append(Route(where, None, "/", "Prefix", default))
        for rule in spec.get("rules") or ():
            host = rule["host"].lower() if rule.get("host") else None
            for path in (rule.get("http") or {}).get("paths") or ():
                backend = _backend(namespace, path.get("backend"))
                if backend:
                    routes.append(Route(where, host, path.get("path") or "/", path["pathType"], backend))
        return routes

    def _upstreams(self, backend: Backend) -> Upstreams:
        service = self._call(self.core.read_namespaced_service, backend.service, backend.namespace)
        if service is None:
            return Upstreams((), f"service {backend.namespace}/{backend.service} not found")
        port = next((p for p in service["spec"].get("ports") or () if backend.port in (p["port"], p.get("name"))), None)
        if port is None:
            return Upstreams((), f"service {backend.namespace}/{backend.service} has no port {backend.port}")
        slices = self._call(self.discovery.list_namespaced_endpoint_slice, backend.namespace,
                            label_selector=f"kubernetes.io/service-name={backend.service}")["items"]
        addresses = tuple(
            (endpoint["addresses"][0], slice_port["port"])
            for endpoint_slice in slices if endpoint_slice["addressType"] == "IPv4"
            for slice_port in endpoint_slice.get("ports") or () if slice_port.get("name", "") == port.get("name", "")
            # An unknown readiness counts as ready, as the EndpointSlice API tells consumers.
            for endpoint in endpoint_slice.get("endpoints") or ()
            if endpoint["addresses"] and (endpoint.get("conditions") or {}).get("ready") is not False)
        return Upstreams(addresses, "" if addresses else f"no ready endpoints for service {backend}")

    def _context(self, namespace: str, secret_name: str) -> ssl.SSLContext | None:
        """The secret's key pair as a TLS context, rebuilt only when the secret changed."""
        secret = self._call(self.core.read_namespaced_secret, secret_name, namespace)
        if secret is None:
            return None
        key, version = (namespace, secret_name), secret["metadata"]["resourceVersion"]
        if key in self._contexts and self._contexts[key][0] == version:
            return self._contexts[key][1]
        data = secret.get("data") or {}
        try:
            context = server_context(base64.b64decode(data.get("tls.crt", "")), base64.b64decode(data.get("tls.key", "")))
            log.info("certificate loaded", secret=f"{namespace}/{secret_name}", resource_version=version)
        except (ssl.SSLError, ValueError) as error:
            context = None
            log.warning("TLS secret unusable; serving the default certificate", secret=f"{namespace}/{secret_name}",
                        error=str(error))
        self._contexts[key] = (version, context)
        return context

    def _publish_address(self, ingress: dict) -> None:
        """`kubectl get ingress` shows the gateway's address, as a cloud load balancer's would."""
        want = [{"ip": self.address}]
        if ((ingress.get("status") or {}).get("loadBalancer") or {}).get("ingress") == want:
            return
        meta = ingress["metadata"]
        try:
            self._call(self.networking.patch_namespaced_ingress_status, meta["name"], meta["namespace"],
                       [{"op": "add", "path": "/status/loadBalancer", "value": {"ingress": want}}])
        except ApiException as error:  # only cosmetic: never a reason to stop routing
            log.warning("could not publish the address on an Ingress", ingress=f"{meta['namespace']}/{meta['name']}",
                        error=f"{error.status} {error.reason}")


# --- serving -----------------------------------------------------------------------------------
class Gateway(ThreadingHTTPServer):
    """TLS is negotiated in each connection's own thread, so one slow handshake holds up no other."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int]):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, ProxyHandler)
        self.routing = Routing()  # replaced whole by the refresher; readers never see half a table
        now = datetime.now(UTC)
        # What ingress-nginx calls its fake certificate: served for any name no Ingress claims.
        default = issue_server_certificate(["ingress.local"], "Kubernetes Ingress Controller Fake Certificate",
                                           now - timedelta(minutes=5), now + timedelta(days=365), ca=None)
        self.tls = server_context(default.cert_pem, default.key_pem)
        self.tls.sni_callback = self._choose_certificate
        self._turns: dict[Backend, itertools.count] = {}

    def server_bind(self) -> None:
        # HTTPServer's own also looks the address up in DNS, a packet this lab must not send.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def _choose_certificate(self, connection: ssl.SSLSocket, server_name: str | None, _context) -> None:
        context = self.routing.certificate(server_name.lower()) if server_name else None
        if context is not None:
            connection.context = context

    def finish_request(self, request: socket.socket, client_address) -> None:
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            connection = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as error:
            # A client that refuses the certificate ends here: worth a line when a lesson asks why.
            log.info("TLS handshake failed", client=client_address[0], error=str(error))
            return
        try:
            self.RequestHandlerClass(connection, client_address, self)
        finally:
            connection.close()

    def handle_error(self, request, client_address) -> None:
        """A client gone mid-answer is routine for a proxy: one line, not a traceback on stderr."""
        error = sys.exc_info()[1]
        log.warning("connection ended with an error", client=client_address[0], error=repr(error))

    def next_turn(self, backend: Backend) -> int:
        return next(self._turns.setdefault(backend, itertools.count()))


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = CLIENT_IDLE_TIMEOUT
    server: Gateway

    def do_request(self) -> None:
        started = time.monotonic()
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].lower()
        path = urlsplit(self.path).path or "/"
        routing = self.server.routing  # one table for the whole request, however often it is replaced
        route = routing.route(host, path)
        fields = {"client": self.client_address[0], "method": self.command, "host": host, "path": path,
                  "ingress": route.ingress if route else None}
        status, upstream = self._forward(route, routing.upstreams[route.backend] if route else None, host, path)
        log.info("request", **fields, status=status, upstream=upstream,
                 duration_ms=round((time.monotonic() - started) * 1000, 1))

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_request

    def _forward(self, route: Route | None, upstreams: Upstreams | None, host: str,
                 path: str) -> tuple[int, str | None]:
        """Proxy the request along `route`; the status sent and the endpoint that answered."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._fail(411, "send the request body with a Content-Length"), None
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_REQUEST_BODY:
            return self._fail(413, f"request body over {MAX_REQUEST_BODY} bytes"), None
        body = self.rfile.read(length) if length else None
        if route is None:
            return self._fail(404, f"no Ingress of class {INGRESS_CLASS!r} routes host {host!r} path {path!r}"), None
        if not upstreams.addresses:
            return self._fail(503, upstreams.problem), None
        connection, upstream = self._connect(route.backend, upstreams.addresses)
        if connection is None:
            return self._fail(502, f"no endpoint of service {route.backend} accepted a connection"), None
        try:
            connection.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self._upstream_headers(host):
                connection.putheader(name, value)
            connection.endheaders(body)
            response = connection.getresponse()
            content = response.read()
        except TimeoutError:
            return self._fail(504, f"endpoint {upstream} of service {route.backend} did not answer within "
                                   f"{UPSTREAM_READ_TIMEOUT}s"), upstream
        except (OSError, http.client.HTTPException) as error:
            return self._fail(502, f"endpoint {upstream} of service {route.backend} failed: "
                                   f"{type(error).__name__}"), upstream
        finally:
            connection.close()
        self.send_response(response.status, response.reason)
        dropped = HOP_BY_HOP | _named_in_connection(response.headers) | {"content-length", "date", "server"}
        for name, value in response.headers.items():
            if name.lower() not in dropped:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)
        return response.status, upstream

    def _connect(self, backend: Backend, addresses) -> tuple[http.client.HTTPConnection | None, str | None]:
        """Round-robin over the ready endpoints, trying the next when one refuses, as nginx does."""
        first = self.server.next_turn(backend)
        for turn in range(len(addresses)):
            address, port = addresses[(first + turn) % len(addresses)]
            connection = http.client.HTTPConnection(address, port, timeout=UPSTREAM_CONNECT_TIMEOUT)
            try:
                connection.connect()
            except OSError:
                connection.close()
                continue
            connection.sock.settimeout(UPSTREAM_READ_TIMEOUT)
            return connection, f"{address}:{port}"
        return None, None

    def _upstream_headers(self, host: str) -> list[tuple[str, str]]:
        dropped = HOP_BY_HOP | _named_in_connection(self.headers) | {"x-forwarded-for"}
        headers = [(name, value) for name, value in self.headers.items() if name.lower() not in dropped]
        forwarded_for = ", ".join([*self.headers.get_all("X-Forwarded-For", []), self.client_address[0]])
        return headers + [("X-Forwarded-For", forwarded_for), ("X-Real-IP", self.client_address[0]),
                          ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", host),
                          ("X-Forwarded-Port", str(self.server.server_address[1])), ("Connection", "close")]

    def _fail(self, status: int, message: str) -> int:
        body = f"{status} {http.client.responses[status]}: {message}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return status

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        """Silenced: `do_request` writes one JSON line per request instead."""


def _named_in_connection(headers) -> set[str]:
    return {name.strip().lower() for value in headers.get_all("Connection", []) for name in value.split(",")}


# --- the process -------------------------------------------------------------------------------
def refresh(gateway: Gateway, routing: ClusterRouting, stop: threading.Event) -> None:
    problem = None  # logged when it starts and when it ends, not once a second
    while not stop.is_set():
        try:
            gateway.routing = routing.sync()
            if problem:
                log.info("routing from the cluster again", after=problem)
            problem = None
        except Exception as error:  # noqa: BLE001 - whatever it was, the last table keeps serving
            # Keyed by kind, not message: a message names a new connection object every second.
            described = f"{error.status} {error.reason}" if isinstance(error, ApiException) else type(error).__name__
            if described != problem:
                log.warning("cannot read the cluster; serving the last routing table", problem=described,
                            detail=str(error)[:500])
            problem = described
        stop.wait(POLL_INTERVAL)


def loopback_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not ADDRESS:PORT with a literal IP address") from None
    if not address.is_loopback:
        raise argparse.ArgumentTypeError(f"{text!r}: the gateway listens on loopback only (README: The network boundary)")
    return str(address), int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m opslab.lab.ingress", description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", help="kubeconfig to use (default: KUBECONFIG, else the running lab's)")
    parser.add_argument("--listen", type=loopback_address, default=DEFAULT_LISTEN,
                        help=f"loopback ADDRESS:PORT to serve TLS on (default {DEFAULT_LISTEN})")
    args = parser.parse_args(argv)
    gateway = Gateway(args.listen)
    stop = threading.Event()
    routing = ClusterRouting(cluster.api_client(args.kubeconfig), args.listen[0])
    threading.Thread(target=refresh, args=(gateway, routing, stop), name="refresh", daemon=True).start()
    # shutdown() waits for serve_forever to return, so it cannot run in the signal handler's thread.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=gateway.shutdown).start())
    log.info("listening", address=f"{args.listen[0]}:{args.listen[1]}", ingress_class=INGRESS_CLASS)
    gateway.serve_forever()
    stop.set()
    gateway.server_close()
    log.info("stopped")


if __name__ == "__main__":
    main()
