"""Shared fixtures: a real redis-server started for this test session, and local fakes of Gemini and Evolution;
for the archive, a real PostgreSQL server and a fresh database per test.

The suite never touches a Redis or a PostgreSQL it did not start: it runs its own on free ports, durability off.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# The metrics files of this test process (metrics.py reads the variable when first imported): its own folder, never
# a running service's.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="wa-test-metrics-")

from config import Settings  # noqa: E402 (needs ROOT on sys.path)
from tests.fakes import FakeEvolution, FakeGemini, FakeOpenAI  # noqa: E402 (needs ROOT on sys.path)
from tests.postgres_server import PostgresServer  # noqa: E402 (needs ROOT on sys.path)
from tests.redis_server import RedisServer, free_port  # noqa: E402, F401 (re-exported for the tests)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    try:
        server = RedisServer(tmp_path_factory.mktemp("redis"))
    except RuntimeError as exc:
        pytest.exit(str(exc), returncode=2)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    if redis_server.process is None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def fake_gemini() -> Iterator[FakeGemini]:
    fake = FakeGemini()
    yield fake
    fake.close()


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    yield fake
    fake.close()


@pytest.fixture
def fake_evolution() -> Iterator[FakeEvolution]:
    fake = FakeEvolution()
    yield fake
    fake.close()


PACING_OFF = {
    "outbound_rate_evolution": 0.0,
    "outbound_rate_meta": 0.0,
    "outbound_rate_twilio": 0.0,
    "outbound_rate_mega": 0.0,
    "outbound_customer_gap_seconds": 0.0,
}


def make_settings(**overrides: object) -> Settings:
    """Settings for tests: fast retries, no background thread unless asked, everything else overridable."""
    values: dict[str, object] = {
        "debounce_seconds": 1.0,
        "debounce_max_wait_seconds": 10.0,
        "gemini_api_key": "test-gemini-key",
        "gemini_retry_initial_seconds": 0.05,
        "gemini_timeout_seconds": 5.0,
        "authentication_api_key": "test-evolution-key",
        "send_max_retries": 2,
        "send_timeout_seconds": 5.0,
        "delivery_retry_base_seconds": 0.2,
        "worker_enabled": False,
        "lease_seconds": 5.0,
        "log_level": "DEBUG",
        "webhook_auth": False,  # open, as most tests post without a token (closed by default: test_webhook.py)
        # /health shows this app's own counters (every app of the test process shares the metrics files).
        "metrics_enabled": False,
        # Not paced: tests send many replies from one number at once; tests/test_pacing.py turns it on.
        **PACING_OFF,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(
    redis_client: redis.Redis, redis_server: RedisServer, fake_gemini: FakeGemini, fake_evolution: FakeEvolution
) -> Settings:
    """Settings wired to this test's Redis and fakes."""
    return make_settings(redis_uri=redis_server.url, gemini_base_url=fake_gemini.url, evolution_api=fake_evolution.url)


@pytest.fixture
def make_app(settings: Settings) -> Iterator[Callable[..., Flask]]:
    """Builds apps from the factory with the test settings plus overrides, worker off; stops their watchers."""
    apps: list[Flask] = []

    def build(**overrides: object) -> Flask:
        from webhook import create_app  # imported late: it wires the whole service

        app = create_app(dataclasses.replace(settings, **overrides), start_worker=False)  # type: ignore[arg-type]
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["assistant"].watcher.stop()


@pytest.fixture
def app_settings() -> dict[str, object]:
    """What a test file changes in the test settings for `app` and `client`: it overrides this fixture (which may
    ask for other fixtures), not those two."""
    return {}


@pytest.fixture
def app(make_app: Callable[..., Flask], app_settings: dict[str, object]) -> Flask:
    """The whole service from the factory (worker thread off) on this test's Redis and fakes."""
    return make_app(**app_settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


# PostgreSQL for the archive (archive/): one throwaway server for the session, a fresh database for each test.
_postgres_databases = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """Its `url` is the database `archive_test`; started only for a session with a test that asks for it."""
    try:
        server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    except RuntimeError as exc:
        pytest.exit(str(exc), returncode=2)
    server.start()
    yield server
    server.close()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a database made empty for this test alone, dropped after it (its connections with it)."""
    if not postgres_server.started:  # an outage test that failed before it started the server again
        postgres_server.start()
    name = f"test_{next(_postgres_databases)}"
    url = postgres_server.create_database(name)
    yield url
    if postgres_server.started:  # else the next test's start finds it: the whole cluster is thrown away anyway
        postgres_server.drop_database(name)
