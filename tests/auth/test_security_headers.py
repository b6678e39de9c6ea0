"""Security header fields on every response, a docs-only relaxation of the CSP, and CORS."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse

from unity.auth.principal import Principal, RateLimits, Unauthorized
from unity.auth.ratelimit import RateLimiter, RateLimitMiddleware
from unity.core.http_security import install_http_security

GRAFANA = "https://grafana.example.net"
SHELL = (
    '<!doctype html><html><head><script type="module" src="/assets/app.js"></script></head></html>'
)
PRINCIPAL = Principal(
    key_id=uuid.uuid4(),
    name="browser",
    tenant_id="default",
    scopes=frozenset({"metrics:read"}),
    limits=RateLimits(per_minute=1),
)


async def authenticate(secret: str) -> Principal:
    if secret == "unity_browser":
        return PRINCIPAL
    raise Unauthorized("unknown API key")


def make_app(*, cors_origins: Sequence[str] = (), limiter: RateLimiter | None = None) -> FastAPI:
    app = FastAPI()

    @app.get("/", response_class=HTMLResponse)
    async def shell() -> str:
        return SHELL

    @app.get("/api/items")
    async def items() -> dict[str, list[int]]:
        return {"items": [1, 2]}

    @app.get("/api/export")
    async def export() -> JSONResponse:
        return JSONResponse({"rows": []}, headers={"Cache-Control": "private, max-age=60"})

    if limiter is not None:
        app.add_middleware(RateLimitMiddleware, limiter=limiter, authenticate=authenticate)
    install_http_security(app, cors_origins=cors_origins)
    return app


@asynccontextmanager
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://unity.test") as http:
        yield http


def directives(csp: str) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    for part in csp.split(";"):
        name, *values = part.split()
        parsed[name] = values
    return parsed


def assert_baseline(response: httpx.Response) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cross-origin-opener-policy"] == "same-origin"


async def test_the_dashboard_shell_gets_a_strict_content_security_policy() -> None:
    async with client(make_app()) as http:
        response = await http.get("/")

    assert_baseline(response)
    csp = directives(response.headers["content-security-policy"])
    assert csp["default-src"] == ["'self'"]
    assert csp["script-src"] == ["'self'"]
    assert csp["style-src"] == ["'self'"]
    assert csp["img-src"] == ["'self'", "data:"]
    assert csp["connect-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["base-uri"] == ["'none'"]
    assert csp["form-action"] == ["'self'"]
    assert "cache-control" not in response.headers


async def test_api_responses_are_not_stored_and_cannot_run_anything() -> None:
    async with client(make_app()) as http:
        ok = await http.get("/api/items")
        missing = await http.get("/api/nothing-here")

    for response in (ok, missing):
        assert_baseline(response)
        assert response.headers["cache-control"] == "no-store"
        assert directives(response.headers["content-security-policy"]) == {
            "default-src": ["'none'"],
            "frame-ancestors": ["'none'"],
        }
    assert missing.status_code == 404


async def test_a_header_the_route_sets_is_kept() -> None:
    async with client(make_app()) as http:
        response = await http.get("/api/export")

    assert response.headers["cache-control"] == "private, max-age=60"
    assert_baseline(response)


async def test_the_api_docs_may_load_exactly_what_their_pages_use() -> None:
    async with client(make_app()) as http:
        pages = {path: await http.get(path) for path in ("/docs", "/redoc")}

    for path, page in pages.items():
        assert page.status_code == 200, path
        assert_baseline(page)
        csp = directives(page.headers["content-security-policy"])
        assert csp["frame-ancestors"] == ["'none'"]
        html = page.text
        scripts = re.findall(r'<script[^>]*\bsrc="([^"]+)"', html)
        assert scripts, path
        for src in scripts:
            assert _origin(src) in csp["script-src"], (path, src)
        for href in re.findall(r'<link[^>]*\brel="stylesheet"[^>]*\bhref="([^"]+)"', html):
            assert _origin(href) in csp["style-src"], (path, href)
        for href in re.findall(r'<link[^>]*\bhref="([^"]+)"[^>]*\brel="stylesheet"', html):
            assert _origin(href) in csp["style-src"], (path, href)
        for icon in re.findall(r'<link rel="shortcut icon" href="([^"]+)"', html):
            assert _origin(icon) in csp["img-src"], (path, icon)
        if re.search(r"<script>\s*\S", html):
            assert "'unsafe-inline'" in csp["script-src"], path
        if "<style" in html:
            assert "'unsafe-inline'" in csp["style-src"], path
    # The relaxation stays on the docs pages.
    async with client(make_app()) as http:
        shell = await http.get("/")
    assert "'unsafe-inline'" not in shell.headers["content-security-policy"]


async def test_cors_is_off_by_default() -> None:
    async with client(make_app()) as http:
        preflight = await http.options(
            "/api/items",
            headers={
                "Origin": GRAFANA,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "x-api-key",
            },
        )
        simple = await http.get("/api/items", headers={"Origin": GRAFANA})

    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in simple.headers
    assert simple.status_code == 200


async def test_cors_answers_for_a_configured_origin_only() -> None:
    app = make_app(cors_origins=[GRAFANA])
    async with client(app) as http:
        allowed = await http.options(
            "/api/items",
            headers={
                "Origin": GRAFANA,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization, x-api-key",
            },
        )
        other = await http.options(
            "/api/items",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )

    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == GRAFANA
    allowed_headers = allowed.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed_headers
    assert "x-api-key" in allowed_headers
    assert "access-control-allow-credentials" not in allowed.headers
    assert_baseline(allowed)
    assert other.status_code == 400
    assert "access-control-allow-origin" not in other.headers


async def test_a_browser_script_can_read_rate_limit_fields_and_429s() -> None:
    limiter = RateLimiter()
    try:
        app = make_app(cors_origins=[GRAFANA], limiter=limiter)
        headers = {"Origin": GRAFANA, "Authorization": "Bearer unity_browser"}
        async with client(app) as http:
            ok = await http.get("/api/items", headers=headers)
            refused = await http.get("/api/items", headers=headers)
    finally:
        await limiter.aclose()

    assert ok.status_code == 200
    exposed = {h.strip().lower() for h in ok.headers["access-control-expose-headers"].split(",")}
    assert {"ratelimit", "ratelimit-policy", "x-ratelimit-remaining", "retry-after"} <= exposed
    assert refused.status_code == 429
    assert refused.headers["access-control-allow-origin"] == GRAFANA
    assert refused.headers["cache-control"] == "no-store"
    assert_baseline(refused)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else "'self'"
