"""API keys and tenants: create, look up, rotate, revoke, bootstrap. No HTTP here.

Authentication is on the path of every request, so it is cheap: a secret that fails the
format check is refused without a lookup, and a good one is looked up once and then
served from an in-process cache for ``cache_ttl_s`` (at most 5 s). Concurrent requests
missing the cache for the same key share one lookup (single flight), so an expiring
entry under load costs one query, not one per request in flight. Revoking or changing
a key drops its cache entries in the process that made the change at once; other
processes (scale-out) notice within the TTL. Expiry and the end of a rotation's grace
period are checked on every call, cached or not.

Per-request bookkeeping (``last_used_at``, usage counters, recent requests) is batched by
:class:`unity.auth.usage.UsageRecorder`, never written per request.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from unity.auth.keys import SECRET_LENGTH, generate, hash_secret, looks_valid, same_hash
from unity.auth.models import ApiKey, Tenant
from unity.auth.principal import (
    ALL_SCOPES,
    DEFAULT_TENANT,
    Forbidden,
    Principal,
    RateLimits,
    Unauthorized,
)
from unity.auth.schemas import ApiKeyOut, KeyStatus, KeyUpdate, TenantOut, UsageOut
from unity.auth.usage import UsageRecorder
from unity.core.clock import Clock
from unity.core.db import Database
from unity.errors import (
    ConfigError,
    ConflictError,
    DatabaseError,
    NotFoundError,
    ValidationFailed,
)

__all__ = [
    "ADMIN_KEY_FILE",
    "MAX_CACHE_TTL_S",
    "KeyService",
    "Publisher",
    "TenantService",
    "check_grantable",
    "write_secret_file",
]

Publisher = Callable[[str, dict[str, Any]], Awaitable[None]]

ADMIN_KEY_FILE = "admin.key"
MAX_CACHE_TTL_S = 5.0

log = structlog.stdlib.get_logger("unity.auth")


def check_grantable(actor: Principal | None, scopes: Iterable[str]) -> None:
    """Raise :class:`Forbidden` unless ``actor`` holds every scope in ``scopes``.

    A key may only hand out (or manage keys with) rights it has itself, so ``keys:admin``
    cannot mint an ``admin`` key. ``actor=None`` is the local operator (CLI, bootstrap).
    """
    if actor is None:
        return
    missing = sorted({s for s in scopes if not actor.has(s)})
    if missing:
        raise Forbidden(
            f"this key cannot grant or manage scopes it does not hold: {', '.join(missing)}",
            missing_scopes=missing,
        )


def _normalize_scopes(scopes: Iterable[str]) -> builtins.list[str]:
    wanted = set(scopes)
    unknown = sorted(wanted.difference(ALL_SCOPES))
    if unknown:
        raise ValidationFailed(
            f"unknown scopes: {', '.join(unknown)}; valid: {', '.join(ALL_SCOPES)}"
        )
    if not wanted:
        raise ValidationFailed("a key needs at least one scope")
    return [s for s in ALL_SCOPES if s in wanted]


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def write_secret_file(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path`` readable by its owner only (mode 0600), atomically.

    The file is created with ``O_CREAT | O_EXCL`` and mode 0600 under a temporary name,
    so the secret is never readable by others, even for a moment, then renamed over
    ``path`` (replacing a stale file left by an earlier database).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # the umask may have removed owner bits
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(secret + "\n")
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except OSError as exc:
        raise ConfigError(f"cannot write the admin key to {path}: {exc.strerror or exc}") from exc


@dataclass(slots=True)
class _Cached:
    principal: Principal
    expires_at: datetime | None
    replaced: bool  # the secret is the one a rotation replaced
    valid_until: datetime | None  # end of the grace period when ``replaced``
    cached_at: float


def _key_status(row: ApiKey, now: datetime) -> KeyStatus:
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    return "active"


class KeyService:
    """API keys: create, list, update, rotate, revoke, authenticate, and their usage."""

    def __init__(
        self,
        *,
        database: Database,
        clock: Clock,
        publish: Publisher | None = None,
        cache_ttl_s: float = MAX_CACHE_TTL_S,
        cache_size: int = 10_000,
        flush_interval_s: float = 5.0,
    ) -> None:
        if not 0 <= cache_ttl_s <= MAX_CACHE_TTL_S:
            raise ValueError(f"cache_ttl_s must be between 0 and {MAX_CACHE_TTL_S}")
        if cache_size < 1:
            raise ValueError("cache_size must be >= 1")
        self._db = database
        self._clock = clock
        self.publish = publish
        self._ttl = cache_ttl_s
        self._cache_size = cache_size
        self._cache: dict[str, _Cached] = {}
        self._epoch = 0  # bumped whenever a key changes; see authenticate()
        # (digest, epoch) -> the lookup in flight; callers missing together await the same one.
        self._lookups: dict[tuple[str, int], asyncio.Task[_Cached]] = {}
        self._usage = UsageRecorder(
            database=database, clock=clock, flush_interval_s=flush_interval_s
        )

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start writing usage every ``flush_interval_s`` seconds."""
        await self._usage.start()

    async def stop(self) -> None:
        """Stop the flush loop, writing what is pending."""
        await self._usage.stop()

    # -- authentication ------------------------------------------------------------------

    async def authenticate(self, secret: str | None) -> Principal:
        """The key behind ``secret``, or :class:`Unauthorized` saying why not.

        Messages differ for a missing or malformed key, an unknown one, an expired one,
        a revoked one and a secret replaced by rotation whose grace period ended.
        """
        if not secret:
            raise Unauthorized(
                "missing API key: send it as 'Authorization: Bearer <key>' or 'X-API-Key'"
            )
        if len(secret) != SECRET_LENGTH:
            raise Unauthorized("invalid API key")
        digest = hash_secret(secret)
        entry = self._cache.get(digest)
        if entry is None or self._clock.monotonic() - entry.cached_at >= self._ttl:
            # Only a secret that passed this check is ever cached, and a cached digest is
            # that secret's: a hit needs no second look at its shape and checksum.
            if not looks_valid(secret):
                raise Unauthorized("invalid API key")
            entry = await self._lookup(digest)
        now = self._clock.now()
        if entry.expires_at is not None and now >= entry.expires_at:
            raise Unauthorized(f"API key expired at {_iso(entry.expires_at)}")
        if entry.replaced and (entry.valid_until is None or now >= entry.valid_until):
            ended = _iso(entry.valid_until) if entry.valid_until else "the rotation"
            raise Unauthorized(
                f"this secret was replaced by a rotation of the API key; it stopped at {ended}"
            )
        self._usage.touch(entry.principal.key_id, now)
        return entry.principal

    async def _lookup(self, digest: str) -> _Cached:
        """Load ``digest``'s key, sharing a load already in flight for it.

        A load started before a key changed (``_epoch`` moved) is not joined: its read may
        predate a revocation. The load runs as its own task, so a caller that is cancelled
        (a client that went away) neither cancels it for the others nor leaves it half done.
        """
        flight = (digest, self._epoch)
        task = self._lookups.get(flight)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load_and_remember(digest))
            self._lookups[flight] = task
            task.add_done_callback(lambda done: self._landed(flight, done))
        return await asyncio.shield(task)

    async def _load_and_remember(self, digest: str) -> _Cached:
        epoch = self._epoch
        entry = await self._load(digest)
        # A revocation or change made while the row was being read must not be
        # undone by caching what was read before it.
        if epoch == self._epoch:
            self._remember(digest, entry)
        return entry

    def _landed(self, flight: tuple[str, int], task: asyncio.Task[_Cached]) -> None:
        if self._lookups.get(flight) is task:
            del self._lookups[flight]
        if not task.cancelled():
            task.exception()  # retrieved: every caller may have gone before it ended

    async def _load(self, digest: str) -> _Cached:
        try:
            async with self._db.session() as session:
                row = await session.scalar(
                    select(ApiKey)
                    .where(or_(ApiKey.secret_hash == digest, ApiKey.previous_secret_hash == digest))
                    .limit(1)
                )
        except (SQLAlchemyError, OSError) as exc:
            raise DatabaseError(f"cannot look the API key up: {exc}") from exc
        if row is None:
            raise Unauthorized("unknown API key")
        if row.revoked_at is not None:
            raise Unauthorized(f"API key was revoked at {_iso(row.revoked_at)}")
        current = same_hash(digest, row.secret_hash)
        if not current and not same_hash(digest, row.previous_secret_hash):
            raise Unauthorized("unknown API key")
        return _Cached(
            principal=Principal(
                key_id=row.id,
                name=row.name,
                tenant_id=row.tenant_id,
                scopes=frozenset(row.scopes),
                limits=RateLimits(
                    per_minute=row.rate_limit_per_minute,
                    per_hour=row.rate_limit_per_hour,
                    per_day=row.rate_limit_per_day,
                ),
            ),
            expires_at=row.expires_at,
            replaced=not current,
            valid_until=None if current else row.previous_valid_until,
            cached_at=self._clock.monotonic(),
        )

    def _remember(self, digest: str, entry: _Cached) -> None:
        if self._ttl <= 0:
            return
        if len(self._cache) >= self._cache_size:
            self._cache.pop(next(iter(self._cache)))  # the oldest insertion
        self._cache.pop(digest, None)
        self._cache[digest] = entry

    def _forget(self, key_id: uuid.UUID) -> None:
        self._epoch += 1
        for digest in [d for d, e in self._cache.items() if e.principal.key_id == key_id]:
            del self._cache[digest]

    # -- usage ---------------------------------------------------------------------------

    def record_request(
        self, principal: Principal, method: str, path: str, status: int, duration_ms: float
    ) -> None:
        """Count one request made with ``principal``'s key. In memory only; never blocks."""
        self._usage.record(principal.key_id, method, path, status, duration_ms)

    async def flush(self) -> None:
        """Write pending usage now; :class:`DatabaseError` when the database cannot be written."""
        await self._usage.flush()

    async def usage(self, key_id: uuid.UUID, tenant_id: str | None, *, days: int = 30) -> UsageOut:
        """Requests per UTC day and status class over ``days`` days, and the last 100 requests."""
        await self.get(key_id, tenant_id)
        per_day, recent = await self._usage.read(key_id, days=days)
        return UsageOut(key_id=key_id, days=per_day, recent=recent)

    # -- management ----------------------------------------------------------------------

    async def create(
        self,
        *,
        tenant_id: str,
        name: str,
        scopes: Iterable[str],
        description: str | None = None,
        expires_at: datetime | None = None,
        expires_in: timedelta | None = None,
        limits: RateLimits = RateLimits(),  # noqa: B008 - frozen, so sharing it is safe
        created_by: Principal | None = None,
    ) -> tuple[ApiKeyOut, str]:
        """A new key and its secret (the only time the secret is available).

        ``expires_at`` or ``expires_in`` (from now) sets an expiry; neither: it never expires.
        Raises :class:`Forbidden` when ``created_by`` lacks a scope it tries to grant or acts
        on another tenant without ``admin``, :class:`NotFoundError` for an unknown tenant and
        :class:`ValidationFailed` for unknown scopes or an expiry in the past.
        """
        wanted = _normalize_scopes(scopes)
        check_grantable(created_by, wanted)
        if created_by is not None:
            created_by.tenant_for(tenant_id)
        now = self._clock.now()
        if expires_in is not None:
            if expires_at is not None:
                raise ValidationFailed("give expires_at or expires_in, not both")
            expires_at = now + expires_in
        if expires_at is not None and expires_at <= now:
            raise ValidationFailed(f"expires_at {_iso(expires_at)} is in the past")
        secret, prefix = generate()
        async with self._db.session() as session:
            if await session.get(Tenant, tenant_id) is None:
                raise NotFoundError(f"tenant {tenant_id} does not exist")
            row = ApiKey(
                tenant_id=tenant_id,
                name=name,
                description=description,
                prefix=prefix,
                secret_hash=hash_secret(secret),
                scopes=wanted,
                created_at=now,
                expires_at=expires_at,
                rate_limit_per_minute=limits.per_minute,
                rate_limit_per_hour=limits.per_hour,
                rate_limit_per_day=limits.per_day,
                created_by_key_id=created_by.key_id if created_by else None,
            )
            session.add(row)
            await session.flush()
            out = self._out(row, now)
        await self._announce("api_key.created", out)
        return out, secret

    async def list(
        self,
        tenant_id: str | None,
        *,
        skip: int = 0,
        limit: int = 10,
        include_revoked: bool = False,
    ) -> tuple[builtins.list[ApiKeyOut], int]:
        """Keys of ``tenant_id`` (all tenants for ``None``), newest first, and their total."""
        query = select(ApiKey)
        if tenant_id is not None:
            query = query.where(ApiKey.tenant_id == tenant_id)
        if not include_revoked:
            query = query.where(ApiKey.revoked_at.is_(None))
        now = self._clock.now()
        async with self._db.session() as session:
            total = await session.scalar(select(func.count()).select_from(query.subquery()))
            rows = await session.scalars(
                query.order_by(ApiKey.created_at.desc(), ApiKey.id).offset(skip).limit(limit)
            )
            return [self._out(r, now) for r in rows], int(total or 0)

    async def get(self, key_id: uuid.UUID, tenant_id: str | None) -> ApiKeyOut:
        """One key of ``tenant_id`` (any tenant for ``None``); :class:`NotFoundError` otherwise."""
        async with self._db.session() as session:
            return self._out(await self._row(session, key_id, tenant_id), self._clock.now())

    async def find(self, reference: str) -> ApiKeyOut:
        """A key by its id or its visible prefix, in any tenant (for the CLI).

        Raises :class:`NotFoundError` when nothing matches and :class:`ConflictError` when a
        prefix matches several keys.
        """
        try:
            return await self.get(uuid.UUID(reference), None)
        except ValueError:
            pass
        async with self._db.session() as session:
            rows = (await session.scalars(select(ApiKey).where(ApiKey.prefix == reference))).all()
            if not rows:
                raise NotFoundError(f"no API key with id or prefix {reference}")
            if len(rows) > 1:
                raise ConflictError(f"several keys start with {reference}; use the key's id")
            return self._out(rows[0], self._clock.now())

    async def update(
        self,
        key_id: uuid.UUID,
        tenant_id: str | None,
        changes: KeyUpdate,
        *,
        actor: Principal | None = None,
    ) -> ApiKeyOut:
        """Change name, description, scopes or rate limits (fields set in ``changes`` only).

        Raises :class:`Forbidden` when ``actor`` lacks a scope the key has or would get,
        :class:`ConflictError` for a revoked key.
        """
        fields = changes.model_fields_set
        async with self._db.session() as session:
            row = await self._row(session, key_id, tenant_id)
            check_grantable(actor, row.scopes)
            if row.revoked_at is not None:
                raise ConflictError(f"API key {key_id} was revoked; it cannot change")
            if "scopes" in fields and changes.scopes is not None:
                wanted = _normalize_scopes(changes.scopes)
                check_grantable(actor, wanted)
                row.scopes = wanted
            if "name" in fields and changes.name is not None:
                row.name = changes.name
            if "description" in fields:
                row.description = changes.description
            for window in ("minute", "hour", "day"):
                column = f"rate_limit_per_{window}"
                if column in fields:
                    setattr(row, column, getattr(changes, column))
            await session.flush()
            out = self._out(row, self._clock.now())
        self._forget(key_id)
        return out

    async def rotate(
        self,
        key_id: uuid.UUID,
        tenant_id: str | None,
        *,
        grace_s: int = 86_400,
        actor: Principal | None = None,
    ) -> tuple[ApiKeyOut, str]:
        """Give the key a new secret; the current one keeps working for ``grace_s`` seconds.

        Only the secret being replaced gets a grace period: one replaced by an earlier
        rotation stops at once. Raises :class:`ConflictError` for a revoked or expired key.
        """
        if grace_s < 0:
            raise ValidationFailed("grace_s must be >= 0")
        now = self._clock.now()
        secret, prefix = generate()
        async with self._db.session() as session:
            row = await self._row(session, key_id, tenant_id)
            check_grantable(actor, row.scopes)
            if row.revoked_at is not None:
                raise ConflictError(f"API key {key_id} was revoked; create a new one")
            if row.expires_at is not None and row.expires_at <= now:
                raise ConflictError(f"API key {key_id} expired at {_iso(row.expires_at)}")
            previous_prefix = row.prefix
            if grace_s > 0:
                row.previous_secret_hash = row.secret_hash
                row.previous_valid_until = now + timedelta(seconds=grace_s)
            else:
                row.previous_secret_hash = None
                row.previous_valid_until = None
            row.secret_hash = hash_secret(secret)
            row.prefix = prefix
            await session.flush()
            out = self._out(row, now)
        self._forget(key_id)
        await self._announce("api_key.rotated", out, previous_prefix=previous_prefix)
        return out, secret

    async def revoke(
        self, key_id: uuid.UUID, tenant_id: str | None, *, actor: Principal | None = None
    ) -> ApiKeyOut:
        """Revoke the key: refused from now on in this process, within the cache TTL elsewhere.

        Revoking a revoked key changes nothing and publishes nothing.
        """
        now = self._clock.now()
        async with self._db.session() as session:
            row = await self._row(session, key_id, tenant_id)
            check_grantable(actor, row.scopes)
            already = row.revoked_at is not None
            if not already:
                row.revoked_at = now
                row.previous_secret_hash = None
                row.previous_valid_until = None
                await session.flush()
            out = self._out(row, now)
        self._forget(key_id)
        if not already:
            await self._announce("api_key.revoked", out)
        return out

    async def ensure_admin_key(self, data_dir: Path) -> str | None:
        """On a database without keys, create an ``admin`` key in tenant ``default``.

        Its secret is written to ``<data_dir>/admin.key`` (mode 0600) and returned so the
        caller can print it once. Returns ``None`` when keys exist. Two processes starting
        together create one key: the check runs under a write lock on the default tenant.
        Raises :class:`ConfigError` when the file cannot be written (nothing is created).
        """
        now = self._clock.now()
        secret, prefix = generate()
        async with self._db.session() as session:
            await session.execute(
                update(Tenant)
                .where(Tenant.id == DEFAULT_TENANT)
                .values(name=Tenant.name)
                .execution_options(synchronize_session=False)
            )
            if await session.scalar(select(ApiKey.id).limit(1)) is not None:
                return None
            row = ApiKey(
                tenant_id=DEFAULT_TENANT,
                name="admin",
                description="Created at first start.",
                prefix=prefix,
                secret_hash=hash_secret(secret),
                scopes=["admin"],
                created_at=now,
            )
            session.add(row)
            await session.flush()
            out = self._out(row, now)
            # Written before the commit: if the file cannot be written, no key exists whose
            # secret nobody knows, and the next start tries again.
            await asyncio.to_thread(write_secret_file, data_dir / ADMIN_KEY_FILE, secret)
        await self._announce("api_key.created", out)
        return secret

    # -- helpers -------------------------------------------------------------------------

    @staticmethod
    async def _row(session: AsyncSession, key_id: uuid.UUID, tenant_id: str | None) -> ApiKey:
        row = await session.get(ApiKey, key_id)
        # Another tenant's key answers exactly like a missing one: its existence is not leaked.
        if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
            raise NotFoundError(f"no API key {key_id}")
        return row

    def _out(self, row: ApiKey, now: datetime) -> ApiKeyOut:
        out = ApiKeyOut.model_validate(
            {
                **{name: getattr(row, name) for name in ApiKeyOut.model_fields if name != "status"},
                "status": _key_status(row, now),
            }
        )
        pending = self._usage.last_used(row.id)
        if pending is not None and (out.last_used_at is None or out.last_used_at < pending):
            out.last_used_at = pending  # not written yet, but true
        return out

    async def _announce(self, event_type: str, key: ApiKeyOut, **extra: Any) -> None:
        if self.publish is None:
            return
        data = {
            "key_id": str(key.id),
            "name": key.name,
            "prefix": key.prefix,
            "tenant_id": key.tenant_id,
            "scopes": builtins.list(key.scopes),
            **extra,
        }
        try:
            await self.publish(event_type, data)
        except Exception:  # the change is committed; a broken bus must not turn it into an error
            log.exception("publishing an API key event failed", event_type=event_type)


