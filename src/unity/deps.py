"""FastAPI dependencies as ``Annotated`` aliases: routes declare what they need by type.

The components are built by ``create_app``'s lifespan and live on ``app.state``; these
aliases hand them to routes so a test can swap any of them without monkeypatching.
"""

# No ``from __future__ import annotations`` here: ``access`` builds a dependency whose
# annotation names a local (``required``); FastAPI must see the real object, not a string.

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query
from starlette.requests import HTTPConnection

from unity.auth.deps import Require
from unity.auth.principal import Principal
from unity.components import Components


def _components(connection: HTTPConnection) -> Components:
    components: Components = connection.app.state.components
    return components


ComponentsDep = Annotated[Components, Depends(_components)]


@dataclass(frozen=True, slots=True)
class Caller:
    """The calling key and the tenant the request acts on."""

    principal: Principal
    tenant: str


TenantQuery = Annotated[
    str | None,
    Query(
        description="Act on another tenant (keys with the admin scope only).",
        max_length=64,
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
    ),
]


def access(*scopes: str) -> Any:
    """A dependency yielding the :class:`Caller`; the key must hold every one of ``scopes``."""
    required = Require(scopes)

    async def caller(
        principal: Annotated[Principal, Depends(required)], tenant: TenantQuery = None
    ) -> Caller:
        return Caller(principal, principal.tenant_for(tenant))

    return Depends(caller)
