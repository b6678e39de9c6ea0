"""Security header fields on every response, and CORS for the origins a user allows.

:class:`SecurityHeadersMiddleware` (pure ASGI) adds to every HTTP response:

- ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``,
  ``Referrer-Policy: no-referrer``, ``Cross-Origin-Opener-Policy: same-origin``;
- a ``Content-Security-Policy``: :data:`DASHBOARD_CSP` on HTML (the dashboard shell loads
  only its own scripts, styles and data); :data:`DOCS_CSP` on the Swagger UI and ReDoc
  pages, which load their bundles from a CDN and start them with an inline script; and
  :data:`NON_HTML_CSP` on everything else, so that a JSON or SVG body opened directly in a
  browser can run nothing;
- ``Cache-Control: no-store`` under ``/api``, where every answer belongs to one key.

A header the application set itself is kept: a route that knows better wins.

CORS is off unless origins are configured; then Starlette's ``CORSMiddleware`` answers
for exactly those origins, allowing the API-key headers and exposing the rate-limit ones.
Keys travel in headers, never cookies, so credentials mode stays off.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "CORS_ALLOWED_HEADERS",
    "CORS_EXPOSED_HEADERS",
    "DASHBOARD_CSP",
    "DOCS_CSP",
    "DOCS_PATHS",
    "NON_HTML_CSP",
    "SecurityHeadersMiddleware",
    "install_http_security",
]

DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
"""For HTML: the dashboard shell runs only same-origin scripts and talks only to its origin."""

# FastAPI's Swagger UI and ReDoc pages fetch their bundles from jsDelivr, ReDoc its fonts
# from Google, both their favicon from fastapi.tiangolo.com; each starts with an inline
# script, and ReDoc runs its search in a blob: worker.
DOCS_CSP = (
    "default-src 'self'; "
    "script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src 'self' https://fonts.gstatic.com; "
    "img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
    "worker-src 'self' blob:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
"""For the API documentation pages only (:data:`DOCS_PATHS`)."""

NON_HTML_CSP = "default-src 'none'; frame-ancestors 'none'"
"""For everything that is not HTML: nothing in it may load or run."""

DOCS_PATHS = ("/docs", "/redoc", "/docs/oauth2-redirect")

CORS_ALLOWED_HEADERS = ("Authorization", "X-API-Key", "Content-Type")
CORS_EXPOSED_HEADERS = (
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "RateLimit",
    "RateLimit-Policy",
    "Retry-After",
)
CORS_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

_ALWAYS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
)


_ALWAYS_RAW = tuple((n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in _ALWAYS)
_DOCS_CSP_RAW = DOCS_CSP.encode("latin-1")
_DASHBOARD_CSP_RAW = DASHBOARD_CSP.encode("latin-1")
_NON_HTML_CSP_RAW = NON_HTML_CSP.encode("latin-1")


class SecurityHeadersMiddleware:
    """Adds the security header fields described in this module to every HTTP response."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        docs_paths: Collection[str] = DOCS_PATHS,
        api_prefix: str = "/api",
    ) -> None:
        """``docs_paths`` get :data:`DOCS_CSP` (matched exactly); paths at or under
        ``api_prefix`` get ``Cache-Control: no-store``."""
        self.app = app
        self._docs_paths = frozenset(docs_paths)
        self._api_prefix = api_prefix.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        is_docs = path in self._docs_paths
        is_api = path == self._api_prefix or path.startswith(self._api_prefix + "/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = _with_security_headers(
                    message.get("headers", ()), is_docs=is_docs, is_api=is_api
                )
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _with_security_headers(
    raw: Iterable[tuple[bytes, bytes]], *, is_docs: bool, is_api: bool
) -> list[tuple[bytes, bytes]]:
    """``raw`` (ASGI header pairs) plus each security field it does not set itself.

    One pass over the response's fields, then appends of pre-encoded pairs: this runs on
    every response.
    """
    headers = list(raw)
    present = set()
    html = False
    for name, value in headers:
        name = name.lower()
        present.add(name)
        if name == b"content-type" and value.startswith(b"text/html"):
            html = True
    for name, value in _ALWAYS_RAW:
        if name not in present:
            headers.append((name, value))
    if b"content-security-policy" not in present:
        csp = _DOCS_CSP_RAW if is_docs else _DASHBOARD_CSP_RAW if html else _NON_HTML_CSP_RAW
        headers.append((b"content-security-policy", csp))
    if is_api and b"cache-control" not in present:
        headers.append((b"cache-control", b"no-store"))
    return headers


def install_http_security(app: Starlette, *, cors_origins: Sequence[str] = ()) -> None:
    """Add CORS (only when ``cors_origins`` is not empty) and the security headers to ``app``.

    Call it after adding the rate-limit
    middleware, so that both wrap it: preflight requests never reach the limiter, and 429
    responses carry CORS and security headers (a browser script can then read them).
    """
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=CORS_METHODS,
            allow_headers=CORS_ALLOWED_HEADERS,
            expose_headers=CORS_EXPOSED_HEADERS,
            allow_credentials=False,
        )
    app.add_middleware(SecurityHeadersMiddleware)
