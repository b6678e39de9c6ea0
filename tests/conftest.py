"""Suite-wide fixtures: private PostgreSQL and Redis, SQLite files, settings."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.services import PostgresServer, RedisServer
from unity.core.db import Database
from unity.core.migrations import upgrade


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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.external_service)])
async def database(request: pytest.FixtureRequest) -> AsyncIterator[Database]:
    """A migrated database on each backend (SQLite file, private PostgreSQL)."""
    url = request.getfixturevalue("postgres_url" if request.param == "postgres" else "sqlite_url")
    db = Database(url)
    await upgrade(db)
    yield db
    await db.dispose()


@pytest.fixture
async def sqlite_database(sqlite_url: str) -> AsyncIterator[Database]:
    """A migrated SQLite database, for tests whose subject is not the SQL (or that lock the file)."""
    db = Database(sqlite_url)
    await upgrade(db)
    yield db
    await db.dispose()
