"""FastAPI dependencies as ``Annotated`` aliases: routes declare what they need by type.

The components are built by ``create_app``'s lifespan and live on ``app.state``; these
aliases hand them to routes so a test can swap any of them without monkeypatching.

Every dependency here is a coroutine taking the request alone: FastAPI runs a sync
dependency in a worker thread, and solves each nested dependency and each declared
parameter again on every request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from fastapi import Depends, Query
from fastapi.exceptions import RequestValidationError
from pydantic import StringConstraints, TypeAdapter, ValidationError
from starlette.requests import HTTPConnection, Request

from unity.auth.deps import Require
from unity.auth.principal import Principal
from unity.components import Components

__all__ = ["Access", "Caller", "ComponentsDep", "TenantQuery", "access"]


async def _components(connection: HTTPConnection) -> Components:
    components: Components = connection.app.state.components
    return components


ComponentsDep = Annotated[Components, Depends(_components)]


@dataclass(frozen=True, slots=True)
class Caller:
    """The calling key and the tenant the request acts on."""

    principal: Principal
    tenant: str


_TENANT_MAX_LENGTH = 64
_TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
_TENANT_DESCRIPTION = "Act on another tenant (keys with the admin scope only)."

TenantQuery = Annotated[
    str | None,
    Query(
        description=_TENANT_DESCRIPTION,
        max_length=_TENANT_MAX_LENGTH,
        pattern=_TENANT_PATTERN,
    ),
]
"""``?tenant=``, validated by FastAPI (for routes that take it themselves)."""

_Tenant = Annotated[str, StringConstraints(max_length=_TENANT_MAX_LENGTH, pattern=_TENANT_PATTERN)]


class Access(Require):
    """The dependency behind :func:`access`: yields the :class:`Caller`.

    It reads ``?tenant=`` itself, after the key, rather than declaring it to FastAPI: a
    declared parameter is validated before the dependency runs (a request without a valid
    key must get its 401 whatever else is wrong with it), and costs a solving step on every
    request. The parameter is documented through :attr:`openapi_parameters`.
    """

    openapi_parameters: ClassVar[tuple[dict[str, Any], ...]] = (
        {
            "name": "tenant",
            "in": "query",
            "required": False,
            "description": _TENANT_DESCRIPTION,
            "schema": {
                "anyOf": [
                    {
                        "type": "string",
                        "maxLength": _TENANT_MAX_LENGTH,
                        "pattern": _TENANT_PATTERN,
                    },
                    {"type": "null"},
                ],
                "title": "Tenant",
                "description": _TENANT_DESCRIPTION,
            },
        },
    )
    _tenant = TypeAdapter(_Tenant)

    async def __call__(self, request: Request) -> Caller:
        principal = await self.authorize(request)
        tenant = request.query_params.get("tenant")
        if tenant is None:
            return Caller(principal, principal.tenant_id)
        try:
            requested = self._tenant.validate_python(tenant)
        except ValidationError as exc:
            raise RequestValidationError(
                [
                    {**e, "loc": ("query", "tenant", *e["loc"])}
                    for e in exc.errors(include_url=False)
                ]
            ) from exc
        return Caller(principal, principal.tenant_for(requested))


def access(*scopes: str) -> Any:
    """A dependency yielding the :class:`Caller`; the key must hold every one of ``scopes``.

    401 without a valid key, 403 naming a missing scope, or for ``?tenant=`` naming another
    tenant without the admin scope; 422 for a malformed ``?tenant=``.
    """
    return Depends(Access(scopes))
