"""Apply Alembic migrations programmatically (``unity db upgrade`` and at start-up)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import SQLAlchemyError

from unity.core.db import Database
from unity.errors import DatabaseError


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at Unity's packaged migrations and ``url``."""
    config = Config()
    config.set_main_option("script_location", "unity:migrations")
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str | None:
    """The newest migration shipped with this version of Unity."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


async def current_revision(database: Database) -> str | None:
    """The migration the database is at (``None`` for an empty database)."""
    async with database.engine.connect() as conn:
        return await conn.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )


async def upgrade(database: Database, revision: str = "head") -> None:
    """Bring ``database`` to ``revision``, inside one connection of its own engine."""

    def _upgrade(sync_connection: object) -> None:
        config = alembic_config(database.url)
        config.attributes["connection"] = sync_connection
        command.upgrade(config, revision)

    try:
        async with database.engine.begin() as conn:
            await conn.run_sync(_upgrade)
    except (SQLAlchemyError, OSError) as exc:
        raise DatabaseError(f"cannot migrate the database: {exc}") from exc
