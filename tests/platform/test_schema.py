"""schema.sql creates and seeds mlops_prod, and running it again changes nothing."""

from mlops_platform import schema

COUNTS = "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM models), (SELECT count(*) FROM predictions)"


def test_psql_seeds_an_empty_database_once(postgres):
    postgres.create_database("schema_by_psql")
    for _ in range(2):
        postgres.psql("-f", str(schema.SCHEMA_FILE), dbname="schema_by_psql")
        assert postgres.query(COUNTS, dbname="schema_by_psql") == [(40, 5, 400)]
    owners = postgres.query(
        "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
        dbname="schema_by_psql",
    )
    assert owners == [("models", "mlops"), ("predictions", "mlops"), ("users", "mlops")]


def test_apply_seeds_the_same_rows_with_spread_timestamps(postgres):
    postgres.create_database("schema_by_apply")
    schema.apply(postgres.conninfo("schema_by_apply"))
    schema.apply(postgres.conninfo("schema_by_apply"))
    assert postgres.query(COUNTS, dbname="schema_by_apply") == [(40, 5, 400)]
    [(oldest_days, newest_hours, versions)] = postgres.query(
        "SELECT extract(epoch FROM now() - min(created_at)) / 86400,"
        "       extract(epoch FROM now() - max(created_at)) / 3600,"
        "       array_agg(DISTINCT model_version) FROM predictions",
        dbname="schema_by_apply",
    )
    assert 6 < oldest_days < 8 and newest_hours < 1
    assert versions == ["2.1.0"]
    assert postgres.query("SELECT version FROM models WHERE status = 'production'", dbname="schema_by_apply") == [
        ("2.1.0",)
    ]
