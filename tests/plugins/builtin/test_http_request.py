"""http_request against a real local HTTP server: masking, status, body, failures."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from tests.plugins.builtin.actions import ProgressLog, action_context
from unity.plugins.builtin import http_request
from unity.plugins.builtin.http_request import MAX_BODY_BYTES, HttpRequest, HttpRequestParams
from unity.plugins.sdk import ActionContext, ActionError


class EchoHandler(BaseHTTPRequestHandler):
    """Answers with what it received; /status/N answers N; /big sends 5,000 bytes."""

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output clean."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        received = self.rfile.read(length).decode()
        if self.path.startswith("/status/"):
            status, body = int(self.path.rsplit("/", 1)[1]), b"as asked"
        elif self.path == "/big":
            status, body = 200, b"y" * 5_000
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/status/200")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        else:
            status = 201
            body = json.dumps(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers.items()),
                    "body": received,
                }
            ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Set-Cookie", "session=abc123")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer


@pytest.fixture
def echo(serve: Callable[..., Any]) -> Any:
    return serve(EchoHandler)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def context(tmp_path: Path, http: httpx.AsyncClient, **params: Any) -> ActionContext[Any]:
    return action_context(HttpRequest, params, data_dir=tmp_path, http=http)


SECRET_HEADERS = {
    "Authorization": "Bearer tok-123",
    "X-API-Key": "key-456",
    "X-Auth-Token": "tok-789",
    "Cookie": "sid=cookie-0",
    "X-Client-Secret": "cs-1",
    "Accept": "application/json",
}


async def test_the_plan_shows_the_request_with_secrets_masked(
    tmp_path: Path, http: httpx.AsyncClient, echo: Any
) -> None:
    url = echo.url("/hook?token=qs-secret&room=kitchen").replace("http://", "http://bot:pw-secret@")
    ctx = context(
        tmp_path,
        http,
        method="POST",
        url=url,
        headers=SECRET_HEADERS,
        json_body={"light": "off", "password": "body-secret"},
    )

    plan = await HttpRequest().plan(ctx)

    [step] = plan.steps
    assert step["method"] == "POST"
    assert step["headers"] == {
        "Authorization": "Bearer ********",
        "X-API-Key": "********",
        "X-Auth-Token": "********",
        "Cookie": "********",
        "X-Client-Secret": "********",
        "Accept": "application/json",
    }
    assert step["url"] == (
        f"http://bot:********@127.0.0.1:{echo.port}/hook?token=%2A%2A%2A%2A%2A%2A%2A%2A&room=kitchen"
    )
    assert step["json_body"] == {"light": "off", "password": "********"}
    dumped = plan.model_dump_json()
    for secret in ("tok-123", "key-456", "tok-789", "cookie-0", "cs-1", "pw-secret", "qs-secret"):
        assert secret not in dumped
    assert "body-secret" not in dumped


async def test_apply_sends_the_real_values_and_reports_status_time_and_body(
    tmp_path: Path, http: httpx.AsyncClient, echo: Any
) -> None:
    ctx = context(
        tmp_path, http, method="PUT", url=echo.url("/things/1"), headers=SECRET_HEADERS, body="hi"
    )
    action = HttpRequest()
    plan = await action.plan(ctx)
    progress = ProgressLog()

    result = await action.apply(ctx, plan, progress)

    assert result.success
    assert result.data["status_code"] == 201
    assert result.metrics["status_code"] == 201
    assert result.metrics["response_time_ms"] >= 0
    received = json.loads(result.data["body"])
    assert received["method"] == "PUT"
    assert received["body"] == "hi"
    assert received["headers"]["Authorization"] == "Bearer tok-123"
    assert received["headers"]["X-API-Key"] == "key-456"
    assert result.data["headers"]["set-cookie"] == "********"
    assert result.summary == f"PUT {echo.url('/things/1')}: 201 Created"
    assert progress.messages[0] == f"sending PUT {echo.url('/things/1')}"
    assert progress.messages[1].startswith("201 Created in ")


async def test_only_the_first_2_kib_of_the_body_is_kept(
    tmp_path: Path, http: httpx.AsyncClient, echo: Any
) -> None:
    ctx = context(tmp_path, http, url=echo.url("/big"))
    action = HttpRequest()

    result = await action.apply(ctx, await action.plan(ctx), ProgressLog())

    assert result.data["body"] == "y" * MAX_BODY_BYTES
    assert result.data["body_truncated"] is True


@pytest.mark.parametrize(
    ("expected_status", "success"),
    [(None, False), ([404], True), ([200, 201], False)],
)
async def test_the_expected_statuses_decide_success(
    tmp_path: Path,
    http: httpx.AsyncClient,
    echo: Any,
    expected_status: list[int] | None,
    success: bool,
) -> None:
    ctx = context(tmp_path, http, url=echo.url("/status/404"), expected_status=expected_status)
    action = HttpRequest()

    result = await action.apply(ctx, await action.plan(ctx), ProgressLog())

    assert result.success is success
    assert result.data["status_code"] == 404


async def test_redirects_are_not_followed_unless_asked(
    tmp_path: Path, http: httpx.AsyncClient, echo: Any
) -> None:
    action = HttpRequest()
    ctx = context(tmp_path, http, url=echo.url("/redirect"))
    first = await action.apply(ctx, await action.plan(ctx), ProgressLog())
    ctx = context(tmp_path, http, url=echo.url("/redirect"), follow_redirects=True)
    second = await action.apply(ctx, await action.plan(ctx), ProgressLog())

    assert (first.success, first.data["status_code"]) == (False, 302)
    assert (second.success, second.data["status_code"]) == (True, 200)


async def test_an_unreachable_server_is_a_failed_result(
    tmp_path: Path, http: httpx.AsyncClient, closed_port: int
) -> None:
    ctx = context(tmp_path, http, url=f"http://127.0.0.1:{closed_port}/")
    action = HttpRequest()

    result = await action.apply(ctx, await action.plan(ctx), ProgressLog())

    assert not result.success
    assert result.data["error"].startswith("ConnectError")
    assert "failed: ConnectError" in result.summary


async def test_parameters_changed_after_the_plan_are_refused(
    tmp_path: Path, http: httpx.AsyncClient, echo: Any
) -> None:
    action = HttpRequest()
    plan = await action.plan(context(tmp_path, http, url=echo.url("/a")))

    with pytest.raises(ActionError, match="changed since this plan"):
        await action.apply(
            context(tmp_path, http, url=echo.url("/a"), method="DELETE"), plan, ProgressLog()
        )


@pytest.mark.parametrize(
    "params",
    [
        {"url": "ftp://example.com/"},
        {"url": "/relative"},
        {"url": "http://x/", "body": "a", "json_body": {"a": 1}},
        {"url": "http://x/", "expected_status": [700]},
        {"url": "http://x/", "method": "TRACE"},
    ],
)
def test_bad_parameters_are_rejected(params: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        HttpRequestParams.model_validate(params)


def test_the_manifest() -> None:
    plugin = http_request.PLUGIN
    assert plugin.kind == "action"
    assert plugin.manifest.category == "network"
    assert plugin.manifest.permissions == ("network",)
    assert plugin.config_schema()["required"] == ["url"]
