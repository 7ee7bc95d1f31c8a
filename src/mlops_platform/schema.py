"""The platform's PostgreSQL schema and seed data, `schema.sql` beside this file."""

from __future__ import annotations

from pathlib import Path

import psycopg

SCHEMA_FILE = Path(__file__).with_name("schema.sql")


def apply(conninfo: str) -> None:
    """Create and seed what is missing in the database `conninfo` names (idempotent)."""
    # autocommit: the file brings its own BEGIN and COMMIT.
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(SCHEMA_FILE.read_text())
