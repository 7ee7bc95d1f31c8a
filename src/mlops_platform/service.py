"""What the platform's HTTP programs share.

The release a program runs (from env `IMAGE`), routing with JSON errors, the request metrics and
access log every route gets, `/metrics`, listening on env `LISTEN_ADDRESS`:`PORT`, and a clean
stop on SIGTERM.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from mlops_platform.faults import InjectedFault, Misbehaviour
from mlops_platform.logs import JsonLog
from mlops_platform.releases import Release, UnknownRelease, release_for

# Loopback unless told otherwise: a pod is given its own address, and nothing listens on a wildcard.
DEFAULT_LISTEN_ADDRESS = "127.0.0.1"
# From 5 ms to 5 s: a healthy prediction lands in the first buckets, a faulty release's in the middle.
REQUEST_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
MAX_BODY_BYTES = 1024 * 1024


class ConfigError(ValueError):
    """A setting from the environment that the program cannot run with."""


class HttpError(Exception):
    """Ends a request with this status and a JSON `{"error": message}` body."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: Any  # http.client.HTTPMessage: case-insensitive .get()
    body: bytes
    request_id: str

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise HttpError(400, "request body is not valid JSON") from None


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, document: Any) -> Response:
        return cls(status, json.dumps(document).encode())


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    handler: Handler
    business: bool  # subject to the release's misbehaviour
    quiet: bool  # successes logged at debug: probes and scrapes would drown the business lines


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None


def load_release(log: JsonLog, default_image: str) -> Release:
    """The release named by env `IMAGE`; exits with a logged error if it is unknown or cannot start."""
    image = os.environ.get("IMAGE", default_image)
    try:
        release = release_for(image)
    except UnknownRelease as error:
        log.error(str(error), image=image)
        raise SystemExit(2) from None
    if release.startup_error:
        log.error(release.startup_error, image=image, version=release.tag)
        raise SystemExit(1)
    log.info("starting", image=image, version=release.tag, release=release.summary)
    return release


