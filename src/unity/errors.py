"""Unity's exception tree and its mapping to RFC 9457 ``application/problem+json``.

    UnityError
    ├── ConfigError            bad settings or config file (start-up)
    ├── DatabaseError          the database cannot be opened or migrated
    ├── NotFoundError          404: an unknown id
    ├── ConflictError          409: the request clashes with current state
    ├── BadRequestError        400: a bad parameter
    ├── ValidationFailed       422: a body or config that fails its schema
    └── PluginError            a plugin misbehaved
        ├── PluginLoadError    it could not be imported or its manifest is invalid
        ├── CollectionError    a collection failed (message is shown to users)
        └── MalformedOutput    collect() returned something that is not a ``Collected``

Library errors are translated where they enter Unity (``raise X(...) from exc``).
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"


class UnityError(Exception):
    """Base of every error Unity raises on purpose."""

    status_code = 500
    title = "Internal error"
    headers: ClassVar[dict[str, str]] = {}

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class ConfigError(UnityError):
    title = "Configuration error"


class DatabaseError(UnityError):
    status_code = 503
    title = "Database unavailable"


class NotFoundError(UnityError):
    status_code = 404
    title = "Not found"


class ConflictError(UnityError):
    status_code = 409
    title = "Conflict"


class BadRequestError(UnityError):
    status_code = 400
    title = "Bad request"


class ValidationFailed(UnityError):
    status_code = 422
    title = "Validation failed"


class PluginError(UnityError):
    title = "Plugin error"


class PluginLoadError(PluginError):
    title = "Plugin could not be loaded"


class CollectionError(PluginError):
    """Raised by plugins (or the pipeline) when a collection fails; the message reaches users."""

    title = "Collection failed"


class MalformedOutput(PluginError):
    title = "Plugin returned malformed output"


class ProblemFieldError(BaseModel):
    """One failing field of a 422."""

    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem document (``application/problem+json``)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    errors: list[ProblemFieldError] | None = Field(
        default=None, description="For 422: each failing field."
    )


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for error codes a route may return."""
    return {code: {"model": Problem, "description": _reason(code)} for code in codes}


def use_problem_media_type(openapi: dict[str, Any]) -> dict[str, Any]:
    """Declare error responses as ``application/problem+json``, which is what is sent.

    FastAPI documents every response model as ``application/json`` and adds its own 422
    model; both are rewritten to the ``Problem`` schema under the problem media type.
    """
    ref = {"$ref": "#/components/schemas/Problem"}
    for operations in openapi.get("paths", {}).values():
        for operation in operations.values():
            for code, response in operation.get("responses", {}).items():
                if not code.isdigit() or int(code) < 400:
                    continue
                content = response.get("content", {})
                schema = content.get("application/json", {}).get("schema", {})
                if code == "422" or schema.get("$ref", "").endswith("/Problem"):
                    response["content"] = {"application/problem+json": {"schema": ref}}
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    if "Problem" not in schemas:
        generated = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(generated.pop("$defs", {}))
        schemas["Problem"] = generated
    return openapi


def problem(status: int, title: str, detail: str | None = None, **extra: Any) -> JSONResponse:
    """A problem+json response (RFC 9457)."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail is not None:
        body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


async def _unity_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UnityError)
    response = problem(exc.status_code, exc.title, exc.detail, **exc.extra)
    response.headers.update(exc.headers)
    return response


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    response = problem(exc.status_code, _reason(exc.status_code), str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    if exc.status_code == 405:
        # Starlette lists only the first matching route's methods; list the resource's.
        allowed = allowed_methods(request.app.openapi(), request.url.path)
        if allowed:
            response.headers["allow"] = ", ".join(allowed)
    return response


def allowed_methods(openapi: dict[str, Any], path: str) -> list[str]:
    """The methods the OpenAPI document gives the resource at ``path``.

    A literal path (``/api/keys/me``) wins over templates it also matches (``/{key_id}``).
    """
    paths: dict[str, dict[str, Any]] = openapi.get("paths", {})
    if path in paths:
        return sorted(m.upper() for m in paths[path] if m.lower() in _HTTP_METHODS)
    methods: set[str] = set()
    for template, operations in paths.items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            methods.update(m.upper() for m in operations if m.lower() in _HTTP_METHODS)
    return sorted(methods)


_HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    return problem(422, "Validation failed", "The request did not validate.", errors=errors)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def install_error_handlers(app: FastAPI) -> None:
    """Map Unity, HTTP and validation errors to problem+json on ``app``."""
    app.add_exception_handler(UnityError, _unity_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
