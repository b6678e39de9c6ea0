"""Authenticating a WebSocket: ``?token=KEY`` or a first ``{"action": "auth", "token": KEY}``.

Failures close the socket with application codes mirroring HTTP: 4401 (no or bad key)
and 4403 (the key lacks the scope or the tenant). Browsers cannot set headers on a
WebSocket, hence the query parameter and the first-message form.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from unity.auth.principal import Forbidden, Principal, Unauthorized

CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
#: How long a client may take to send its auth message.
AUTH_TIMEOUT_S = 10.0

Authenticate = Callable[[str], Awaitable[Principal]]


async def authenticate_websocket(
    websocket: WebSocket, authenticate: Authenticate, scope: str
) -> Principal | None:
    """Accept ``websocket`` and return its principal, or close it (4401/4403) and return None."""
    await websocket.accept()
    token = websocket.query_params.get("token") or _bearer(websocket)
    if token is None:
        try:
            raw = await asyncio.wait_for(websocket.receive_text(), AUTH_TIMEOUT_S)
        except (TimeoutError, WebSocketDisconnect):
            await _close(websocket, CLOSE_UNAUTHORIZED, "authentication required")
            return None
        token = _token_from_message(raw)
        if token is None:
            await _close(
                websocket,
                CLOSE_UNAUTHORIZED,
                'send {"action": "auth", "token": "<key>"} first, or connect with ?token=',
            )
            return None
    try:
        principal = await authenticate(token)
    except Unauthorized as exc:
        await _close(websocket, CLOSE_UNAUTHORIZED, exc.detail)
        return None
    if not principal.has(scope):
        await _close(websocket, CLOSE_FORBIDDEN, f"this key lacks the {scope} scope")
        return None
    return principal


def tenant_of(websocket: WebSocket, principal: Principal) -> str | None:
    """The tenant whose events the client receives (None: closed for asking another's)."""
    try:
        return principal.tenant_for(websocket.query_params.get("tenant"))
    except Forbidden:
        return None


async def close_forbidden(websocket: WebSocket, reason: str) -> None:
    """Close with 4403."""
    await _close(websocket, CLOSE_FORBIDDEN, reason)


def _bearer(websocket: WebSocket) -> str | None:
    header = websocket.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return websocket.headers.get("x-api-key") or None


def _token_from_message(raw: str) -> str | None:
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(message, dict) and message.get("action") == "auth":
        token = message.get("token")
        return token if isinstance(token, str) and token else None
    return None


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    # The reason rides in the close frame (max 123 bytes) and in a last error message.
    try:
        await websocket.send_text(orjson.dumps({"type": "error", "detail": reason}).decode())
        await websocket.close(code=code, reason=reason[:120])
    except (WebSocketDisconnect, RuntimeError):
        pass
