"""Route dependencies: who is calling (``require``) and the auth services.

``require(*scopes)`` yields the calling key's :class:`Principal`, which must hold every
scope named::

    @router.post("/api/plugins/{plugin_id}/enable")
    async def enable(principal: Annotated[Principal, require("plugins:write")]) -> ...

The key comes from ``Authorization: Bearer <key>`` or ``X-API-Key``. The rate-limit
middleware has usually authenticated it already and left the principal (or the
:class:`Unauthorized` refusal) in ``scope["state"]``; the dependency reuses that verdict and
authenticates through ``app.state.components.keys`` only when the middleware did not
(excluded paths, the key store failing). The principal stays in ``request.state.principal``,
where the usage and audit middlewares read it.

Each of these dependencies is one flat callable taking the request: FastAPI solves every
nested dependency on every request, and the two ``Security`` sub-dependencies the header
schemes used to be cost more than the check itself. The OpenAPI spec still declares both
headers as security schemes, and each operation that needs a key: an app declares them
with :func:`install_key_security`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Annotated, Any, ClassVar

from fastapi import Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.encoders import jsonable_encoder
from fastapi.openapi.constants import REF_PREFIX
from fastapi.openapi.utils import validation_error_definition, validation_error_response_definition
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.routing import BaseRoute

from unity.auth.audit import AuditService
from unity.auth.principal import ALL_SCOPES, Forbidden, Principal, Unauthorized
from unity.auth.ratelimit import AUTH_ERROR_STATE_KEY, PRINCIPAL_STATE_KEY, presented_key
from unity.auth.service import KeyService, TenantService

__all__ = [
    "AuditDep",
    "KeysDep",
    "Require",
    "RequireKey",
    "TenantsDep",
    "declare_security",
    "install_key_security",
    "require",
]

# The two ways to present a key, as OpenAPI security schemes (documentation only: the
# header is read by ``presented_key``, as the rate-limit middleware reads it).
_SCHEMES = (
    HTTPBearer(
        auto_error=False,
        scheme_name="bearer",
        bearerFormat="unity_…",
        description="An API key: `Authorization: Bearer unity_…`.",
    ),
    APIKeyHeader(
        name="X-API-Key",
        auto_error=False,
        scheme_name="apiKey",
        description="An API key in the `X-API-Key` header.",
    ),
)


class Require:
    """What a route needs: a valid API key holding every one of ``scopes``.

    The base of the auth dependencies (:class:`RequireKey` here, ``unity.deps.Access``):
    tooling (the route-walking test, :func:`declare_security`) finds the dependencies
    that are instances of this class in ``route.dependant`` and reads their scopes.
    """

    openapi_parameters: ClassVar[tuple[dict[str, Any], ...]] = ()
    """OpenAPI parameter objects a subclass reads from the request without declaring them
    to FastAPI; :func:`declare_security` adds them to the operations of its routes."""

    def __init__(self, scopes: tuple[str, ...]) -> None:
        unknown = [s for s in scopes if s not in ALL_SCOPES]
        if unknown:
            raise ValueError(f"unknown scopes: {', '.join(unknown)}")
        self.scopes = scopes

    async def authorize(self, request: Request) -> Principal:
        """The calling key's principal; :class:`Unauthorized` without a valid key,
        :class:`Forbidden` naming the scopes it lacks."""
        state: dict[str, Any] = request.scope.setdefault("state", {})
        principal = state.get(PRINCIPAL_STATE_KEY)
        if not isinstance(principal, Principal):
            # The rate-limit middleware may have rejected the key already: its verdict stands.
            refused = state.get(AUTH_ERROR_STATE_KEY)
            if isinstance(refused, Unauthorized):
                raise refused
            keys: KeyService = request.app.state.components.keys
            principal = await keys.authenticate(presented_key(request.headers))
            state[PRINCIPAL_STATE_KEY] = principal
        if self.scopes:
            missing = [s for s in self.scopes if not principal.has(s)]
            if missing:
                raise Forbidden(
                    f"this API key lacks the scope {' and '.join(missing)}",
                    missing_scopes=missing,
                )
        return principal


class RequireKey(Require):
    """The dependency behind :func:`require`: yields the calling key's :class:`Principal`."""

    async def __call__(self, request: Request) -> Principal:
        return await self.authorize(request)


