"""Migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection

from unity.core.db import Database
from unity.core.migrations import current_revision, head_revision, upgrade
from unity.core.models import metadata


def _diff(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), metadata))


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.external_service)]
)
async def test_upgrade_matches_models_and_is_idempotent(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("postgres_url" if backend == "postgres" else "sqlite_url")
    database = Database(url)
    try:
        assert await current_revision(database) is None
        await upgrade(database)
        await upgrade(database)
        assert await current_revision(database) == head_revision()
        async with database.engine.connect() as conn:
            diff = await conn.run_sync(_diff)
            if backend == "sqlite":
                # the GIN index on labels exists only on PostgreSQL
                assert [d[1].name for d in diff] == ["ix_series_labels"]  # type: ignore[index]
                assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
                assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
                assert (await conn.execute(text("PRAGMA synchronous"))).scalar() == 1  # NORMAL
            else:
                assert diff == []
    finally:
        await database.dispose()
