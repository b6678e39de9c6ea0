"""``/api/keys``, ``/api/audit`` and ``/api/tenants``.

A key with ``keys:admin`` manages the keys of its own tenant and can only grant scopes it
holds itself; a key with ``admin`` manages any tenant's keys (``?tenant=`` or the body's
``tenant``), reads the audit log and manages tenants. Another tenant's key answers 404,
exactly like a missing one.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query

from unity.auth.deps import AuditDep, KeysDep, TenantsDep, require
from unity.auth.principal import Principal, RateLimits
from unity.auth.schemas import (
    TENANT_PATTERN,
    ApiKeyCreated,
    ApiKeyOut,
    AuditEntryOut,
    KeyCreate,
    KeyUpdate,
    Outcome,
    RotateRequest,
    TenantCreate,
    TenantOut,
    UsageOut,
)
from unity.core.pagination import Page, PageDep
from unity.core.params import IsoDatetime
from unity.errors import problem_responses

__all__ = ["audit_router", "keys_router", "routers", "tenants_router"]

keys_router = APIRouter(
    prefix="/api/keys", tags=["keys"], responses=problem_responses(400, 401, 403, 422, 429)
)
audit_router = APIRouter(
    prefix="/api/audit", tags=["audit"], responses=problem_responses(400, 401, 403, 422, 429)
)
tenants_router = APIRouter(
    prefix="/api/tenants", tags=["tenants"], responses=problem_responses(400, 401, 403, 422, 429)
)

KeysAdmin = Annotated[Principal, require("keys:admin")]
Admin = Annotated[Principal, require("admin")]
AnyKey = Annotated[Principal, require()]
KeyIdPath = Annotated[uuid.UUID, Path(description="The key's id.")]
TenantQuery = Annotated[
    str | None,
    Query(
        pattern=TENANT_PATTERN,
        max_length=64,
        description="Act on another tenant's keys (admin keys only); default: the caller's.",
    ),
]


@keys_router.post(
    "",
    status_code=201,
    summary="Create an API key",
    responses=problem_responses(404),
)
async def create_key(body: KeyCreate, principal: KeysAdmin, keys: KeysDep) -> ApiKeyCreated:
    """Returns the secret (``key``) this once: only its SHA-256 is stored. The new key may
    only carry scopes the caller holds (403 otherwise)."""
    key, secret = await keys.create(
        tenant_id=principal.tenant_for(body.tenant),
        name=body.name,
        scopes=body.scopes,
        description=body.description,
        expires_at=body.expires_at,
        expires_in=body.lifetime,
        limits=RateLimits(
            per_minute=body.rate_limit_per_minute,
            per_hour=body.rate_limit_per_hour,
            per_day=body.rate_limit_per_day,
        ),
        created_by=principal,
    )
    return ApiKeyCreated(**key.model_dump(), key=secret)


@keys_router.get("", summary="List API keys")
async def list_keys(
    principal: KeysAdmin,
    keys: KeysDep,
    page: PageDep,
    tenant: TenantQuery = None,
    include_revoked: Annotated[bool, Query(description="Also list revoked keys.")] = False,
) -> Page[ApiKeyOut]:
    """The tenant's keys, newest first. Secrets are never shown again."""
    items, total = await keys.list(
        principal.tenant_for(tenant),
        skip=page.skip,
        limit=page.limit,
        include_revoked=include_revoked,
    )
    return Page(items=items, total=total, skip=page.skip, limit=page.limit)


@keys_router.get("/me", summary="The calling key")
async def current_key(principal: AnyKey, keys: KeysDep) -> ApiKeyOut:
    """The key that makes this request: its tenant, scopes and limits. Needs no scope."""
    return await keys.get(principal.key_id, principal.tenant_id)


@keys_router.get("/{key_id:uuid}", summary="Get an API key", responses=problem_responses(404))
async def get_key(
    key_id: KeyIdPath, principal: KeysAdmin, keys: KeysDep, tenant: TenantQuery = None
) -> ApiKeyOut:
    """One key of the tenant."""
    return await keys.get(key_id, principal.tenant_for(tenant))


@keys_router.patch(
    "/{key_id:uuid}", summary="Update an API key", responses=problem_responses(404, 409)
)
async def update_key(
    key_id: KeyIdPath,
    body: KeyUpdate,
    principal: KeysAdmin,
    keys: KeysDep,
    tenant: TenantQuery = None,
) -> ApiKeyOut:
    """Change name, description, scopes or rate limits; fields left out keep their value.
    New limits and scopes apply within seconds."""
    return await keys.update(key_id, principal.tenant_for(tenant), body, actor=principal)


