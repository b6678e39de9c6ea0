"""Components on a real SQLite file (and PostgreSQL where parametrized) with test plugins."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.collection.plugins import make_registry
from unity.components import Components, build_components, close_components
from unity.config import Settings


def make_settings(tmp_path: Path, database_url: str | None = None, **extra: object) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        autoenable_plugins=[],
        writer_flush_interval_s=0.02,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.external_service)])
async def components(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Components]:
    """Unity's components without a scheduler, on SQLite and on PostgreSQL."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    built = await build_components(
        make_settings(tmp_path, url), registry=make_registry(), with_scheduler=False
    )
    yield built
    await close_components(built)
