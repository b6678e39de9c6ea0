"""Migration 0002: the auth tables, the ``default`` tenant from the start, and a clean downgrade."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from unity.core.db import Database
from unity.core.migrations import alembic_config, upgrade

AUTH_TABLES = {"tenants", "api_keys", "api_key_usage", "api_key_requests", "audit_log"}


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.external_service)]
)
async def test_default_tenant_exists_and_downgrade_removes_the_auth_tables(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("postgres_url" if backend == "postgres" else "sqlite_url")
    database = Database(url)
    try:
        await upgrade(database, "0002")
        async with database.engine.connect() as conn:
            assert await conn.run_sync(_tables) >= AUTH_TABLES
            tenants = (await conn.execute(text("SELECT id, name FROM tenants"))).all()
            assert [tuple(t) for t in tenants] == [("default", "Default")]

        def downgrade(sync_connection: Connection) -> None:
            config = alembic_config(database.url)
            config.attributes["connection"] = sync_connection
            command.downgrade(config, "0001")

        async with database.engine.begin() as conn:
            await conn.run_sync(downgrade)
        async with database.engine.connect() as conn:
            remaining = await conn.run_sync(_tables)
            assert not AUTH_TABLES & remaining
            assert "plugins" in remaining
    finally:
        await database.dispose()
