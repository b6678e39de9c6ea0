"""KeyService against a real database: authentication, rotation, revocation, batched usage,
events, privilege checks and the first-start admin key."""

from __future__ import annotations

import asyncio
import os
import stat
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from tests.auth.conftest import Events, wait_until
from tests.fakes import FakeClock
from unity.auth.keys import generate, hash_secret
from unity.auth.models import ApiKey, ApiKeyRequest
from unity.auth.principal import Forbidden, Principal, RateLimits, Unauthorized
from unity.auth.schemas import KeyUpdate
from unity.auth.service import KeyService, TenantService
from unity.core.db import Database
from unity.core.events.catalog import CATALOG
from unity.errors import (
    ConfigError,
    ConflictError,
    DatabaseError,
    NotFoundError,
    ValidationFailed,
)

AUTH_TABLES = ("tenants", "api_keys", "api_key_usage", "api_key_requests", "audit_log")


async def _refusal(keys: KeyService, secret: str | None) -> str:
    with pytest.raises(Unauthorized) as caught:
        await keys.authenticate(secret)
    return caught.value.detail


def _database_file_bytes(path: str) -> bytes:
    return b"".join(Path(p).read_bytes() for p in (path, path + "-wal") if Path(p).exists())


async def _last_used_in_db(database: Database, key_id: uuid.UUID) -> object:
    async with database.session() as session:
        return await session.scalar(select(ApiKey.last_used_at).where(ApiKey.id == key_id))


async def test_a_new_key_authenticates_with_its_tenant_scopes_and_limits(
    keys: KeyService,
) -> None:
    key, secret = await keys.create(
        tenant_id="default",
        name="grafana",
        scopes=["metrics:read", "plugins:read"],
        limits=RateLimits(per_minute=60, per_day=5000),
    )
    principal = await keys.authenticate(secret)
    assert principal == Principal(
        key_id=key.id,
        name="grafana",
        tenant_id="default",
        scopes=frozenset({"metrics:read", "plugins:read"}),
        limits=RateLimits(per_minute=60, per_hour=None, per_day=5000),
    )
    assert key.prefix == secret[:14]
    assert key.status == "active"
    assert key.scopes == ["plugins:read", "metrics:read"]  # catalogue order, no duplicates


async def test_the_database_never_holds_a_secret(keys: KeyService, database: Database) -> None:
    key, first = await keys.create(tenant_id="default", name="ci", scopes=["runs:write"])
    keys.record_request(await keys.authenticate(first), "GET", "/api/runs", 200, 3.0)
    _, second = await keys.rotate(key.id, "default", grace_s=60)
    await keys.authenticate(second)
    await keys.flush()

    dump: list[str] = []
    async with database.session() as session:
        for table in AUTH_TABLES:
            dump.extend(repr(row) for row in await session.execute(text(f"SELECT * FROM {table}")))
    stored = "\n".join(dump)
    assert second[:14] in stored  # the visible prefix is all that is kept in clear
    for secret in (first, second):
        assert secret[14:] not in stored  # the hidden part of the secret
        assert hash_secret(secret) in stored
    if database.is_sqlite:  # and not in the file's bytes either, WAL included
        raw = _database_file_bytes(make_url(database.url).database or "")
        for secret in (first, second):
            assert secret[14:].encode() not in raw


async def test_each_refusal_says_why(keys: KeyService, clock: FakeClock) -> None:
    _, expiring = await keys.create(
        tenant_id="default", name="temp", scopes=["metrics:read"], expires_in=timedelta(hours=1)
    )
    revoked_key, revoked = await keys.create(tenant_id="default", name="old", scopes=["admin"])
    await keys.revoke(revoked_key.id, "default")
    unknown, _ = generate()

    messages = {
        "missing": await _refusal(keys, None),
        "garbled": await _refusal(keys, "unity_obviously-wrong"),
        "unknown": await _refusal(keys, unknown),
        "revoked": await _refusal(keys, revoked),
    }
    await keys.authenticate(expiring)
    clock.advance(3600)
    messages["expired"] = await _refusal(keys, expiring)

    assert messages["garbled"] == "invalid API key"
    assert messages["missing"].startswith("missing API key")
    assert messages["unknown"] == "unknown API key"
    assert messages["expired"] == "API key expired at 2026-01-01T01:00:00Z"
    assert messages["revoked"] == "API key was revoked at 2026-01-01T00:00:00Z"
    assert len(set(messages.values())) == len(messages)


