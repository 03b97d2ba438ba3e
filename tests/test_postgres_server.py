"""The throwaway PostgreSQL server (tests/postgres_server.py) and its fixtures, which the archive's tests stand on."""

from __future__ import annotations

import psycopg
import pytest

from tests.postgres_server import PostgresServer

# Names of the databases that earlier tests of this file were given: a later one must get a new, empty one.
_seen_databases: list[str] = []


def test_databases_answer_and_have_unaccent(postgres_server: PostgresServer, postgres_url: str) -> None:
    with psycopg.connect(postgres_server.url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("archive_test",)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS unaccent")
        assert conn.execute("SELECT unaccent('preço')").fetchone() == ("preco",)


@pytest.mark.parametrize("outage", ["stop", "kill"])
def test_start_after_an_outage_keeps_port_and_data(
    postgres_server: PostgresServer, postgres_url: str, outage: str
) -> None:
    port = postgres_server.port
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (note text)")
        conn.execute("INSERT INTO kept VALUES ('still here')")
    getattr(postgres_server, outage)()
    try:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(postgres_url, connect_timeout=2)
    finally:
        postgres_server.start()
    assert postgres_server.port == port
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT note FROM kept").fetchall() == [("still here",)]


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_a_distinct_empty_database(postgres_server: PostgresServer, postgres_url: str, run: int) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        name = conn.execute("SELECT current_database()").fetchone()[0]
        tables = conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        assert tables.fetchall() == []
        assert conn.execute("SELECT extname FROM pg_extension").fetchall() == [("plpgsql",)]
        # Left behind on purpose: the next run must not see it.
        conn.execute("CREATE TABLE left_behind (n int)")
        existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
    assert name not in _seen_databases
    assert not existing & set(_seen_databases), "an earlier test's database was not dropped"
    _seen_databases.append(name)