def require(*scopes: str) -> Any:
    """A dependency yielding the calling key's :class:`Principal`, which must hold ``scopes``.

    No scopes: any valid key. 401 without a valid key, 403 naming the missing scope.
    """
    return Depends(RequireKey(scopes))


def _requirements(dependant: Dependant) -> Iterator[Require]:
    stack = [dependant]
    while stack:
        current = stack.pop()
        if isinstance(current.call, Require):
            yield current.call
        stack.extend(current.dependencies)


def declare_security(schema: dict[str, Any], routes: Iterable[BaseRoute]) -> dict[str, Any]:
    """``schema`` (FastAPI's OpenAPI document of ``routes``) with what :class:`Require` needs.

    Adds both key headers to ``components.securitySchemes`` and, on every operation whose
    route depends on a :class:`Require`, ``security`` accepting either of them (what FastAPI
    writes for ``Security`` dependencies) and the dependency's ``openapi_parameters``, with
    the 422 response FastAPI documents for an operation that takes parameters.
    """
    paths: dict[str, dict[str, Any]] = schema.get("paths", {})
    secured = validated = False
    for context in iter_route_contexts(list(routes)):
        route = context.original_route
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        requirements = list(_requirements(route.dependant))
        if not requirements:
            continue
        added = [p for r in requirements for p in r.openapi_parameters]
        operations = paths.get(context.path_format or route.path_format, {})
        for method in context.methods or route.methods or ():
            operation = operations.get(method.lower())
            if operation is None:
                continue
            operation["security"] = [{scheme.scheme_name: []} for scheme in _SCHEMES]
            secured = True
            if not added:
                continue
            parameters: list[dict[str, Any]] = operation.setdefault("parameters", [])
            for parameter in added:
                if not any(
                    p.get("name") == parameter["name"] and p.get("in") == parameter["in"]
                    for p in parameters
                ):
                    parameters.append(copy.deepcopy(parameter))
            responses: dict[str, Any] = operation.setdefault("responses", {})
            if not any(status in responses for status in ("422", "4XX", "default")):
                responses["422"] = {
                    "description": "Validation Error",
                    "content": {
                        "application/json": {"schema": {"$ref": REF_PREFIX + "HTTPValidationError"}}
                    },
                }
                validated = True
    components: dict[str, Any] = schema.setdefault("components", {})
    if secured:
        schemes = components.setdefault("securitySchemes", {})
        for scheme in _SCHEMES:
            schemes[scheme.scheme_name] = jsonable_encoder(
                scheme.model, by_alias=True, exclude_none=True
            )
    if validated:
        schemas = components.setdefault("schemas", {})
        schemas.setdefault("ValidationError", copy.deepcopy(validation_error_definition))
        schemas.setdefault(
            "HTTPValidationError", copy.deepcopy(validation_error_response_definition)
        )
    return schema


def install_key_security(app: FastAPI) -> None:
    """Make ``app.openapi()`` declare what :class:`Require` needs, through
    :func:`declare_security`: for an app that keeps FastAPI's ``openapi()`` (one that
    replaces it calls :func:`declare_security` on FastAPI's document itself)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = declare_security(generate(), app.routes)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


async def _keys(request: Request) -> KeyService:
    keys: KeyService = request.app.state.components.keys
    return keys


async def _tenants(request: Request) -> TenantService:
    tenants: TenantService = request.app.state.components.tenants
    return tenants


async def _audit(request: Request) -> AuditService:
    audit: AuditService = request.app.state.components.audit
    return audit


KeysDep = Annotated[KeyService, Depends(_keys)]
TenantsDep = Annotated[TenantService, Depends(_tenants)]
AuditDep = Annotated[AuditService, Depends(_audit)]