async def test_a_rotated_secret_works_until_the_grace_period_ends(
    keys: KeyService, database: Database, clock: FakeClock
) -> None:
    key, old = await keys.create(tenant_id="default", name="ci", scopes=["runs:read"])
    await keys.authenticate(old)  # cached as the current secret
    rotated, new = await keys.rotate(key.id, "default", grace_s=3600)
    assert rotated.prefix == new[:14] != key.prefix
    assert rotated.previous_valid_until == clock.now() + timedelta(hours=1)

    other_process = KeyService(database=database, clock=clock)  # nothing cached
    for service in (keys, other_process):
        assert (await service.authenticate(old)).key_id == key.id
        assert (await service.authenticate(new)).key_id == key.id

    clock.advance(3600)
    for service in (keys, other_process):
        message = await _refusal(service, old)
        assert "rotat" in message
        assert "2026-01-01T01:00:00Z" in message
        assert (await service.authenticate(new)).key_id == key.id


async def test_rotation_without_grace_and_a_second_rotation_end_older_secrets_at_once(
    keys: KeyService,
) -> None:
    key, first = await keys.create(tenant_id="default", name="ci", scopes=["runs:read"])
    _, second = await keys.rotate(key.id, "default", grace_s=0)
    assert await _refusal(keys, first) == "unknown API key"  # no grace: forgotten at once
    _, third = await keys.rotate(key.id, "default", grace_s=600)
    await keys.authenticate(second)  # in its grace period
    await _refusal(keys, first)
    await keys.authenticate(third)


async def test_revocation_is_immediate_in_process_and_within_the_ttl_elsewhere(
    keys: KeyService, database: Database, clock: FakeClock
) -> None:
    key, secret = await keys.create(tenant_id="default", name="ci", scopes=["runs:read"])
    other_process = KeyService(database=database, clock=clock, cache_ttl_s=5)
    await keys.authenticate(secret)
    await other_process.authenticate(secret)

    await keys.revoke(key.id, "default")
    assert "revoked" in await _refusal(keys, secret)
    clock.advance(4.9)
    await other_process.authenticate(secret)  # still cached over there
    clock.advance(0.1)
    assert "revoked" in await _refusal(other_process, secret)


def test_the_cache_ttl_cannot_exceed_five_seconds(database: Database, clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="cache_ttl_s"):
        KeyService(database=database, clock=clock, cache_ttl_s=30)


async def test_changed_scopes_and_limits_apply_at_once(keys: KeyService) -> None:
    key, secret = await keys.create(
        tenant_id="default", name="ci", scopes=["runs:read"], limits=RateLimits(per_minute=10)
    )
    await keys.authenticate(secret)
    changes = KeyUpdate.model_validate(
        {"scopes": ["runs:read", "runs:write"], "rate_limit_per_minute": None, "name": "ci-2"}
    )
    updated = await keys.update(key.id, "default", changes)
    assert (updated.name, updated.rate_limit_per_minute) == ("ci-2", None)
    principal = await keys.authenticate(secret)
    assert principal.scopes == {"runs:read", "runs:write"}
    assert principal.limits == RateLimits()
    # fields left out keep their value
    kept = await keys.update(key.id, "default", KeyUpdate.model_validate({"description": "x"}))
    assert (kept.name, kept.scopes, kept.description) == ("ci-2", ["runs:read", "runs:write"], "x")


