"""The api-server's database port: PostgreSQL through psycopg, one short-lived connection per use.

Short-lived on purpose. A connection authenticates once, when it opens, so a pool would go on
working after the password was rotated and hide a pod that has not picked the new one up. Every
use connects anew within CONNECT_TIMEOUT_SECONDS, and every statement is bounded by
statement_timeout, so a broken database answers an error quickly instead of hanging a request.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from prometheus_client import Counter
from psycopg.types.json import Jsonb

CONNECT_TIMEOUT_SECONDS = 3
STATEMENT_TIMEOUT_MS = 3000


@dataclass(frozen=True)
class DatabaseSettings:
    host: str
    port: int
    name: str
    user: str
    password: str = field(repr=False)  # never in a log line or a traceback


@dataclass(frozen=True)
class PredictionRow:
    user_id: int | None
    model_version: str
    input: dict[str, Any]
    output: str
    latency_ms: float


class DatabaseError(Exception):
    """The database could not be reached or refused the work; the message is one line."""


class Database:
    def __init__(self, settings: DatabaseSettings, errors: Counter):
        self.settings = settings
        self._errors = errors

    def check(self) -> None:
        with self._connection() as connection:
            connection.execute("SELECT 1")

    def record_predictions(self, rows: list[PredictionRow]) -> None:
        """Insert the rows in one transaction: all of them or none."""
        with self._connection() as connection, connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO predictions (user_id, model_version, input, output, latency_ms)"
                " VALUES (%s, %s, %s, %s, %s)",
                [(row.user_id, row.model_version, Jsonb(row.input), row.output, row.latency_ms) for row in rows],
            )

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        try:
            # The context manager commits on success and closes the connection either way.
            with psycopg.connect(
                host=self.settings.host,
                port=self.settings.port,
                dbname=self.settings.name,
                user=self.settings.user,
                password=self.settings.password,
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                application_name="api-server",
            ) as connection:
                yield connection
        except psycopg.Error as error:
            self._errors.inc()
            raise DatabaseError(" ".join(str(error).split()) or type(error).__name__) from error
