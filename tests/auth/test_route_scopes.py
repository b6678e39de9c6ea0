"""Every route declares its scope: no key → 401, a key without the scope → 403, with it → in.

The routes come from the app itself (and the OpenAPI spec must list each of them), so a
route added later without a scope fails here.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from fastapi.routing import APIRoute
from websockets.exceptions import ConnectionClosed

from tests.api_client import app_client
from tests.live_server import LiveServer, live_server
from unity.auth.deps import Require
from unity.auth.principal import ALL_SCOPES
from unity.components import Components

OPEN = {"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
ANY_KEY = {"/api/keys/me"}  # needs a valid key, no particular scope
SAMPLE_PARAMS = {
    "plugin_id": "steady",
    "key_id": "00000000-0000-0000-0000-000000000000",
    "tenant_id": "default",
}


def scopes_of(route: APIRoute) -> set[str]:
    found: set[str] = set()
    stack = [route.dependant]
    while stack:
        dependant = stack.pop()
        if isinstance(dependant.call, Require):
            found.update(dependant.call.scopes)
        stack.extend(dependant.dependencies)
    return found


def api_routes(routes: list[Any]) -> list[APIRoute]:
    """Every APIRoute, looking inside included routers (FastAPI includes them lazily)."""
    out: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            out.append(route)
        elif hasattr(route, "original_router"):
            out += api_routes(route.original_router.routes)
    return out


def url_of(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: SAMPLE_PARAMS.get(m.group(1), "x"), path)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Components]]:
    async with app_client(tmp_path, role="api") as pair:
        yield pair


async def test_every_route_requires_its_scope(api: tuple[httpx.AsyncClient, Components]) -> None:
    client, c = api
    app = client._transport.app  # type: ignore[attr-defined]
    spec_paths = set((await client.get("/openapi.json")).json()["paths"])
    routes = api_routes(app.routes)
    assert routes
    checked = 0
    for route in routes:
        path = route.path_format  # without convertors, as the spec writes it
        assert path in spec_paths or not route.include_in_schema, path
        if path in OPEN:
            continue
        required = scopes_of(route)
        if path not in ANY_KEY:
            assert required, f"{path} declares no scope"
        _, lacking = await c.keys.create(
            tenant_id="default",
            name=f"lacks {route.name}",
            scopes=[s for s in ALL_SCOPES if s not in required and s != "admin"],
        )
        _, holding = await c.keys.create(
            tenant_id="default",
            name=f"holds {route.name}",
            scopes=sorted(required) or ["plugins:read"],
        )
        for method in sorted(route.methods - {"HEAD", "OPTIONS"}):
            url = url_of(path)
            body = {} if method in {"POST", "PUT", "PATCH"} else None
            anonymous = await client.request(method, url, json=body, headers={"authorization": ""})
            assert anonymous.status_code == 401, (method, route.path, anonymous.text)
            assert anonymous.headers["www-authenticate"].startswith("Bearer")
            if path not in ANY_KEY:
                weak = await client.request(
                    method, url, json=body, headers={"authorization": f"Bearer {lacking}"}
                )
                assert weak.status_code == 403, (method, route.path, weak.text)
                assert weak.json()["missing_scopes"]
            strong = await client.request(
                method, url, json=body, headers={"authorization": f"Bearer {holding}"}
            )
            assert strong.status_code not in (401, 403), (method, route.path, strong.text)
            checked += 1
    assert checked >= 20


async def test_distinct_401_messages(api: tuple[httpx.AsyncClient, Components]) -> None:
    client, c = api
    key, secret = await c.keys.create(
        tenant_id="default", name="soon revoked", scopes=["plugins:read"]
    )
    assert (
        await client.get("/api/plugins", headers={"authorization": f"Bearer {secret}"})
    ).status_code == 200
    await c.keys.revoke(key.id, "default")
    revoked = await client.get("/api/plugins", headers={"x-api-key": secret, "authorization": ""})
    assert revoked.status_code == 401
    assert revoked.json()["detail"].startswith("API key was revoked at")
    garbled = await client.get("/api/plugins", headers={"authorization": "Bearer unity_nonsense"})
    assert garbled.json()["detail"] == "invalid API key"
    missing = await client.get("/api/plugins", headers={"authorization": ""})
    assert missing.json()["detail"].startswith("missing API key")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[LiveServer]:
    async with live_server(tmp_path, ws_heartbeat_s=3600) as s:
        yield s


async def _close_code(url: str, first: str | None = None) -> int:
    async with websockets.connect(url) as ws:
        if first is not None:
            await ws.send(first)
        with pytest.raises(ConnectionClosed) as closed:
            await _drain(ws)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def _drain(ws: websockets.ClientConnection) -> None:
    while True:
        await ws.recv()


async def test_websocket_needs_a_key_with_metrics_read(server: LiveServer) -> None:
    c = server.components
    _, weak = await c.keys.create(tenant_id="default", name="no metrics", scopes=["plugins:read"])
    _, good = await c.keys.create(tenant_id="default", name="metrics", scopes=["metrics:read"])
    assert await _close_code(f"{server.ws}/ws/metrics", '{"action": "subscribe"}') == 4401
    assert await _close_code(f"{server.ws}/ws/metrics?token=unity_wrong") == 4401
    assert await _close_code(server.ws_url("/ws/metrics", key=weak)) == 4403
    assert await _close_code(server.ws_url("/ws/metrics", key=good, tenant="beta")) == 4403
    # the first-message form
    async with websockets.connect(f"{server.ws}/ws/metrics") as ws:
        await ws.send(f'{{"action": "auth", "token": "{good}"}}')
        await ws.send('{"action": "ping"}')
        assert '"pong"' in str(await ws.recv())