class Service:
    """One HTTP program: its routes, its metrics registry, its log, the release it runs."""

    def __init__(self, release: Release, log: JsonLog):
        self.release = release
        self.log = log
        # No `*_created` series beside every counter and histogram: they double the series
        # Prometheus stores and tell an operator nothing that process_start_time_seconds does not.
        disable_created_metrics()
        # A registry of its own: only what this program declares, plus the process's own figures
        # (process_resident_memory_bytes, CPU seconds, open file descriptors).
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        Info("app", "The release this process runs.", registry=self.registry).info({"version": release.tag})
        self._requests = Counter(
            "http_requests", "HTTP requests answered.", ["method", "path", "status"], registry=self.registry
        )
        self._duration = Histogram(
            "http_request_duration_seconds",
            "Time from request received to response written.",
            ["method", "path"],
            buckets=REQUEST_DURATION_BUCKETS,
            registry=self.registry,
        )
        self._misbehaviour = Misbehaviour(release)
        self._routes: dict[tuple[str, str], Route] = {}
        self.route("GET", "/metrics", self._metrics, quiet=True)

    def route(self, method: str, path: str, handler: Handler, *, business: bool = False, quiet: bool = False) -> None:
        self._routes[(method, path)] = Route(handler, business, quiet)

    def run(self, default_port: int) -> int:
        """Serve until SIGTERM or SIGINT; the process's exit code."""
        address = os.environ.get("LISTEN_ADDRESS", DEFAULT_LISTEN_ADDRESS)
        try:
            port = env_int("PORT", default_port)
        except ConfigError as error:
            self.log.error(f"invalid configuration: {error}")
            return 2
        # On a pod's address, also on the pod's own loopback: what a wildcard listener would give
        # `kubectl exec … curl localhost`, without ever listening on a wildcard.
        addresses = [address] if ipaddress.ip_address(address).is_loopback else [address, "127.0.0.1"]
        try:
            servers = [_Server((a, port), _Exchange) for a in addresses]
        except (OSError, ValueError) as error:
            self.log.error("cannot listen", address=address, port=port, error=str(error))
            return 1
        for server in servers:
            server.service = self
        self._misbehaviour.start()

        def stop(signum: int, _frame) -> None:
            self.log.info("stopping", signal=signal.Signals(signum).name)
            # shutdown() waits for serve_forever() to return, which runs in this very thread.
            threading.Thread(target=lambda: [s.shutdown() for s in servers], daemon=True).start()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.log.info("listening", address=address, port=port)
        for extra in servers[1:]:
            threading.Thread(target=extra.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        servers[0].serve_forever(poll_interval=0.1)
        # Handler threads are daemons: a request still waiting on a dependency ends with the process.
        for server in servers:
            server.server_close()
        self.log.info("stopped")
        return 0

    def serve(self, exchange: BaseHTTPRequestHandler) -> None:
        started = time.perf_counter()
        method = exchange.command
        path = urlsplit(exchange.path).path
        request_id = exchange.headers.get("X-Request-ID") or uuid.uuid4().hex[:16]
        route = self._routes.get((method, path))
        error = None
        try:
            response = self._answer(route, Request(method, path, exchange.headers, self._body(exchange), request_id))
        except HttpError as failure:
            error = failure.message
            response = Response.json(failure.status, {"error": error, "request_id": request_id})
        self._write(exchange, response, request_id)

        elapsed = time.perf_counter() - started
        # Only known routes become label values: arbitrary paths would make unbounded series.
        path_label = path if route else "unmatched"
        self._requests.labels(method, path_label, str(response.status)).inc()
        self._duration.labels(method, path_label).observe(elapsed)
        if response.status >= 500:
            level = "error"
        elif response.status >= 400:
            level = "warning"
        else:
            level = "debug" if route.quiet else "info"
        fields = {"error": error} if error else {}
        self.log.log(
            level,
            f"{method} {path} {response.status}",
            method=method,
            path=path,
            status=response.status,
            duration_ms=round(elapsed * 1000, 1),
            request_id=request_id,
            **fields,
        )

    def _answer(self, route: Route | None, request: Request) -> Response:
        if route is None:
            if any(path == request.path for _, path in self._routes):
                raise HttpError(405, f"method {request.method} not allowed on {request.path}")
            raise HttpError(404, f"no route {request.path}")
        try:
            if route.business:
                self._misbehaviour.before_business_request()
            return route.handler(request)
        except InjectedFault as fault:
            self.log.error(str(fault), request_id=request.request_id, version=self.release.tag)
            raise HttpError(500, "internal server error") from None
        except HttpError:
            raise
        except Exception as unexpected:
            self.log.error(
                f"unhandled exception: {unexpected!r}", request_id=request.request_id, traceback=traceback.format_exc()
            )
            raise HttpError(500, "internal server error") from None

    @staticmethod
    def _body(exchange: BaseHTTPRequestHandler) -> bytes:
        try:
            length = int(exchange.headers.get("Content-Length") or 0)
        except ValueError:
            raise HttpError(400, "Content-Length is not a number") from None
        if length > MAX_BODY_BYTES:
            raise HttpError(413, f"request body over {MAX_BODY_BYTES} bytes")
        return exchange.rfile.read(length) if length > 0 else b""

    @staticmethod
    def _write(exchange: BaseHTTPRequestHandler, response: Response, request_id: str) -> None:
        try:
            exchange.send_response(response.status)
            exchange.send_header("Content-Type", response.content_type)
            exchange.send_header("Content-Length", str(len(response.body)))
            exchange.send_header("X-Request-ID", request_id)
            exchange.end_headers()
            exchange.wfile.write(response.body)
        except OSError:
            pass  # the client hung up; nothing left to tell it

    def _metrics(self, _request: Request) -> Response:
        return Response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)


class _Server(ThreadingHTTPServer):
    service: Service
    request_queue_size = 128  # the standard library's 5 drops connections under a modest burst

    def __init__(self, server_address: tuple[str, int], handler_class):
        if ":" in server_address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(server_address, handler_class)


class _Exchange(BaseHTTPRequestHandler):
    """One HTTP exchange, handed to the service; the standard library's own logging is off."""

    server: _Server
    server_version = "mlops-platform"

    def do_GET(self) -> None:
        self.server.service.serve(self)

    do_POST = do_GET

    def log_message(self, format: str, *args) -> None:
        pass  # the service writes its own JSON access log