@keys_router.post(
    "/{key_id:uuid}/rotate", summary="Rotate an API key", responses=problem_responses(404, 409)
)
async def rotate_key(
    key_id: KeyIdPath,
    principal: KeysAdmin,
    keys: KeysDep,
    body: RotateRequest | None = None,
    tenant: TenantQuery = None,
) -> ApiKeyCreated:
    """A new secret (returned this once); the old one keeps working for
    ``grace_period_s`` seconds (default 24 h), so clients can switch without downtime."""
    grace = (body or RotateRequest()).grace_period_s
    key, secret = await keys.rotate(
        key_id, principal.tenant_for(tenant), grace_s=grace, actor=principal
    )
    return ApiKeyCreated(**key.model_dump(), key=secret)


@keys_router.post(
    "/{key_id:uuid}/revoke", summary="Revoke an API key", responses=problem_responses(404)
)
async def revoke_key(
    key_id: KeyIdPath, principal: KeysAdmin, keys: KeysDep, tenant: TenantQuery = None
) -> ApiKeyOut:
    """The key is refused from now on (401 "revoked"). Revoking twice changes nothing."""
    return await keys.revoke(key_id, principal.tenant_for(tenant), actor=principal)


@keys_router.delete(
    "/{key_id:uuid}", summary="Revoke an API key (alias)", responses=problem_responses(404)
)
async def delete_key(
    key_id: KeyIdPath, principal: KeysAdmin, keys: KeysDep, tenant: TenantQuery = None
) -> ApiKeyOut:
    """Same as ``POST /api/keys/{key_id}/revoke``: the key is kept, revoked, for its history."""
    return await keys.revoke(key_id, principal.tenant_for(tenant), actor=principal)


@keys_router.get(
    "/{key_id:uuid}/usage", summary="Usage of an API key", responses=problem_responses(404)
)
async def key_usage(
    key_id: KeyIdPath,
    principal: KeysAdmin,
    keys: KeysDep,
    tenant: TenantQuery = None,
    days: Annotated[int, Query(ge=1, le=366, description="Days of daily counts.")] = 30,
) -> UsageOut:
    """Requests per UTC day and status class, and the last 100 requests (method, path,
    status, duration)."""
    return await keys.usage(key_id, principal.tenant_for(tenant), days=days)


@audit_router.get("", summary="Audit log")
async def audit_log(
    _: Admin,
    audit: AuditDep,
    page: PageDep,
    tenant: Annotated[str | None, Query(pattern=TENANT_PATTERN, max_length=64)] = None,
    key_id: Annotated[uuid.UUID | None, Query()] = None,
    method: Annotated[str | None, Query(pattern=r"^(?i:POST|PUT|PATCH|DELETE)$")] = None,
    status: Annotated[int | None, Query(ge=100, le=599)] = None,
    outcome: Annotated[Outcome | None, Query()] = None,
    since: Annotated[IsoDatetime | None, Query(description="ISO 8601, inclusive.")] = None,
    until: Annotated[IsoDatetime | None, Query(description="ISO 8601, exclusive.")] = None,
) -> Page[AuditEntryOut]:
    """Every write through the API, newest first: key, tenant, method, route template,
    path, resource id, status and outcome. All tenants unless ``tenant`` is given."""
    items, total = await audit.list(
        tenant_id=tenant,
        key_id=key_id,
        method=method,
        status=status,
        outcome=outcome,
        since=since,
        until=until,
        skip=page.skip,
        limit=page.limit,
    )
    return Page(items=items, total=total, skip=page.skip, limit=page.limit)


@tenants_router.get("", summary="List tenants")
async def list_tenants(_: Admin, tenants: TenantsDep, page: PageDep) -> Page[TenantOut]:
    """Every tenant, by id."""
    items, total = await tenants.list(skip=page.skip, limit=page.limit)
    return Page(items=items, total=total, skip=page.skip, limit=page.limit)


@tenants_router.post(
    "", status_code=201, summary="Create a tenant", responses=problem_responses(409)
)
async def create_tenant(body: TenantCreate, _: Admin, tenants: TenantsDep) -> TenantOut:
    """A new tenant; give it keys with ``POST /api/keys`` and ``"tenant": "<id>"``."""
    return await tenants.create(tenant_id=body.id, name=body.name)


@tenants_router.get("/{tenant_id}", summary="Get a tenant", responses=problem_responses(404))
async def get_tenant(
    tenant_id: Annotated[str, Path(pattern=TENANT_PATTERN, max_length=64)],
    _: Admin,
    tenants: TenantsDep,
) -> TenantOut:
    """One tenant."""
    return await tenants.get(tenant_id)


routers = (keys_router, audit_router, tenants_router)
