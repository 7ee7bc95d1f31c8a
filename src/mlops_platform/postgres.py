"""PostgreSQL for the platform: the entrypoint of the image `registry.local/library/postgres:15`.

It does what the official postgres image's entrypoint does, with Debian's PostgreSQL. The first
start, finding no database in PGDATA, creates the database cluster, the role, the database
owned by it and the platform's tables (`schema.sql`); every start then runs the server in the
foreground until SIGTERM, which shuts it down fast (open sessions are ended, not waited for).
Configured from the environment:

    PGDATA             data directory (required); owned by the OS user postgres, mode 700
    SOCKET_DIR         unix socket directory (required); local connections need no password:
                       psql -h $SOCKET_DIR -U mlops mlops_prod
    LISTEN_ADDRESS     IP address to listen on (required: the pod's); 127.0.0.1 is added,
                       the pod's own loopback
    PORT               port (default 5432)
    POSTGRES_USER      role the first start creates, owner of the database (default mlops)
    POSTGRES_PASSWORD  that role's password (required on the first start)
    POSTGRES_DB        database the first start creates (default mlops_prod)

Later starts leave roles alone: a password changed with ALTER USER stays changed whatever
POSTGRES_PASSWORD says, as in any real database.

Runs as root, and runs PostgreSQL's programs as the OS user postgres.
Run: python -m mlops_platform.postgres
"""

from __future__ import annotations

import ctypes
import glob
import ipaddress
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from mlops_platform import schema

OS_USER = "postgres"
LOOPBACK = "127.0.0.1"
# Host connections from any address need the role's password. Appended to the pg_hba.conf
# that initdb writes, whose own lines trust local (unix socket) connections.
HOST_ACCESS_RULE = "host all all all scram-sha-256\n"
STARTUP_TIMEOUT_SECONDS = 60
SHUTDOWN_TIMEOUT_SECONDS = 60
INITDB_TIMEOUT_SECONDS = 120
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_libc = ctypes.CDLL(None, use_errno=True)


class ConfigError(ValueError):
    """A setting from the environment that the entrypoint cannot run with."""


class Stop(Exception):
    """SIGTERM or SIGINT arrived."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    socket_dir: Path
    listen_address: str
    port: int
    user: str
    database: str
    password: str | None = field(repr=False)  # never in a log line or a traceback

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        missing = [name for name in ("PGDATA", "SOCKET_DIR", "LISTEN_ADDRESS") if not env.get(name)]
        if missing:
            raise ConfigError(f"{', '.join(missing)} must be set")
        try:
            address = ipaddress.ip_address(env["LISTEN_ADDRESS"])
        except ValueError:
            raise ConfigError(f"LISTEN_ADDRESS must be an IP address, got {env['LISTEN_ADDRESS']!r}") from None
        if address.is_unspecified:
            raise ConfigError("LISTEN_ADDRESS must be the pod's own address, not a wildcard")
        port = env.get("PORT", "5432")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"PORT must be a port number, got {port!r}")
        return cls(
            data_dir=Path(env["PGDATA"]),
            socket_dir=Path(env["SOCKET_DIR"]),
            listen_address=str(address),
            port=int(port),
            user=env.get("POSTGRES_USER") or "mlops",
            database=env.get("POSTGRES_DB") or "mlops_prod",
            password=env.get("POSTGRES_PASSWORD") or None,
        )

    def local_conninfo(self, user: str, dbname: str) -> str:
        """Over the unix socket, where the server trusts local connections."""
        return psycopg.conninfo.make_conninfo(host=str(self.socket_dir), port=self.port, user=user, dbname=dbname)


def log(message: str) -> None:
    # Plain lines on stderr, interleaved with the server's own.
    print(f"entrypoint: {message}", file=sys.stderr, flush=True)


def server_bin_dir() -> Path:
    """Debian's newest installed PostgreSQL: /usr/lib/postgresql/<major>/bin."""
    installed = glob.glob("/usr/lib/postgresql/*/bin/postgres")
    if not installed:
        raise ConfigError("PostgreSQL is not installed (no /usr/lib/postgresql/<version>/bin/postgres)")
    return max((Path(path).parent for path in installed), key=lambda bin_dir: int(bin_dir.parent.name))


