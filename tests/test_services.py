"""The suite's own servers come up on private ports and can be stopped and restarted."""

from __future__ import annotations

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.services import RedisServer


@pytest.mark.external_service
async def test_private_postgres_serves_a_fresh_database(postgres_url: str) -> None:
    conn = await asyncpg.connect(postgres_url.replace("+asyncpg", ""))
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname='public'") == 0
        assert "5432" not in postgres_url
    finally:
        await conn.close()


@pytest.mark.external_service
async def test_private_redis_restarts_empty(redis_server: RedisServer) -> None:
    client = aioredis.from_url(redis_server.url)
    try:
        await client.set("k", "v")
        redis_server.stop()
        with pytest.raises(aioredis.ConnectionError):
            await client.get("k")
        redis_server.start()
        assert await client.get("k") is None
    finally:
        await client.aclose()