async def test_last_used_is_written_in_batches_not_per_request(
    keys: KeyService, database: Database, clock: FakeClock
) -> None:
    key, secret = await keys.create(tenant_id="default", name="ci", scopes=["runs:read"])
    for _ in range(50):
        principal = await keys.authenticate(secret)
        keys.record_request(principal, "GET", "/api/runs", 200, 1.5)
        clock.advance(1)
    assert await _last_used_in_db(database, key.id) is None
    # the API already shows it, from memory
    assert (await keys.get(key.id, "default")).last_used_at == clock.now() - timedelta(seconds=1)

    await keys.flush()
    assert await _last_used_in_db(database, key.id) == clock.now() - timedelta(seconds=1)


async def test_the_flush_loop_writes_usage_and_stop_writes_the_rest(
    database: Database, clock: FakeClock
) -> None:
    service = KeyService(database=database, clock=clock, flush_interval_s=0.02)
    key, secret = await service.create(tenant_id="default", name="ci", scopes=["runs:read"])
    await service.start()
    await service.authenticate(secret)

    async def written() -> bool:
        return await _last_used_in_db(database, key.id) is not None

    await wait_until(written, "the flush loop to write last_used_at")

    clock.advance(60)
    await service.authenticate(secret)
    await service.stop()
    assert await _last_used_in_db(database, key.id) == clock.now()


async def test_usage_counts_per_day_and_status_class_and_keeps_the_last_100(
    keys: KeyService, database: Database, clock: FakeClock
) -> None:
    key, secret = await keys.create(tenant_id="default", name="ci", scopes=["runs:read"])
    principal = await keys.authenticate(secret)
    for status in (200, 201, 204, 302, 404, 429, 500):
        keys.record_request(principal, "GET", f"/api/day1/{status}", status, 2.0)
    await keys.flush()  # counts add up across flushes
    keys.record_request(principal, "POST", "/api/day1/again", 200, 2.0)
    clock.advance(86_400)
    for i in range(130):
        keys.record_request(principal, "GET", f"/api/day2/{i}", 200, float(i))

    usage = await keys.usage(key.id, "default")
    assert [(d.day.isoformat(), d.total, d.by_status) for d in usage.days] == [
        ("2026-01-02", 130, {"2xx": 130}),
        ("2026-01-01", 8, {"2xx": 4, "3xx": 1, "4xx": 2, "5xx": 1}),
    ]
    assert len(usage.recent) == 100
    assert [r.path for r in usage.recent[:2]] == ["/api/day2/129", "/api/day2/128"]
    assert usage.recent[0].duration_ms == 129.0
    assert usage.recent[-1].path == "/api/day2/30"
    async with database.session() as session:
        stored = await session.scalar(select(func.count()).select_from(ApiKeyRequest))
    assert stored == 100


async def test_usage_of_another_tenants_key_is_not_found(
    keys: KeyService, tenants: TenantService
) -> None:
    await tenants.create(tenant_id="other", name="Other")
    key, _ = await keys.create(tenant_id="other", name="theirs", scopes=["runs:read"])
    with pytest.raises(NotFoundError):
        await keys.usage(key.id, "default")
    with pytest.raises(NotFoundError):
        await keys.get(key.id, "default")
    with pytest.raises(NotFoundError):
        await keys.revoke(key.id, "default")
    assert (await keys.get(key.id, None)).tenant_id == "other"


async def test_events_tell_who_the_key_is_but_never_the_secret(
    keys: KeyService, events: Events
) -> None:
    key, first = await keys.create(tenant_id="default", name="ci", scopes=["runs:read"])
    rotated, second = await keys.rotate(key.id, "default")
    await keys.revoke(key.id, "default")
    await keys.revoke(key.id, "default")  # already revoked: nothing new to announce

    assert events.types == ["api_key.created", "api_key.rotated", "api_key.revoked"]
    for event_type, data in events.published:
        CATALOG[event_type].validate(data)
        assert data["key_id"] == str(key.id)
        assert data["tenant_id"] == "default"
        assert first not in repr(data)
        assert second not in repr(data)
        assert first[14:] not in repr(data)
        assert second[14:] not in repr(data)
    assert events.published[1][1]["previous_prefix"] == key.prefix
    assert events.published[1][1]["prefix"] == rotated.prefix


