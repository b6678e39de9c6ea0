"""Route dependencies: who is calling (``require``) and the auth services.

``require(*scopes)`` reads the key from ``Authorization: Bearer <key>`` or ``X-API-Key``,
authenticates it through ``app.state.components.keys``, stores the principal on
``request.state.principal`` (the audit and rate-limit middlewares read it there) and
checks that it holds every scope named::

    @router.post("/api/plugins/{plugin_id}/enable")
    async def enable(principal: Annotated[Principal, require("plugins:write")]) -> ...

Both headers are declared as OpenAPI security schemes, so ``/docs`` offers to send them.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from unity.auth.audit import AuditService
from unity.auth.principal import ALL_SCOPES, Forbidden, Principal, Unauthorized
from unity.auth.service import KeyService, TenantService

__all__ = ["AuditDep", "KeysDep", "Require", "TenantsDep", "require"]

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    bearerFormat="unity_…",
    description="An API key: `Authorization: Bearer unity_…`.",
)
_api_key = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="apiKey",
    description="An API key in the `X-API-Key` header.",
)


class Require:
    """The dependency behind :func:`require`; ``scopes`` says what the route needs.

    A class rather than a closure so that tooling (the route-walking test, docs) can read
    ``route.dependant`` and find which scopes each route requires.
    """

    def __init__(self, scopes: tuple[str, ...]) -> None:
        unknown = [s for s in scopes if s not in ALL_SCOPES]
        if unknown:
            raise ValueError(f"unknown scopes: {', '.join(unknown)}")
        self.scopes = scopes

    async def __call__(
        self,
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
        api_key: Annotated[str | None, Security(_api_key)],
    ) -> Principal:
        # The rate-limit middleware may have authenticated the key already: reuse its verdict.
        principal = getattr(request.state, "principal", None)
        refused = getattr(request.state, "auth_error", None)
        if isinstance(refused, Unauthorized) and not isinstance(principal, Principal):
            raise refused
        if not isinstance(principal, Principal):
            secret = bearer.credentials if bearer is not None else api_key
            secret = secret.strip() if secret else None
            keys: KeyService = request.app.state.components.keys
            principal = await keys.authenticate(secret)
            request.state.principal = principal
        missing = [s for s in self.scopes if not principal.has(s)]
        if missing:
            raise Forbidden(
                f"this API key lacks the scope {' and '.join(missing)}", missing_scopes=missing
            )
        return principal


def require(*scopes: str) -> Any:
    """A dependency yielding the calling key's :class:`Principal`, which must hold ``scopes``.

    No scopes: any valid key. 401 without a valid key, 403 naming the missing scope.
    """
    return Depends(Require(scopes))


def _keys(request: Request) -> KeyService:
    keys: KeyService = request.app.state.components.keys
    return keys


def _tenants(request: Request) -> TenantService:
    tenants: TenantService = request.app.state.components.tenants
    return tenants


def _audit(request: Request) -> AuditService:
    audit: AuditService = request.app.state.components.audit
    return audit


KeysDep = Annotated[KeyService, Depends(_keys)]
TenantsDep = Annotated[TenantService, Depends(_tenants)]
AuditDep = Annotated[AuditService, Depends(_audit)]