class Postgres:
    """PostgreSQL's programs, run as the OS user postgres, on the directories the settings name.

    The entrypoint switches user itself (subprocess's user=) rather than through `runuser`:
    runuser stays behind as the server's parent and, on SIGTERM, kills it outright two seconds
    later, which would turn every pod stop into a crash and the next start into a recovery.
    """

    def __init__(self, settings: Settings, bin_dir: Path):
        self.settings = settings
        self.bin_dir = bin_dir
        self.account = pwd.getpwnam(OS_USER)
        # The password only ever reaches the server as a SCRAM verifier; keep it out of the
        # environment of every program started from here.
        self.child_env = {name: value for name, value in os.environ.items() if name != "POSTGRES_PASSWORD"}

    def prepare(self) -> None:
        self._own_dir(self.settings.socket_dir, 0o755)  # anyone may connect; the server decides who gets in
        if self.initialised():
            self._own_dir(self.settings.data_dir, 0o700)

    def initialised(self) -> bool:
        return (self.settings.data_dir / "PG_VERSION").is_file()

    def initialise(self) -> None:
        """Create the cluster, role, database and tables in a scratch directory, then move it into place.

        The move is the last step, so a first start that is interrupted (a pod deleted while it
        initialises) leaves no half-made database behind: the next start begins again.
        """
        s = self.settings
        if s.password is None:
            raise ConfigError("POSTGRES_PASSWORD must be set to create the database")
        if s.data_dir.exists() and any(s.data_dir.iterdir()):
            raise ConfigError(f"PGDATA {s.data_dir} is not empty but holds no database; refusing to touch it")
        scratch = s.data_dir.with_name(s.data_dir.name + ".initialising")
        shutil.rmtree(scratch, ignore_errors=True)
        self._own_dir(scratch, 0o700)
        log(f"creating the database cluster in {s.data_dir}")
        self._run_as_postgres(
            [
                str(self.bin_dir / "initdb"),
                f"--pgdata={scratch}",
                f"--username={OS_USER}",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-instructions",
            ]
        )
        with open(scratch / "pg_hba.conf", "a") as access_rules:
            access_rules.write("\n# Any address, with the role's password (added by the entrypoint).\n")
            access_rules.write(HOST_ACCESS_RULE)

        # On the unix socket only: nothing can connect over the network to a half-made database.
        server = self._start_server(scratch, listen_addresses="")
        try:
            self._wait_accepting(server)
            self._create_role_and_database()
            schema.apply(s.local_conninfo(s.user, s.database))
        finally:
            self._stop_server(server)
        if (scratch / "postmaster.pid").exists():
            raise RuntimeError("the initialising server did not shut down cleanly")
        scratch.rename(s.data_dir)  # replaces an empty PGDATA directory, if there is one
        log(f"created role {s.user} and database {s.database} with the platform's tables")

    def serve(self) -> int:
        """Run the server until it exits or SIGTERM arrives; the server's exit code."""
        s = self.settings
        listen_addresses = ",".join(dict.fromkeys([s.listen_address, LOOPBACK]))
        server = self._start_server(s.data_dir, listen_addresses)
        try:
            return server.wait()
        except Stop as stop:
            # PostgreSQL's own SIGTERM is a smart shutdown, which waits for every session to
            # end; a pod being stopped wants the fast one (SIGINT).
            log(f"{stop}: fast shutdown")
            return self._stop_server(server)

    def _create_role_and_database(self) -> None:
        s = self.settings
        with psycopg.connect(s.local_conninfo(OS_USER, "postgres"), autocommit=True) as connection:
            # Hashed here, as psql's \password does: the server never sees, nor logs, the password.
            verifier = connection.pgconn.encrypt_password(s.password.encode(), s.user.encode(), b"scram-sha-256")
            connection.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(s.user), sql.Literal(verifier.decode())
                )
            )
            connection.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(s.database), sql.Identifier(s.user))
            )

    def _start_server(self, data_dir: Path, listen_addresses: str) -> subprocess.Popen:
        s = self.settings
        command = [
            str(self.bin_dir / "postgres"),
            "-D", str(data_dir),
            "-p", str(s.port),
            "-k", str(s.socket_dir),
            "-c", f"listen_addresses={listen_addresses}",
        ]  # fmt: skip
        # PostgreSQL's log goes to stderr (the default), one line per message, with our own.
        return subprocess.Popen(
            command,
            user=self.account.pw_uid,
            group=self.account.pw_gid,
            extra_groups=[],
            env=self.child_env,
            preexec_fn=_die_with_parent,
        )

    def _wait_accepting(self, server: subprocess.Popen) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with {server.returncode} while starting")
            try:
                with psycopg.connect(self.settings.local_conninfo(OS_USER, "postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError as error:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not accept connections within {STARTUP_TIMEOUT_SECONDS}s") from error
                time.sleep(0.1)

    @staticmethod
    def _stop_server(server: subprocess.Popen) -> int:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(SHUTDOWN_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                log(f"the server did not stop within {SHUTDOWN_TIMEOUT_SECONDS}s; killing it")
                server.kill()
                server.wait()
        return server.returncode

    def _run_as_postgres(self, command: list[str]) -> None:
        subprocess.run(
            command,
            user=self.account.pw_uid,
            group=self.account.pw_gid,
            extra_groups=[],
            env=self.child_env,
            check=True,
            timeout=INITDB_TIMEOUT_SECONDS,
        )

    def _own_dir(self, path: Path, mode: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, self.account.pw_uid, self.account.pw_gid)
        path.chmod(mode)


def _die_with_parent() -> None:
    """Runs in the server's process before it execs: SIGQUIT (immediate shutdown) if we die.

    Should this entrypoint be killed outright, a server left running would hold the data
    directory, and the pod's next start could not use it. The kernel sends that signal, like
    our own SIGINT, with this process's rights over another user's process: CAP_KILL.
    """
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGQUIT)


def _raise_stop(signum: int, _frame) -> None:
    # Once is enough: a second signal must not interrupt the shutdown the first one started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Stop(signal.Signals(signum).name)


def main() -> int:
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    try:
        postgres = Postgres(Settings.from_env(), server_bin_dir())
        postgres.prepare()
        if not postgres.initialised():
            postgres.initialise()
        return postgres.serve()
    except ConfigError as error:
        log(f"error: {error}")
        return 2
    except Stop as stop:
        log(f"{stop} before the server started; stopped")
        return 0
    except (OSError, psycopg.Error, subprocess.SubprocessError, RuntimeError) as error:
        log(f"error: {error}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