class TenantService:
    """Tenants: the groups keys and resources belong to."""

    def __init__(self, *, database: Database, clock: Clock) -> None:
        self._db = database
        self._clock = clock

    async def create(self, *, tenant_id: str, name: str) -> TenantOut:
        """A new tenant; :class:`ConflictError` when the id is taken."""
        async with self._db.session() as session:
            if await session.get(Tenant, tenant_id) is not None:
                raise ConflictError(f"tenant {tenant_id} already exists")
            row = Tenant(id=tenant_id, name=name, created_at=self._clock.now())
            session.add(row)
            await session.flush()
            return TenantOut.model_validate(row)

    async def list(self, *, skip: int = 0, limit: int = 10) -> tuple[builtins.list[TenantOut], int]:
        """Tenants by id, and how many there are."""
        async with self._db.session() as session:
            total = await session.scalar(select(func.count()).select_from(Tenant))
            rows = await session.scalars(
                select(Tenant).order_by(Tenant.id).offset(skip).limit(limit)
            )
            return [TenantOut.model_validate(r) for r in rows], int(total or 0)

    async def get(self, tenant_id: str) -> TenantOut:
        """One tenant; :class:`NotFoundError` when it does not exist."""
        async with self._db.session() as session:
            row = await session.get(Tenant, tenant_id)
            if row is None:
                raise NotFoundError(f"tenant {tenant_id} does not exist")
            return TenantOut.model_validate(row)