async def test_a_key_cannot_grant_or_manage_rights_it_lacks(keys: KeyService) -> None:
    manager_key, manager_secret = await keys.create(
        tenant_id="default", name="manager", scopes=["keys:admin", "metrics:read"]
    )
    manager = await keys.authenticate(manager_secret)
    with pytest.raises(Forbidden, match="admin"):
        await keys.create(tenant_id="default", name="x", scopes=["admin"], created_by=manager)
    with pytest.raises(Forbidden, match="runs:write"):
        await keys.create(tenant_id="default", name="x", scopes=["runs:write"], created_by=manager)

    child, _ = await keys.create(
        tenant_id="default", name="reader", scopes=["metrics:read"], created_by=manager
    )
    assert child.created_by_key_id == manager_key.id
    with pytest.raises(Forbidden):
        await keys.update(
            child.id, "default", KeyUpdate(scopes=["metrics:read", "admin"]), actor=manager
        )

    admin_key, _ = await keys.create(tenant_id="default", name="root", scopes=["admin"])
    for attempt in (
        keys.rotate(admin_key.id, "default", actor=manager),
        keys.revoke(admin_key.id, "default", actor=manager),
        keys.update(admin_key.id, "default", KeyUpdate(name="mine"), actor=manager),
    ):
        with pytest.raises(Forbidden):
            await attempt
    assert (await keys.get(admin_key.id, "default")).status == "active"


async def test_a_tenant_key_cannot_create_keys_in_another_tenant(
    keys: KeyService, tenants: TenantService
) -> None:
    await tenants.create(tenant_id="other", name="Other")
    _, secret = await keys.create(tenant_id="default", name="m", scopes=["keys:admin"])
    manager = await keys.authenticate(secret)
    with pytest.raises(Forbidden):
        await keys.create(tenant_id="other", name="x", scopes=["keys:admin"], created_by=manager)


async def test_bad_creations_are_refused(keys: KeyService, clock: FakeClock) -> None:
    with pytest.raises(ValidationFailed, match="unknown scopes"):
        await keys.create(tenant_id="default", name="x", scopes=["root"])
    with pytest.raises(ValidationFailed, match="at least one"):
        await keys.create(tenant_id="default", name="x", scopes=[])
    with pytest.raises(ValidationFailed, match="past"):
        await keys.create(tenant_id="default", name="x", scopes=["admin"], expires_at=clock.now())
    with pytest.raises(NotFoundError, match="tenant nope"):
        await keys.create(tenant_id="nope", name="x", scopes=["admin"])


async def test_revoked_and_expired_keys_cannot_be_rotated_or_changed(
    keys: KeyService, clock: FakeClock
) -> None:
    revoked, _ = await keys.create(tenant_id="default", name="r", scopes=["runs:read"])
    await keys.revoke(revoked.id, "default")
    expired, _ = await keys.create(
        tenant_id="default", name="e", scopes=["runs:read"], expires_in=timedelta(seconds=10)
    )
    clock.advance(10)
    assert (await keys.get(expired.id, "default")).status == "expired"
    with pytest.raises(ConflictError, match="revoked"):
        await keys.rotate(revoked.id, "default")
    with pytest.raises(ConflictError, match="expired"):
        await keys.rotate(expired.id, "default")
    with pytest.raises(ConflictError, match="revoked"):
        await keys.update(revoked.id, "default", KeyUpdate(name="again"))


