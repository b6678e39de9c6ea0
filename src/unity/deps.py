"""FastAPI dependencies as ``Annotated`` aliases: routes declare what they need by type.

The components are built by ``create_app``'s lifespan and live on ``app.state``; these
aliases hand them to routes so a test can swap any of them without monkeypatching.

Every dependency here is a coroutine taking the request alone: FastAPI runs a sync
dependency in a worker thread, and solves each nested dependency and each declared
parameter again on every request.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from fastapi import Depends, Query
from fastapi.dependencies.utils import get_typed_return_annotation, request_params_to_args
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import StringConstraints, TypeAdapter, ValidationError
from starlette.datastructures import QueryParams
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from unity.auth.deps import Require
from unity.auth.principal import Principal
from unity.components import Components

__all__ = ["Access", "Caller", "ComponentsDep", "ReadRoute", "TenantQuery", "access"]


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


class ReadRoute(APIRoute):
    """An :class:`APIRoute` that skips FastAPI's dependency solving where a read allows it.

    For an ``async`` endpoint returning a :class:`Response` whose only dependencies are
    :class:`Require` instances taking the request, and whose other parameters are the
    request and path and query parameters, the handler runs the same steps itself: the
    dependencies first (so a missing key is a 401 before anything else), then FastAPI's
    own validation of the path and query parameters (``request_params_to_args``: the same
    values, defaults and 422 errors), then the endpoint. That saves the general solver's
    per-request work (dependency cache keys, a scratch response, the header and cookie
    passes, the sub-dependency's own parameter passes), about a third of a hot read's time.
    Any other route is handled by FastAPI as usual.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return _read_handler(self) or super().get_route_handler()


_PLAIN = (type(None), bool, int, float, str)


def _read_handler(route: APIRoute) -> Callable[[Request], Coroutine[Any, Any, Response]] | None:
    dependant = route.dependant
    endpoint = dependant.call
    if (
        endpoint is None
        or not inspect.iscoroutinefunction(endpoint)
        or get_typed_return_annotation(endpoint) is not Response
        or route.body_field is not None
        or dependant.header_params
        or dependant.cookie_params
        or dependant.body_params
        or dependant.websocket_param_name
        or dependant.http_connection_param_name
        or dependant.response_param_name
        or dependant.background_tasks_param_name
        or dependant.security_scopes_param_name
    ):
        return None
    requirements: list[tuple[str | None, Callable[[Request], Awaitable[Any]]]] = []
    for sub in dependant.dependencies:
        call = sub.call
        if (
            not isinstance(call, Require)
            or sub.dependencies
            or sub.path_params
            or sub.query_params
            or sub.header_params
            or sub.cookie_params
            or sub.body_params
            or sub.request_param_name is None
        ):
            return None
        requirements.append((sub.name, call))
    request_name = dependant.request_param_name
    path_params, query_params = dependant.path_params, dependant.query_params
    # Without a query string every query parameter takes its default: worked out once,
    # when those defaults are plain values (FastAPI hands each request a copy of them).
    computed, missing = request_params_to_args(query_params, QueryParams())
    plain = not missing and all(isinstance(v, _PLAIN) for v in computed.values())
    defaults = computed if plain else None

    async def handler(request: Request) -> Response:
        values: dict[str, Any] = {}
        for name, requirement in requirements:
            solved = await requirement(request)
            if name is not None:
                values[name] = solved
        path_values, errors = request_params_to_args(path_params, request.path_params)
        values.update(path_values)
        if defaults is not None and not request.scope.get("query_string"):
            values.update(defaults)
        elif query_params:
            query_values, query_errors = request_params_to_args(query_params, request.query_params)
            values.update(query_values)
            errors += query_errors
        if errors:
            raise RequestValidationError(errors)
        if request_name is not None:
            values[request_name] = request
        response: Response = await endpoint(**values)
        return response

    return handler
