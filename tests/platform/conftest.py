"""Fixtures for the platform's programs: a real PostgreSQL, and each program as a real process.

Everything listens on 127.0.0.1 and every outbound setting a program has points at 127.0.0.1,
so no test sends a packet anywhere else. Every wait is bounded.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlops_platform.http_client import Reply, request_json
from mlops_platform.schema import SCHEMA_FILE
from tests.waiting import wait_for

STARTUP_TIMEOUT_SECONDS = 30
_no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- PostgreSQL ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Postgres:
    port: int
    socket_dir: Path
    password: str  # of role mlops
    host: str = "127.0.0.1"
    user: str = "mlops"
    dbname: str = "mlops_prod"

    def conninfo(self, dbname: str | None = None) -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.host, port=self.port, dbname=dbname or self.dbname, user=self.user, password=self.password
        )

    def query(self, sql: str, params: tuple = (), dbname: str | None = None) -> list[tuple]:
        with psycopg.connect(self.conninfo(dbname), connect_timeout=5) as connection:
            return connection.execute(sql, params).fetchall()

    def psql(self, *args: str, dbname: str = "postgres") -> subprocess.CompletedProcess:
        """psql as the superuser over the unix socket, the way the lab runs its SQL."""
        return _as_postgres(
            _postgres_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", str(self.socket_dir), "-p", str(self.port), "-d", dbname, *args,
        )  # fmt: skip

    def create_database(self, name: str) -> None:
        self.psql("-c", f"CREATE DATABASE {name} OWNER {self.user}")


def _postgres_bin(name: str) -> str:
    installed = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not installed:
        pytest.fail("PostgreSQL is not installed: apt-get update && apt-get install -y postgresql")
    return f"{installed[-1]}/{name}"


def _as_postgres(*command: str) -> subprocess.CompletedProcess:
    # PostgreSQL refuses to run as root, and these tests run as root.
    result = subprocess.run(
        ["runuser", "-u", "postgres", "--", *command], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        pytest.fail(f"{command[0]} failed ({result.returncode}): {result.stderr or result.stdout}")
    return result


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL of the session's own on 127.0.0.1, with mlops_prod created by schema.sql."""
    # Not pytest's tmp_path: its parents are private to root, and the server runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="mlops-platform-pg-"))
    shutil.chown(base, "postgres", "postgres")
    data = base / "data"
    server = Postgres(port=free_port(), socket_dir=base, password=secrets.token_urlsafe(12))
    _as_postgres(
        _postgres_bin("initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8", "--no-sync",
        "--auth-local=trust", "--auth-host=scram-sha-256",
    )  # fmt: skip
    options = f"-c listen_addresses=127.0.0.1 -p {server.port} -k {base} -c fsync=off"
    _as_postgres(_postgres_bin("pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-o", options,
                 "-w", "-t", "30", "start")
    try:
        server.psql("-c", f"CREATE ROLE mlops LOGIN PASSWORD '{server.password}'")
        server.create_database("mlops_prod")
        server.psql("-f", str(SCHEMA_FILE), dbname="mlops_prod")
        yield server
    finally:
        _as_postgres(_postgres_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop")
        shutil.rmtree(base)


# --- the platform's programs --------------------------------------------------------------------


class Program:
    """One of the platform's programs, running as a process of its own."""

    def __init__(self, module: str, env: dict[str, str], args: list[str], log_path: Path):
        self.module = module
        self.port = int(env["PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"mlops_platform.{module}", *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def get(self, path: str, headers: dict | None = None, timeout: float = 10) -> Reply:
        return request_json("GET", self.url + path, headers=headers, timeout=timeout)

    def post(self, path: str, body, headers: dict | None = None, timeout: float = 10) -> Reply:
        return request_json("POST", self.url + path, body=body, headers=headers, timeout=timeout)

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        """Every sample of /metrics, keyed by name and labels, read with Prometheus's own parser."""
        with _no_proxy.open(self.url + "/metrics", timeout=10) as answer:
            text = answer.read().decode()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, frozenset(labels.items())), 0.0)

    def wait_ready(self) -> Program:
        """Wait until the program logs that it listens; its dependencies may still be down."""

        def listening() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"{self.module} exited with {self.process.returncode}:\n{self.output()}")
            return '"msg": "listening"' in self.output()

        wait_for(listening, STARTUP_TIMEOUT_SECONDS, f"{self.module} to listen on port {self.port}")
        return self

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.module} still running after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text()

    def logs(self) -> list[dict]:
        """Every line the program wrote, as JSON; a line that is not JSON fails the test."""
        return [json.loads(line) for line in self.output().splitlines()]

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc status")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _loopback_env(**settings: str) -> dict[str, str]:
    """A program's environment: loopback for every address it could reach, unless set otherwise."""
    nowhere = f"http://127.0.0.1:{free_port()}"  # a closed port: answers "refused" at once
    return {
        "PATH": os.environ["PATH"],
        "LISTEN_ADDRESS": "127.0.0.1",
        "PORT": str(free_port()),
        "MODEL_SERVER_URL": nowhere,
        "TARGET_URL": nowhere,
        "DB_HOST": "127.0.0.1",
        "DB_PORT": str(free_port()),
        **settings,
    }


@pytest.fixture
def launch(tmp_path):
    """Start a program: `launch("api_server", IMAGE=…, wait=False, args=[…])`; stopped after the test."""
    programs: list[Program] = []

    def start(module: str, *, wait: bool = True, args: tuple[str, ...] = (), **settings: str) -> Program:
        log_path = tmp_path / f"{module}-{len(programs)}.log"
        program = Program(module, _loopback_env(**settings), list(args), log_path)
        programs.append(program)
        return program.wait_ready() if wait else program

    yield start
    for program in programs:
        program.stop()


@pytest.fixture(scope="session")
def model_server(tmp_path_factory):
    """A healthy model-server shared by the session: training it takes seconds."""
    program = Program(
        "model_server", _loopback_env(), [], tmp_path_factory.mktemp("model-server") / "model_server.log"
    )
    try:
        yield program.wait_ready()
    finally:
        program.stop()


@pytest.fixture
def api_env(postgres, model_server) -> dict[str, str]:
    """Settings for an api-server wired to the session's database and model-server."""
    return {
        "MODEL_SERVER_URL": model_server.url,
        "DB_HOST": postgres.host,
        "DB_PORT": str(postgres.port),
        "DB_NAME": postgres.dbname,
        "DB_USER": postgres.user,
        "DB_PASSWORD": postgres.password,
    }