async def test_list_filters_by_tenant_pages_and_hides_revoked_keys(
    keys: KeyService, tenants: TenantService, clock: FakeClock
) -> None:
    await tenants.create(tenant_id="other", name="Other")
    made = []
    for i in range(5):
        key, _ = await keys.create(tenant_id="default", name=f"k{i}", scopes=["runs:read"])
        made.append(key)
        clock.advance(1)
    await keys.create(tenant_id="other", name="theirs", scopes=["runs:read"])
    await keys.revoke(made[0].id, "default")

    page, total = await keys.list("default", skip=0, limit=2)
    assert total == 4
    assert [k.name for k in page] == ["k4", "k3"]
    everything, total = await keys.list("default", limit=10, include_revoked=True)
    assert total == 5
    assert everything[-1].status == "revoked"
    _, all_tenants = await keys.list(None, limit=10)
    assert all_tenants == 5


async def test_find_resolves_an_id_or_a_prefix(keys: KeyService) -> None:
    key, _ = await keys.create(tenant_id="default", name="ci", scopes=["runs:read"])
    assert (await keys.find(key.prefix)).id == key.id
    assert (await keys.find(str(key.id))).id == key.id
    with pytest.raises(NotFoundError):
        await keys.find("unity_nothing1")


async def test_first_start_creates_one_admin_key_in_a_private_file(
    keys: KeyService, tmp_path: Path, events: Events
) -> None:
    data_dir = tmp_path / "data"
    secret = await keys.ensure_admin_key(data_dir)
    assert secret is not None
    path = data_dir / "admin.key"
    assert path.read_text() == secret + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    principal = await keys.authenticate(secret)
    assert principal.is_admin
    assert principal.tenant_id == "default"
    assert events.types == ["api_key.created"]

    assert await keys.ensure_admin_key(data_dir) is None
    assert path.read_text() == secret + "\n"
    _, total = await keys.list(None)
    assert total == 1
    assert [p.name for p in data_dir.iterdir()] == ["admin.key"]  # no temporary left behind


async def test_a_stale_admin_key_file_is_replaced_with_the_new_secret(
    keys: KeyService, tmp_path: Path
) -> None:
    path = tmp_path / "admin.key"
    path.write_text("unity_from_an_old_database\n")
    os.chmod(path, 0o644)
    secret = await keys.ensure_admin_key(tmp_path)
    assert secret is not None
    assert path.read_text() == secret + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_an_unusable_data_dir_creates_no_key(keys: KeyService, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("a file where the data folder should be")
    with pytest.raises(ConfigError, match="cannot write the admin key"):
        await keys.ensure_admin_key(not_a_dir)
    _, total = await keys.list(None)
    assert total == 0


async def test_two_processes_starting_together_create_one_admin_key(
    database: Database, clock: FakeClock, tmp_path: Path
) -> None:
    first = KeyService(database=database, clock=clock)
    second = KeyService(database=database, clock=clock)
    results = await asyncio.gather(
        first.ensure_admin_key(tmp_path / "a"), second.ensure_admin_key(tmp_path / "b")
    )
    assert sorted(r is None for r in results) == [False, True]
    _, total = await first.list(None)
    assert total == 1


async def test_usage_survives_a_failed_write_and_is_counted_once(
    keys: KeyService, database: Database
) -> None:
    key, secret = await keys.create(tenant_id="default", name="ci", scopes=["runs:read"])
    principal = await keys.authenticate(secret)
    keys.record_request(principal, "GET", "/api/runs", 200, 1.0)
    async with database.session() as session:
        await session.execute(text("ALTER TABLE api_key_usage RENAME TO api_key_usage_away"))
    with pytest.raises(DatabaseError):
        await keys.flush()
    assert await _last_used_in_db(database, key.id) is None  # the whole batch rolled back
    keys.record_request(principal, "GET", "/api/runs", 500, 1.0)
    async with database.session() as session:
        await session.execute(text("ALTER TABLE api_key_usage_away RENAME TO api_key_usage"))

    usage = await keys.usage(key.id, "default")
    assert [(d.total, d.by_status) for d in usage.days] == [(2, {"2xx": 1, "5xx": 1})]
    assert [r.status for r in usage.recent] == [500, 200]
    assert await _last_used_in_db(database, key.id) is not None
