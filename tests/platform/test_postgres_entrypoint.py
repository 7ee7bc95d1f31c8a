"""The database image's entrypoint: a real PostgreSQL created, seeded, restarted and stopped.

Each test runs `python -m mlops_platform.postgres` as a pod would, listening on 127.0.0.1 and a
socket directory of its own, and reads the database the way the guide does: psql as root over
the socket, and the api-server's way, over TCP with the password.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from tests.platform.conftest import STARTUP_TIMEOUT_SECONDS, Postgres, free_port
from tests.waiting import wait_for

COUNTS = "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM models), (SELECT count(*) FROM predictions)"
STOP_TIMEOUT_SECONDS = 15


class Entrypoint:
    """One database directory, and the entrypoint started on it as often as a test likes."""

    def __init__(self, base: Path):
        self.base = base
        self.data_dir = base / "data"
        self.log_path = base / "entrypoint.log"
        self.server = Postgres(port=free_port(), socket_dir=base / "run", password=secrets.token_urlsafe(12))
        self.env = {
            "PATH": os.environ["PATH"],
            "PGDATA": str(self.data_dir),
            "SOCKET_DIR": str(self.server.socket_dir),
            "LISTEN_ADDRESS": "127.0.0.1",
            "PORT": str(self.server.port),
            "POSTGRES_PASSWORD": self.server.password,
        }
        self._local_conninfo = psycopg.conninfo.make_conninfo(
            host=str(self.server.socket_dir), port=self.server.port, user="mlops", dbname="mlops_prod"
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> Entrypoint:
        """Start it and wait until the server listens on TCP and takes sessions."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mlops_platform.postgres"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(self._accepting, STARTUP_TIMEOUT_SECONDS, f"postgres on port {self.server.port}")
        return self

    def _accepting(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"the entrypoint exited with {self.process.returncode}:\n{self.output()}")
        # Only the final server listens on TCP (the first start seeds the database on the socket
        # alone), and it listens before it takes sessions (crash recovery, after a kill).
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", self.server.port)) != 0:
                return False
        try:
            with psycopg.connect(self._local_conninfo, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOP_TIMEOUT_SECONDS}s after SIGTERM:\n{self.output()}")

    def psql(self, query: str) -> str:
        """psql as root over the socket, as `kubectl exec postgres-0 -- psql -U mlops mlops_prod` runs it."""
        result = subprocess.run(
            ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", str(self.server.socket_dir),
             "-p", str(self.server.port), "-U", "mlops", "-d", "mlops_prod", "-c", query],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def output(self) -> str:
        return self.log_path.read_text()


@pytest.fixture
def database():
    # Not pytest's tmp_path: its parents are private to root, and the server runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="mlops-postgres-entrypoint-"))
    base.chmod(0o755)
    entrypoint = Entrypoint(base)
    yield entrypoint
    if entrypoint.process and entrypoint.process.poll() is None:
        entrypoint.terminate()
    shutil.rmtree(base)


def test_first_start_creates_and_seeds_the_database(database):
    database.start()

    assert database.psql(COUNTS) == "40|5|400"
    assert database.server.query("SELECT current_user, current_database()") == [("mlops", "mlops_prod")]
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        Postgres(database.server.port, database.server.socket_dir, password="not-the-password").query("SELECT 1")

    stat = database.data_dir.stat()
    assert (stat.st_uid, stat.st_mode & 0o777) == (pwd.getpwnam("postgres").pw_uid, 0o700)
    assert not database.data_dir.with_name("data.initialising").exists()
    leaked = database.server.password in database.output()  # not in the assert: pytest would show it
    assert not leaked, "the password appears in the entrypoint's output"


def test_restart_keeps_the_data_and_a_changed_password(database):
    database.start()
    database.psql("INSERT INTO users (id, email, plan) VALUES (4100, 'kept@example.com', 'team')")
    new_password = secrets.token_urlsafe(12)  # no quote in it
    database.psql(f"ALTER USER mlops PASSWORD '{new_password}'")
    assert database.terminate() == 0

    database.start()  # POSTGRES_PASSWORD still holds the first password

    assert database.psql("SELECT email FROM users WHERE id = 4100") == "kept@example.com"
    assert database.psql(COUNTS) == "41|5|400"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        database.server.query("SELECT 1")
    rotated = Postgres(database.server.port, database.server.socket_dir, password=new_password)
    assert rotated.query("SELECT current_user") == [("mlops",)]
    assert database.output().count("creating the database cluster") == 1


def test_sigterm_ends_open_sessions_and_leaves_no_server(database):
    database.start()
    server_pid = int((database.data_dir / "postmaster.pid").read_text().split()[0])
    # An idle session: PostgreSQL's own SIGTERM (a smart shutdown) would wait for it forever.
    with psycopg.connect(database.server.conninfo(), connect_timeout=5):
        assert database.terminate() == 0
    assert not Path(f"/proc/{server_pid}").exists()
    assert not (database.data_dir / "postmaster.pid").exists()


def test_a_killed_entrypoint_takes_the_server_with_it(database):
    database.start()
    server_pid = int((database.data_dir / "postmaster.pid").read_text().split()[0])
    database.process.kill()
    database.process.wait(STOP_TIMEOUT_SECONDS)
    # Left running, the server would hold the data directory and the pod's next start would fail.
    wait_for(lambda: not Path(f"/proc/{server_pid}").exists(), STOP_TIMEOUT_SECONDS, "the server to exit")
    wait_for(lambda: not (database.data_dir / "postmaster.pid").exists(), STOP_TIMEOUT_SECONDS, "its lock file")
    database.start()
    assert database.psql(COUNTS) == "40|5|400"


@pytest.mark.parametrize(
    "unset, overrides, complaint",
    [
        ("PGDATA", {}, "PGDATA"),
        ("POSTGRES_PASSWORD", {}, "POSTGRES_PASSWORD"),
        # What a status.podIP reference gives a container started before the pod has an address.
        (None, {"LISTEN_ADDRESS": ""}, "LISTEN_ADDRESS must be set"),
        # The all-zeros address, spelt so that the literal appears nowhere in the repository.
        (None, {"LISTEN_ADDRESS": ".".join("0" * 4)}, "not a wildcard"),
    ],
)
def test_refuses_to_start_with_a_clear_error(database, unset, overrides, complaint):
    env = {**database.env, **overrides}
    env.pop(unset, None)
    result = subprocess.run(
        [sys.executable, "-m", "mlops_platform.postgres"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("entrypoint: error:") and complaint in line
    assert not database.data_dir.exists()
