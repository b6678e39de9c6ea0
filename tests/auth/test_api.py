"""``/api/keys``, ``/api/audit`` and ``/api/tenants`` as a client sees them, on a small app that
mounts the auth routers and the audit middleware over real services and a SQLite file."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI

from tests.auth.conftest import AuthServices, Events
from tests.fakes import FakeClock
from unity.auth.api import routers
from unity.auth.audit import AuditMiddleware, AuditService
from unity.auth.deps import install_key_security, require
from unity.auth.principal import Principal
from unity.auth.ratelimit import RateLimiter, RateLimitMiddleware
from unity.auth.service import KeyService, TenantService
from unity.core.db import Database
from unity.errors import install_error_handlers

PROBLEM = "application/problem+json"


def make_app(services: AuthServices, limiter: RateLimiter | None = None) -> FastAPI:
    """The auth routers, the audit middleware (inside the rate limiter, when one is given)
    and two stand-in write routes."""
    app = FastAPI()
    install_error_handlers(app)
    install_key_security(app)
    for router in routers:
        app.include_router(router)
    things = APIRouter(prefix="/api/things")

    @things.post("/{thing_id}/enable")
    async def enable(
        thing_id: str, _: Annotated[Principal, require("plugins:write")]
    ) -> dict[str, str]:
        return {"id": thing_id}

    @things.post("/{thing_id}/explode")
    async def explode(thing_id: str, _: Annotated[Principal, require()]) -> None:
        raise RuntimeError(f"{thing_id} exploded")

    app.include_router(things)
    app.add_middleware(AuditMiddleware)
    if limiter is not None:
        app.add_middleware(
            RateLimitMiddleware, limiter=limiter, authenticate=services.keys.authenticate
        )
    app.state.components = services
    return app


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@dataclass
class Api:
    client: httpx.AsyncClient
    services: AuthServices
    clock: FakeClock
    events: Events
    admin: str

    async def make_key(
        self, *scopes: str, tenant: str | None = None, as_: str | None = None, **extra: Any
    ) -> tuple[str, str]:
        """Create a key through the API; returns ``(id, secret)``."""
        body: dict[str, Any] = {"name": "k", "scopes": list(scopes), **extra}
        if tenant is not None:
            body["tenant"] = tenant
        response = await self.client.post("/api/keys", json=body, headers=auth(as_ or self.admin))
        assert response.status_code == 201, response.text
        return response.json()["id"], response.json()["key"]

    async def audit_rows(self, **params: Any) -> list[dict[str, Any]]:
        response = await self.client.get(
            "/api/audit", params={"limit": 100, **params}, headers=auth(self.admin)
        )
        assert response.status_code == 200, response.text
        return list(response.json()["items"])


@pytest.fixture
async def api(sqlite_database: Database, tmp_path: Path) -> AsyncIterator[Api]:
    clock = FakeClock()
    events = Events()
    services = AuthServices(
        keys=KeyService(
            database=sqlite_database, clock=clock, publish=events.publish, flush_interval_s=3600
        ),
        tenants=TenantService(database=sqlite_database, clock=clock),
        audit=AuditService(database=sqlite_database, clock=clock, flush_interval_s=3600),
    )
    admin = await services.keys.ensure_admin_key(tmp_path)
    assert admin is not None
    await services.tenants.create(tenant_id="team-a", name="Team A")
    await services.tenants.create(tenant_id="team-b", name="Team B")
    transport = httpx.ASGITransport(app=make_app(services), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://unity.test") as client:
        yield Api(client, services, clock, events, admin)
    await services.keys.stop()
    await services.audit.stop()


async def test_create_returns_the_secret_once(api: Api) -> None:
    response = await api.client.post(
        "/api/keys",
        json={
            "name": "grafana",
            "scopes": ["metrics:read"],
            "description": "dashboards",
            "expires_in": "30d",
            "rate_limit_per_minute": 120,
        },
        headers=auth(api.admin),
    )
    assert response.status_code == 201
    created = response.json()
    assert created["key"].startswith(created["prefix"])
    assert created["scopes"] == ["metrics:read"]
    assert created["tenant_id"] == "default"
    assert created["expires_at"] == "2026-01-31T00:00:00Z"
    assert created["rate_limit_per_minute"] == 120
    assert created["status"] == "active"

    me = await api.client.get("/api/keys/me", headers=auth(created["key"]))
    assert me.status_code == 200
    assert me.json()["id"] == created["id"]
    again = await api.client.get(f"/api/keys/{created['id']}", headers=auth(api.admin))
    listed = await api.client.get("/api/keys", headers=auth(api.admin))
    for body in (me.json(), again.json(), *listed.json()["items"]):
        assert "key" not in body
        assert created["key"] not in str(body)


async def test_requests_without_a_valid_key_are_401_problems(api: Api) -> None:
    for headers, detail in [
        ({}, "missing API key"),
        ({"Authorization": "Bearer nonsense"}, "invalid API key"),
        ({"X-API-Key": "unity_" + "a" * 49}, "invalid API key"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "missing API key"),
    ]:
        response = await api.client.get("/api/keys", headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["detail"].startswith(detail)


async def test_the_x_api_key_header_works_like_bearer(api: Api) -> None:
    response = await api.client.get("/api/keys", headers={"X-API-Key": api.admin})
    assert response.status_code == 200


async def test_a_key_without_the_scope_gets_403_naming_it(api: Api) -> None:
    _, reader = await api.make_key("metrics:read")
    response = await api.client.get("/api/keys", headers=auth(reader))
    assert response.status_code == 403
    assert response.headers["content-type"] == PROBLEM
    assert "keys:admin" in response.json()["detail"]
    assert (await api.client.get("/api/audit", headers=auth(reader))).status_code == 403
    assert (await api.client.get("/api/tenants", headers=auth(reader))).status_code == 403


async def test_a_key_admin_cannot_grant_more_than_it_holds(api: Api) -> None:
    _, manager = await api.make_key("keys:admin", "metrics:read")
    for scopes in (["admin"], ["metrics:read", "runs:approve"]):
        response = await api.client.post(
            "/api/keys", json={"name": "x", "scopes": scopes}, headers=auth(manager)
        )
        assert response.status_code == 403, scopes
        assert response.json()["missing_scopes"] == [s for s in scopes if s != "metrics:read"]
    child_id, _ = await api.make_key("metrics:read", as_=manager)
    escalate = await api.client.patch(
        f"/api/keys/{child_id}", json={"scopes": ["plugins:install"]}, headers=auth(manager)
    )
    assert escalate.status_code == 403
    # the admin key itself is out of the manager's reach: taking over its secret is escalation
    admin_id = (await api.client.get("/api/keys/me", headers=auth(api.admin))).json()["id"]
    for method, path in [("POST", "rotate"), ("POST", "revoke"), ("DELETE", "")]:
        url = f"/api/keys/{admin_id}/{path}".rstrip("/")
        assert (await api.client.request(method, url, headers=auth(manager))).status_code == 403


async def test_a_tenants_key_admin_sees_only_its_tenant(api: Api) -> None:
    _, manager_a = await api.make_key("keys:admin", "metrics:read", tenant="team-a")
    b_id, b_secret = await api.make_key("metrics:read", tenant="team-b")
    a_id, _ = await api.make_key("metrics:read", as_=manager_a)

    listed = (await api.client.get("/api/keys", headers=auth(manager_a))).json()
    assert {k["tenant_id"] for k in listed["items"]} == {"team-a"}
    assert b_id not in {k["id"] for k in listed["items"]}
    assert a_id in {k["id"] for k in listed["items"]}
    for method, path, body in [
        ("GET", "", None),
        ("PATCH", "", {"name": "mine"}),
        ("POST", "/rotate", {}),
        ("POST", "/revoke", None),
        ("DELETE", "", None),
        ("GET", "/usage", None),
    ]:
        response = await api.client.request(
            method, f"/api/keys/{b_id}{path}", json=body, headers=auth(manager_a)
        )
        assert response.status_code == 404, (method, path)
    other = await api.client.get("/api/keys", params={"tenant": "team-b"}, headers=auth(manager_a))
    assert other.status_code == 403
    create_there = await api.client.post(
        "/api/keys",
        json={"name": "x", "scopes": ["metrics:read"], "tenant": "team-b"},
        headers=auth(manager_a),
    )
    assert create_there.status_code == 403
    # team-b's key still works: nothing above touched it
    assert (await api.client.get("/api/keys/me", headers=auth(b_secret))).status_code == 200


async def test_an_admin_acts_on_any_tenant_with_the_tenant_parameter(api: Api) -> None:
    b_id, _ = await api.make_key("metrics:read", tenant="team-b")
    own = await api.client.get(f"/api/keys/{b_id}", headers=auth(api.admin))
    assert own.status_code == 404  # the admin's own tenant is default
    there = await api.client.get(
        f"/api/keys/{b_id}", params={"tenant": "team-b"}, headers=auth(api.admin)
    )
    assert there.status_code == 200
    listed = await api.client.get("/api/keys", params={"tenant": "team-b"}, headers=auth(api.admin))
    assert [k["id"] for k in listed.json()["items"]] == [b_id]
    unknown = await api.client.post(
        "/api/keys",
        json={"name": "x", "scopes": ["admin"], "tenant": "nowhere"},
        headers=auth(api.admin),
    )
    assert unknown.status_code == 404


async def test_rotation_returns_a_new_secret_and_the_old_one_has_a_grace_period(
    api: Api,
) -> None:
    key_id, old = await api.make_key("metrics:read")
    response = await api.client.post(
        f"/api/keys/{key_id}/rotate", json={"grace_period_s": 600}, headers=auth(api.admin)
    )
    assert response.status_code == 200
    new = response.json()["key"]
    assert new != old
    assert response.json()["previous_valid_until"] == "2026-01-01T00:10:00Z"
    for secret in (old, new):
        assert (await api.client.get("/api/keys/me", headers=auth(secret))).status_code == 200
    api.clock.advance(600)
    expired = await api.client.get("/api/keys/me", headers=auth(old))
    assert expired.status_code == 401
    assert "rotat" in expired.json()["detail"]
    assert (await api.client.get("/api/keys/me", headers=auth(new))).status_code == 200
    default = await api.client.post(f"/api/keys/{key_id}/rotate", headers=auth(api.admin))
    assert default.json()["previous_valid_until"] == "2026-01-02T00:10:00Z"  # 24 h


async def test_revoked_keys_are_refused_at_once_with_their_own_message(api: Api) -> None:
    key_id, secret = await api.make_key("metrics:read")
    assert (await api.client.get("/api/keys/me", headers=auth(secret))).status_code == 200
    revoked = await api.client.post(f"/api/keys/{key_id}/revoke", headers=auth(api.admin))
    assert revoked.json()["status"] == "revoked"
    response = await api.client.get("/api/keys/me", headers=auth(secret))
    assert response.status_code == 401
    assert response.json()["detail"] == "API key was revoked at 2026-01-01T00:00:00Z"
    hidden = await api.client.get("/api/keys", headers=auth(api.admin))
    assert key_id not in {k["id"] for k in hidden.json()["items"]}
    shown = await api.client.get(
        "/api/keys", params={"include_revoked": True}, headers=auth(api.admin)
    )
    assert key_id in {k["id"] for k in shown.json()["items"]}


async def test_update_changes_only_the_given_fields(api: Api) -> None:
    key_id, secret = await api.make_key("metrics:read", rate_limit_per_hour=100)
    response = await api.client.patch(
        f"/api/keys/{key_id}",
        json={"name": "renamed", "rate_limit_per_hour": None, "rate_limit_per_day": 1000},
        headers=auth(api.admin),
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["name"], body["rate_limit_per_hour"], body["rate_limit_per_day"]) == (
        "renamed",
        None,
        1000,
    )
    assert body["scopes"] == ["metrics:read"]
    principal = await api.services.keys.authenticate(secret)
    assert (principal.limits.per_hour, principal.limits.per_day) == (None, 1000)


async def test_usage_reports_days_status_classes_and_recent_requests(api: Api) -> None:
    key_id, secret = await api.make_key("metrics:read")
    principal = await api.services.keys.authenticate(secret)
    for status in (200, 200, 404):
        api.services.keys.record_request(principal, "GET", "/api/plugins", status, 4.2)
    response = await api.client.get(f"/api/keys/{key_id}/usage", headers=auth(api.admin))
    assert response.status_code == 200
    usage = response.json()
    assert usage["days"] == [{"day": "2026-01-01", "total": 3, "by_status": {"2xx": 2, "4xx": 1}}]
    assert usage["recent"][0] == {
        "ts": "2026-01-01T00:00:00Z",
        "method": "GET",
        "path": "/api/plugins",
        "status": 404,
        "duration_ms": 4.2,
    }


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x"},
        {"name": "x", "scopes": []},
        {"name": "x", "scopes": ["root"]},
        {"name": "", "scopes": ["admin"]},
        {"name": "x", "scopes": ["admin"], "expires_in": "soon"},
        {
            "name": "x",
            "scopes": ["admin"],
            "expires_in": "1d",
            "expires_at": "2027-01-01T00:00:00Z",
        },
        {"name": "x", "scopes": ["admin"], "expires_at": "2027-01-01T00:00:00"},
        {"name": "x", "scopes": ["admin"], "rate_limit_per_minute": 0},
        {"name": "x", "scopes": ["admin"], "tenant": "Not A Slug"},
        {"name": "x", "scopes": ["admin"], "secret": "mine"},
    ],
)
async def test_bad_create_bodies_are_422(api: Api, body: dict[str, Any]) -> None:
    response = await api.client.post("/api/keys", json=body, headers=auth(api.admin))
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM


async def test_an_expiry_in_the_past_is_refused(api: Api) -> None:
    response = await api.client.post(
        "/api/keys",
        json={"name": "x", "scopes": ["admin"], "expires_at": "2025-12-31T00:00:00Z"},
        headers=auth(api.admin),
    )
    assert response.status_code == 422
    assert "past" in response.json()["detail"]


async def test_unknown_and_malformed_key_ids_are_404(api: Api) -> None:
    missing = await api.client.get(f"/api/keys/{uuid.uuid4()}", headers=auth(api.admin))
    assert missing.status_code == 404
    malformed = await api.client.get("/api/keys/nope", headers=auth(api.admin))
    assert malformed.status_code == 404  # no resource has that address
    assert malformed.headers["content-type"] == PROBLEM


async def test_events_are_published_for_api_changes_without_secrets(api: Api) -> None:
    key_id, secret = await api.make_key("metrics:read")
    rotated = await api.client.post(f"/api/keys/{key_id}/rotate", headers=auth(api.admin))
    await api.client.post(f"/api/keys/{key_id}/revoke", headers=auth(api.admin))
    assert api.events.types[-3:] == ["api_key.created", "api_key.rotated", "api_key.revoked"]
    published = repr(api.events.published)
    assert secret not in published
    assert rotated.json()["key"] not in published


async def test_every_write_lands_in_the_audit_log(api: Api) -> None:
    admin_id = (await api.client.get("/api/keys/me", headers=auth(api.admin))).json()["id"]
    key_id, writer = await api.make_key("plugins:write", tenant="team-a")
    await api.client.post("/api/things/cpu/enable", headers=auth(writer))
    _, reader = await api.make_key("metrics:read")
    await api.client.post("/api/things/disk/enable", headers=auth(reader))  # 403
    await api.client.post("/api/things/net/enable")  # 401, nobody
    await api.client.post(
        f"/api/keys/{key_id}/revoke", params={"tenant": "team-a"}, headers=auth(api.admin)
    )
    await api.client.get("/api/keys", headers=auth(api.admin))  # a read: not audited

    rows = await api.audit_rows()
    summary = [
        (r["method"], r["route"], r["resource_id"], r["status"], r["outcome"], r["key_id"])
        for r in reversed(rows)
    ]
    reader_id = summary[2][2]
    assert summary == [
        ("POST", "/api/keys", key_id, 201, "success", admin_id),
        ("POST", "/api/things/{thing_id}/enable", "cpu", 200, "success", key_id),
        ("POST", "/api/keys", reader_id, 201, "success", admin_id),
        ("POST", "/api/things/{thing_id}/enable", "disk", 403, "failure", reader_id),
        ("POST", "/api/things/{thing_id}/enable", "net", 401, "failure", None),
        ("POST", "/api/keys/{key_id}/revoke", key_id, 200, "success", admin_id),
    ]
    writes = {r["resource_id"]: r for r in rows}
    assert writes["cpu"]["tenant_id"] == "team-a"
    assert writes["cpu"]["path"] == "/api/things/cpu/enable"
    assert writes["net"]["tenant_id"] is None
    assert all(r["ts"] == "2026-01-01T00:00:00Z" for r in rows)


async def test_a_write_that_crashes_is_audited_as_a_failure(api: Api) -> None:
    response = await api.client.post("/api/things/cpu/explode", headers=auth(api.admin))
    assert response.status_code == 500
    [row] = await api.audit_rows()
    assert (row["route"], row["status"], row["outcome"]) == (
        "/api/things/{thing_id}/explode",
        500,
        "failure",
    )


async def test_the_audit_log_filters_and_pages(api: Api) -> None:
    key_id, writer = await api.make_key("plugins:write", tenant="team-a")
    for thing in ("a", "b", "c"):
        await api.client.post(f"/api/things/{thing}/enable", headers=auth(writer))
        api.clock.advance(60)
    await api.client.post("/api/things/d/enable")

    assert [r["resource_id"] for r in await api.audit_rows(key_id=key_id)] == ["c", "b", "a"]
    assert len(await api.audit_rows(tenant="team-a")) == 3
    assert len(await api.audit_rows(status=401)) == 1
    assert len(await api.audit_rows(outcome="failure")) == 1
    assert len(await api.audit_rows(method="post")) == 5
    window = await api.audit_rows(since="2026-01-01T00:01:00Z", until="2026-01-01T00:02:00Z")
    assert [r["resource_id"] for r in window] == ["b"]
    page = await api.client.get(
        "/api/audit", params={"skip": 1, "limit": 2}, headers=auth(api.admin)
    )
    assert page.json()["total"] == 5
    assert [r["resource_id"] for r in page.json()["items"]] == ["c", "b"]
    bad = await api.client.get("/api/audit", params={"since": "yesterday"}, headers=auth(api.admin))
    assert bad.status_code == 422


async def test_admins_manage_tenants(api: Api) -> None:
    created = await api.client.post(
        "/api/tenants", json={"id": "team-c", "name": "Team C"}, headers=auth(api.admin)
    )
    assert created.status_code == 201
    assert created.json()["id"] == "team-c"
    duplicate = await api.client.post(
        "/api/tenants", json={"id": "team-c", "name": "Again"}, headers=auth(api.admin)
    )
    assert duplicate.status_code == 409
    listed = await api.client.get("/api/tenants", headers=auth(api.admin))
    assert [t["id"] for t in listed.json()["items"]] == ["default", "team-a", "team-b", "team-c"]
    assert (await api.client.get("/api/tenants/team-c", headers=auth(api.admin))).status_code == 200
    assert (await api.client.get("/api/tenants/nope", headers=auth(api.admin))).status_code == 404
    bad = await api.client.post(
        "/api/tenants", json={"id": "Team C!", "name": "x"}, headers=auth(api.admin)
    )
    assert bad.status_code == 422
    # a key created in the new tenant belongs to it
    _, secret = await api.make_key("metrics:read", tenant="team-c")
    me = await api.client.get("/api/keys/me", headers=auth(secret))
    assert me.json()["tenant_id"] == "team-c"


async def test_the_openapi_spec_declares_both_key_headers(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "unity_…",
        "description": "An API key: `Authorization: Bearer unity_…`.",
    }
    assert schemes["apiKey"]["name"] == "X-API-Key"
    assert {"bearer": []} in spec["paths"]["/api/keys"]["post"]["security"]


async def test_behind_the_rate_limiter_keys_are_limited_and_refusals_keep_their_reason(
    api: Api,
) -> None:
    key_id, secret = await api.make_key("plugins:write", rate_limit_per_minute=2)
    revoked_id, revoked = await api.make_key("plugins:write")
    await api.client.post(f"/api/keys/{revoked_id}/revoke", headers=auth(api.admin))
    limiter = RateLimiter()
    transport = httpx.ASGITransport(app=make_app(api.services, limiter))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://unity.test") as client:
            statuses = [
                (await client.post("/api/things/cpu/enable", headers=auth(secret))).status_code
                for _ in range(3)
            ]
            refused = await client.post("/api/things/cpu/enable", headers=auth(revoked))
    finally:
        await limiter.aclose()
    assert statuses == [200, 200, 429]
    assert refused.status_code == 401
    assert refused.json()["detail"].startswith("API key was revoked at")
    # the limiter turns floods away before the audit log sees them
    audited = await api.audit_rows(key_id=key_id)
    assert [r["status"] for r in audited] == [200, 200]
