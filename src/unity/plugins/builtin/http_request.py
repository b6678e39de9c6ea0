"""Send one HTTP request: the plan shows method, URL, headers and body, with secrets masked.

Credentials are masked wherever the plan shows them: the ``Authorization``, ``Cookie`` and
``X-API-Key`` headers and any header whose name contains token, secret or password; a
password in the URL and query parameters with such names; JSON body fields with such
names. ``apply`` checks that the task's parameters still give the approved (masked) request,
then sends it with the real values through Unity's HTTP client. The result holds the status,
the time to the response headers and the first 2 KiB of the body; the request succeeded when
the status is in ``expected_status`` (any 2xx by default). A request that cannot be sent
(refused, timed out, DNS) is a failed result, not an error of the action.
"""

from __future__ import annotations

from typing import Any, Literal

import httpx
from pydantic import Field, JsonValue, field_validator, model_validator

from unity.plugins.builtin._secrets import MASK, is_secret_name, mask_mapping, mask_url
from unity.plugins.sdk import (
    Action,
    ActionContext,
    ActionError,
    ActionParams,
    Manifest,
    Plan,
    Progress,
    Result,
)

__all__ = ["MAX_BODY_BYTES", "PLUGIN", "HttpRequest", "HttpRequestParams"]

MAX_BODY_BYTES = 2_048
Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class HttpRequestParams(ActionParams):
    """The request to send and the statuses that count as success."""

    method: Method = Field(default="GET", description="HTTP method.")
    url: str = Field(
        description="Absolute http:// or https:// URL.",
        examples=["https://homeassistant.local:8123/api/services/light/turn_off"],
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Request headers. Authorization, Cookie, X-API-Key and names containing "
        "token, secret or password are masked in the plan.",
    )
    body: str | None = Field(default=None, description="Raw request body (text).")
    json_body: JsonValue = Field(
        default=None,
        description="A JSON request body (sets Content-Type: application/json); "
        "not together with `body`.",
    )
    expected_status: list[int] | None = Field(
        default=None,
        min_length=1,
        description="Status codes that count as success; default: any 2xx.",
        examples=[[200, 204]],
    )
    timeout_s: float = Field(default=30, gt=0, le=600, description="Seconds for the request.")
    follow_redirects: bool = Field(
        default=False,
        description="Follow 3xx responses. Off by default, so only the approved URL is called.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL as exc:
            raise ValueError(f"invalid URL: {exc}") from exc
        if url.scheme not in {"http", "https"} or not url.host:
            raise ValueError("url must be an absolute http:// or https:// URL")
        return value

    @field_validator("expected_status")
    @classmethod
    def _statuses(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(not 100 <= code <= 599 for code in value):
            raise ValueError("status codes are between 100 and 599")
        return value

    @model_validator(mode="after")
    def _one_body(self) -> HttpRequestParams:
        if self.body is not None and self.json_body is not None:
            raise ValueError("give either body or json_body, not both")
        return self


def _mask_json(value: JsonValue) -> JsonValue:
    if isinstance(value, dict):
        return {k: MASK if is_secret_name(k) else _mask_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_json(item) for item in value]
    return value


def _shown(params: HttpRequestParams) -> dict[str, Any]:
    """The request as the plan shows it; ``apply`` checks the parameters still give this."""
    return {
        "method": params.method,
        "url": mask_url(params.url),
        "headers": mask_mapping(params.headers),
        "body": params.body,
        "json_body": _mask_json(params.json_body),
        "expected_status": params.expected_status,
        "timeout_s": params.timeout_s,
        "follow_redirects": params.follow_redirects,
    }


def _text(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", "replace")
    except LookupError:  # a charset name Python does not know
        return body.decode("utf-8", "replace")


def _expected(params: HttpRequestParams, status: int) -> bool:
    if params.expected_status is None:
        return 200 <= status < 300
    return status in params.expected_status


class HttpRequest(Action[HttpRequestParams]):
    """Sends one HTTP request (a webhook, an API call) and reports the answer."""

    manifest = Manifest(
        id="http_request",
        name="HTTP request",
        version="1.0.0",
        kind="action",
        category="network",
        description="Send one HTTP request (method, URL, headers, body); succeeds when the "
        "status is expected. Secrets are masked in the plan.",
        permissions=("network",),
    )

    async def plan(self, ctx: ActionContext[HttpRequestParams]) -> Plan:
        """Show the request, secrets masked; nothing is sent."""
        shown = _shown(ctx.params)
        size = len(ctx.params.body.encode()) if ctx.params.body is not None else None
        description = f"{shown['method']} {shown['url']}"
        if shown["headers"]:
            description += f" with headers {', '.join(shown['headers'])}"
        if size is not None:
            description += f", a {size}-byte body"
        elif ctx.params.json_body is not None:
            description += ", a JSON body"
        expected = ctx.params.expected_status or "2xx"
        return Plan(
            summary=f"Send {shown['method']} {shown['url']} (expecting {expected})",
            steps=[{"description": description, **shown}],
            data=shown,
        )

    async def apply(
        self, ctx: ActionContext[HttpRequestParams], plan: Plan, progress: Progress
    ) -> Result:
        """Send the request; the result has status, response time and the body's start."""
        params = ctx.params
        if _shown(params) != plan.data:
            raise ActionError("the task's parameters changed since this plan was made")
        shown_url = plan.data["url"]
        await progress(1, 2, f"sending {params.method} {shown_url}")
        started = ctx.clock.monotonic()
        try:
            async with ctx.http.stream(
                params.method,
                params.url,
                headers=params.headers,
                content=params.body,
                json=params.json_body,
                timeout=params.timeout_s,
                follow_redirects=params.follow_redirects,
            ) as response:
                elapsed_ms = (ctx.clock.monotonic() - started) * 1000.0
                body = bytearray()
                truncated = False
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_BODY_BYTES:
                        truncated = True
                        del body[MAX_BODY_BYTES:]
                        break
        except httpx.HTTPError as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            await progress(2, 2, f"request failed: {reason}")
            return Result(
                success=False,
                summary=f"{params.method} {shown_url} failed: {reason}",
                data={"error": reason, "url": shown_url},
            )
        success = _expected(params, response.status_code)
        status = f"{response.status_code} {response.reason_phrase}".strip()
        await progress(2, 2, f"{status} in {elapsed_ms:.0f} ms")
        return Result(
            success=success,
            summary=f"{params.method} {shown_url}: {status}"
            + ("" if success else f" (expected {params.expected_status or '2xx'})"),
            data={
                "status_code": response.status_code,
                "reason": response.reason_phrase,
                "response_time_ms": elapsed_ms,
                "headers": mask_mapping(dict(response.headers)),
                "body": _text(bytes(body), response.charset_encoding),
                "body_truncated": truncated,
                "url": mask_url(str(response.url)),
            },
            metrics={"status_code": response.status_code, "response_time_ms": elapsed_ms},
        )


PLUGIN = HttpRequest
