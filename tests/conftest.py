"""Suite-wide fixtures: private PostgreSQL and Redis, SQLite files, settings."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import PostgresServer, RedisServer


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL cluster for the whole run."""
    server = PostgresServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the private cluster; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    postgres_server.psql(f"CREATE DATABASE {name}")
    yield postgres_server.url(name)
    postgres_server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def _redis_session() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_server(_redis_session: RedisServer) -> Iterator[RedisServer]:
    """The private redis-server, running and empty; a test may stop and start it."""
    _redis_session.start()
    _redis_session.flushall()
    yield _redis_session
    _redis_session.start()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the private, empty Redis."""
    return redis_server.url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite file in the test's temporary folder."""
    return f"sqlite+aiosqlite:///{tmp_path / 'unity.db'}"
