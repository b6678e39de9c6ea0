"""llm_planner against a local chat-completions server, over real file_cleanup and http_request.

The server answers from a script (one completion per request, with usage figures) and keeps
every request it got, so a test checks both what the planner asked and what it did.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.http_handlers import JsonHandler
from tests.plugins.builtin.actions import ProgressLog, Steps, action_context
from unity.plugins.builtin import llm_planner
from unity.plugins.builtin.file_cleanup import FileCleanup
from unity.plugins.builtin.http_request import HttpRequest
from unity.plugins.builtin.llm_planner import LlmPlanner, extract_json
from unity.plugins.sdk import ActionContext, ActionError

DAY = 86_400


@dataclass
class ChatScript:
    """What the fake model answers, in order, and what it was asked."""

    answers: list[tuple[str, dict[str, int]]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    reject_response_format: bool = False
    base_url: str = ""


def chat_handler(script: ChatScript) -> type[BaseHTTPRequestHandler]:
    class ChatHandler(JsonHandler):
        def do_POST(self) -> None:
            if self.path != "/v1/chat/completions":
                self._json(404, {"error": {"message": f"no route {self.path}"}})
                return
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            script.requests.append(request)
            script.headers.append(dict(self.headers.items()))
            if script.reject_response_format and "response_format" in request:
                self._json(400, {"error": {"message": "response_format is not supported"}})
                return
            content, usage = script.answers.pop(0)
            self._json(
                200,
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "model": request["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                },
            )

    return ChatHandler


class Receiver(BaseHTTPRequestHandler):
    """The service the plan's http_request step calls: /ok answers 204, /broken 500."""

    calls: list[str] = []

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output clean."""

    def do_POST(self) -> None:
        Receiver.calls.append(self.path)
        self.send_response(204 if self.path == "/ok" else 500)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def chat(serve: Callable[..., Any]) -> ChatScript:
    script = ChatScript()
    server = serve(chat_handler(script))
    script.base_url = server.url("/v1")
    return script


@pytest.fixture
def receiver(serve: Callable[..., Any]) -> Any:
    Receiver.calls = []
    return serve(Receiver)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    folder = tmp_path / "srv" / "logs"
    folder.mkdir(parents=True)
    for name, age in (("old.log", 30), ("new.log", 0)):
        path = folder / name
        path.write_bytes(b"x" * 1_000)
        mtime = int((path.stat().st_mtime - age * DAY) * 1_000_000_000)
        os.utime(path, ns=(mtime, mtime))
    return folder


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def context(
    tmp_path: Path,
    http: httpx.AsyncClient,
    chat: ChatScript,
    description: str = "Free disk space in /srv/logs, then tell the dashboard",
    task_max_rounds: int | None = None,
    **params: Any,
) -> tuple[ActionContext[Any], Steps]:
    steps = Steps(
        {"file_cleanup": FileCleanup, "http_request": HttpRequest},
        data_dir=tmp_path / "data",
        http=http,
    )
    ctx = action_context(
        LlmPlanner,
        {"base_url": chat.base_url, "model": "local-7b"} | params,
        data_dir=tmp_path / "data",
        http=http,
        description=description,
        max_rounds=task_max_rounds,
        steps=steps,
    )
    return ctx, steps


async def test_a_bad_first_answer_is_corrected_and_the_plan_is_concrete(
    tmp_path: Path, http: httpx.AsyncClient, chat: ChatScript, logs: Path, receiver: Any
) -> None:
    cleanup = {"root": str(logs), "patterns": ["*.log"], "older_than_days": 7}
    notify = {"method": "POST", "url": receiver.url("/ok"), "json_body": {"cleaned": True}}
    # Round 1: prose around a fenced block, and a cleanup of "/" that file_cleanup refuses.
    first = (
        "Sure! Here is the plan:\n```json\n"
        + json.dumps({"steps": [{"action": "file_cleanup", "params": cleanup | {"root": "/"}}]})
        + "\n```"
    )
    second = json.dumps(
        {
            "summary": "Remove old logs, then notify",
            "steps": [
                {"action": "file_cleanup", "params": cleanup, "reason": "old logs"},
                {"action": "http_request", "params": notify, "reason": "tell the dashboard"},
            ],
        }
    )
    chat.answers = [(first, usage(900, 40)), (second, usage(1_000, 80))]
    ctx, steps = context(tmp_path, http, chat, api_key="sk-very-secret")
    planner = LlmPlanner()

    plan = await planner.plan(ctx)

    assert plan.summary == "Remove old logs, then notify"
    assert plan.metrics == {
        "prompt_tokens": 1_900,
        "completion_tokens": 120,
        "total_tokens": 2_020,
        "llm_requests": 2,
        "llm_rounds": 2,
    }
    assert [step["action"] for step in plan.steps] == ["file_cleanup", "http_request"]
    assert plan.steps[0]["params"] == cleanup
    sub_plan = plan.steps[0]["plan"]
    assert [s["path"] for s in sub_plan["steps"]] == ["old.log"]  # concrete: the very file
    assert plan.steps[0]["description"] == f"file_cleanup: {sub_plan['summary']}"
    assert plan.steps[1]["plan"]["steps"][0]["method"] == "POST"
    assert plan.data["llm"] == {
        "base_url": chat.base_url,
        "model": "local-7b",
        "api_key": "********",
    }
    assert "sk-very-secret" not in plan.model_dump_json()

    # What the model was asked: JSON output, the key, the actions and, in round 2, the error.
    first_request, second_request = chat.requests
    assert first_request["response_format"] == {"type": "json_object"}
    assert first_request["model"] == "local-7b"
    assert chat.headers[0]["Authorization"] == "Bearer sk-very-secret"
    system, user = first_request["messages"]
    assert '"older_than_days"' in system["content"]
    assert "- http_request: " in system["content"]
    assert "llm_planner" not in system["content"]
    assert user == {"role": "user", "content": ctx.description}
    feedback = second_request["messages"][-1]
    assert feedback["role"] == "user"
    assert "step 1 (file_cleanup): invalid params" in feedback["content"]
    assert "too close to /" in feedback["content"]
    assert second_request["messages"][-2] == {"role": "assistant", "content": first}

    progress = ProgressLog()
    result = await planner.apply(ctx, plan, progress)

    assert result.success
    assert result.summary == "Applied 2 of 2 steps"
    assert not (logs / "old.log").exists()
    assert (logs / "new.log").exists()
    assert Receiver.calls == ["/ok"]
    assert steps.applied == ["file_cleanup", "http_request"]
    assert result.metrics["total_tokens"] == 2_020
    assert result.metrics["file_cleanup_bytes_freed"] == 1_000
    assert result.metrics["http_request_status_code"] == 204
    assert (result.metrics["steps"], result.metrics["steps_completed"]) == (2, 2)
    assert progress.messages[0] == f"step 1/2: file_cleanup: {sub_plan['summary']}"
    assert any(
        m.startswith("[1/2 file_cleanup] moved to the trash old.log") for m in progress.messages
    )
    assert any(m.startswith("[2/2 http_request] 204 No Content") for m in progress.messages)


async def test_apply_stops_at_the_first_failed_step(
    tmp_path: Path, http: httpx.AsyncClient, chat: ChatScript, logs: Path, receiver: Any
) -> None:
    answer = {
        "steps": [
            {
                "action": "http_request",
                "params": {"method": "POST", "url": receiver.url("/broken")},
            },
            {
                "action": "file_cleanup",
                "params": {"root": str(logs), "patterns": ["*.log"], "older_than_days": 7},
            },
        ]
    }
    chat.answers = [(json.dumps(answer), usage(10, 10))]
    ctx, steps = context(tmp_path, http, chat)
    planner = LlmPlanner()
    plan = await planner.plan(ctx)
    assert plan.summary == "2 steps: http_request, file_cleanup"

    result = await planner.apply(ctx, plan, ProgressLog())

    assert not result.success
    assert result.summary.startswith("step 1 of 2 (http_request) failed: POST ")
    assert steps.applied == ["http_request"]
    assert (logs / "old.log").exists()
    assert result.metrics["steps_completed"] == 0


async def test_an_endpoint_without_response_format_is_asked_again_without_it(
    tmp_path: Path, http: httpx.AsyncClient, chat: ChatScript, logs: Path
) -> None:
    chat.reject_response_format = True
    chat.answers = [('Nothing needs doing.\n{"summary": "All clean", "steps": []}', usage(5, 5))]
    ctx, _ = context(tmp_path, http, chat)

    plan = await LlmPlanner().plan(ctx)

    assert plan.summary == "All clean"
    assert plan.empty
    assert ["response_format" in request for request in chat.requests] == [True, False]
    assert plan.metrics["total_tokens"] == 10


async def test_the_rounds_are_bounded(
    tmp_path: Path, http: httpx.AsyncClient, chat: ChatScript
) -> None:
    chat.answers = [
        ("I cannot answer in JSON, sorry.", usage(10, 1)),
        (json.dumps({"steps": [{"action": "rm_rf", "params": {}}]}), usage(20, 2)),
        ("unused", usage(0, 0)),
    ]
    ctx, steps = context(tmp_path, http, chat, task_max_rounds=2)

    with pytest.raises(ActionError) as caught:
        await LlmPlanner().plan(ctx)

    assert str(caught.value) == (
        "the model gave no usable plan in 2 rounds (33 tokens); last problems: "
        "step 1: unknown action 'rm_rf'; use one of ['file_cleanup', 'http_request']"
    )
    assert len(chat.requests) == 2
    assert "the answer holds no JSON object" in chat.requests[1]["messages"][-1]["content"]
    assert steps.plan_calls == []


async def test_the_max_rounds_param_wins_over_the_task(
    tmp_path: Path, http: httpx.AsyncClient, chat: ChatScript
) -> None:
    chat.answers = [("no", usage(1, 1)), ("no", usage(1, 1))]
    ctx, _ = context(tmp_path, http, chat, task_max_rounds=5, max_rounds=1)

    with pytest.raises(ActionError, match="in 1 rounds"):
        await LlmPlanner().plan(ctx)
    assert len(chat.requests) == 1


async def test_an_unreachable_endpoint_is_a_clean_error(
    tmp_path: Path, http: httpx.AsyncClient, chat: ChatScript, closed_port: int
) -> None:
    chat.base_url = f"http://127.0.0.1:{closed_port}/v1"
    ctx, _ = context(tmp_path, http, chat)

    with pytest.raises(
        ActionError,
        match=r"LLM endpoint http://127\.0\.0\.1:\d+/v1/chat/completions not reachable: ConnectError",
    ):
        await LlmPlanner().plan(ctx)


async def test_an_endpoint_error_is_reported(
    tmp_path: Path, http: httpx.AsyncClient, chat: ChatScript
) -> None:
    chat.base_url = chat.base_url.replace("/v1", "/v2")
    ctx, _ = context(tmp_path, http, chat)

    with pytest.raises(ActionError, match=r"answered 404: .*no route /v2/chat/completions"):
        await LlmPlanner().plan(ctx)


async def test_a_task_without_description_cannot_be_planned(
    tmp_path: Path, http: httpx.AsyncClient, chat: ChatScript
) -> None:
    ctx, _ = context(tmp_path, http, chat, description="  ")

    with pytest.raises(ActionError, match="no description"):
        await LlmPlanner().plan(ctx)
    assert chat.requests == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"steps": []}', {"steps": []}),
        ('Here:\n```json\n{"steps": [1]}\n```\nDone.', {"steps": [1]}),
        ('Plan follows {"steps": [{"a": "}"}]} and that is all', {"steps": [{"a": "}"}]}),
        ('[{"action": "x"}]', [{"action": "x"}]),
    ],
)
def test_json_is_found_in_chatty_answers(text: str, expected: Any) -> None:
    assert extract_json(text) == expected


def test_no_json_is_an_error() -> None:
    with pytest.raises(ValueError, match="no JSON object"):
        extract_json("I would rather not {")


def test_the_manifest() -> None:
    plugin = llm_planner.PLUGIN
    assert plugin.kind == "action"
    assert plugin.manifest.category == "automation"
    schema = plugin.config_schema()
    assert schema["required"] == ["base_url", "model"]
    assert schema["properties"]["api_key"]["writeOnly"] is True
