"""Turn a task's description into concrete steps of other actions, with a language model.

Any OpenAI-compatible chat-completions endpoint works (OpenAI, Ollama, llama.cpp's server,
vLLM, LocalAI...): ``POST {base_url}/chat/completions``. Planning goes in rounds, at most
``max_rounds`` (the parameter, else the task's ``max_rounds``, else 3): the model gets the
description and the actions it may use with their parameter schemas, and answers with a JSON
object ``{"summary": ..., "steps": [{"action": ..., "params": {...}, "reason": ...}]}``.
Every proposed step is checked by planning it with its own action; any problem (not JSON, an
unknown action, parameters that do not validate, an action that refuses to plan) is sent
back to the model, which answers again. The resulting plan holds each step's action, params
and that action's own concrete plan, so what a person approves is exactly what will run.

``apply`` applies each step's plan in order through the run engine and stops at the first
step that fails. Token usage (``prompt_tokens``, ``completion_tokens``, ``total_tokens`` from
each response's ``usage``) is recorded in the plan's and the result's metrics.

JSON output: with ``json_mode: auto`` the request asks for ``response_format: json_object``
and, when the endpoint rejects that (400/422), asks again without it. Either way the answer
is parsed leniently: a bare object, a fenced ```json block, or the first object in the text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from pydantic import Field, field_validator

from unity.plugins.builtin._secrets import MASK
from unity.plugins.sdk import (
    Action,
    ActionContext,
    ActionError,
    ActionInfo,
    ActionParams,
    Manifest,
    Plan,
    Progress,
    Result,
    StepRunner,
)

__all__ = ["PLUGIN", "LlmPlanner", "LlmPlannerParams", "extract_json"]

DEFAULT_ROUNDS = 3
USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")
FENCED = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
SYSTEM_PROMPT = """\
You plan maintenance work for Unity, a monitoring and automation hub for a homelab.
Turn the user's request into a short list of steps. Each step uses one of the actions
below, with parameters that validate against that action's JSON Schema.

Answer with one JSON object and nothing else:
{{"summary": "<one line saying what the steps do>",
  "steps": [{{"action": "<action id>", "params": {{...}}, "reason": "<why this step>"}}]}}

Use at most {max_steps} steps. If nothing should be done, answer with an empty "steps" list.
Do not invent actions or parameters.

Actions:
{actions}"""


class LlmPlannerParams(ActionParams):
    """Which model plans, and how hard it may try."""

    base_url: str = Field(
        description="Base URL of an OpenAI-compatible API (the part before /chat/completions), "
        "e.g. https://api.openai.com/v1 or http://127.0.0.1:11434/v1 for Ollama.",
        examples=["http://127.0.0.1:11434/v1"],
    )
    model: str = Field(min_length=1, max_length=200, description="Model name, e.g. gpt-4o-mini.")
    api_key: str | None = Field(
        default=None,
        description="Sent as 'Authorization: Bearer <key>'; masked in the plan.",
        json_schema_extra={"format": "password", "writeOnly": True},
    )
    temperature: float = Field(default=0.2, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int = Field(
        default=2_048, ge=16, le=200_000, description="Most tokens the model may answer with."
    )
    max_rounds: int | None = Field(
        default=None,
        ge=1,
        le=10,
        description="Rounds of ask, check, correct; default: the task's max_rounds, else 3.",
    )
    max_steps: int = Field(default=10, ge=1, le=50, description="Most steps a plan may have.")
    allowed_actions: list[str] | None = Field(
        default=None,
        description="Action ids the model may use; default: every action Unity offers.",
    )
    json_mode: Literal["auto", "json_object", "prompt"] = Field(
        default="auto",
        description="auto: ask for response_format json_object, without it if the endpoint "
        "refuses; json_object: always ask; prompt: never ask (the prompt still asks for JSON).",
    )
    instructions: str | None = Field(
        default=None, max_length=10_000, description="Extra instructions for the model."
    )
    timeout_s: float = Field(
        default=120, gt=0, le=1_800, description="Seconds for each request to the model."
    )

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL as exc:
            raise ValueError(f"invalid URL: {exc}") from exc
        if url.scheme not in {"http", "https"} or not url.host:
            raise ValueError("base_url must be an absolute http:// or https:// URL")
        return value.rstrip("/")


def extract_json(text: str) -> Any:
    """The JSON value in a model's answer: the whole text, a fenced block, or the first object.

    Raises ``ValueError`` when there is none.
    """
    stripped = text.strip()
    candidates = [stripped, *(block.strip() for block in FENCED.findall(text))]
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[{\[]", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict) or (isinstance(value, list) and value):
            return value
    raise ValueError("the answer holds no JSON object")


@dataclass(slots=True)
class _Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    requests: int = 0

    def add(self, usage: Any) -> None:
        self.requests += 1
        if not isinstance(usage, dict):
            return
        counts = {name: usage.get(name) for name in USAGE_FIELDS}
        values = {k: int(v) for k, v in counts.items() if isinstance(v, int | float)}
        self.prompt_tokens += values.get("prompt_tokens", 0)
        self.completion_tokens += values.get("completion_tokens", 0)
        self.total_tokens += values.get(
            "total_tokens", values.get("prompt_tokens", 0) + values.get("completion_tokens", 0)
        )

    def metrics(self) -> dict[str, float]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "llm_requests": self.requests,
        }


@dataclass(slots=True)
class _Conversation:
    """One planning session with the model."""

    params: LlmPlannerParams
    ctx: ActionContext[LlmPlannerParams]
    usage: _Usage = field(default_factory=_Usage)
    messages: list[dict[str, str]] = field(default_factory=list)
    json_format: bool = True

    @property
    def url(self) -> str:
        return f"{self.params.base_url}/chat/completions"

    async def ask(self) -> str:
        """Send the conversation so far; return the model's answer (and record it)."""
        response = await self._post(self.json_format and self.params.json_mode != "prompt")
        if (
            response.status_code in {400, 422}
            and self.json_format
            and self.params.json_mode == "auto"
        ):
            self.json_format = False  # the endpoint does not know response_format
            response = await self._post(False)
        if response.status_code >= 400:
            raise ActionError(
                f"LLM endpoint {self.url} answered {response.status_code}: "
                f"{response.text[:300].strip()}"
            )
        try:
            payload = response.json()
            content = payload["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ActionError(
                f"LLM endpoint {self.url} gave no chat completion: {response.text[:300].strip()}"
            ) from exc
        self.usage.add(payload.get("usage"))
        if not isinstance(content, str):
            content = json.dumps(content)
        self.messages.append({"role": "assistant", "content": content})
        return content

    async def _post(self, json_format: bool) -> httpx.Response:
        params = self.params
        body: dict[str, Any] = {
            "model": params.model,
            "messages": self.messages,
            "temperature": params.temperature,
            "max_tokens": params.max_tokens,
        }
        if json_format:
            body["response_format"] = {"type": "json_object"}
        headers = {"Authorization": f"Bearer {params.api_key}"} if params.api_key else {}
        try:
            return await self.ctx.http.post(
                self.url, json=body, headers=headers, timeout=params.timeout_s
            )
        except httpx.HTTPError as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise ActionError(f"LLM endpoint {self.url} not reachable: {reason}") from exc


def _describe(actions: Iterable[ActionInfo]) -> str:
    return "\n".join(
        f"- {info.plugin_id}: {info.description}\n  params schema: "
        f"{json.dumps(info.params_schema, separators=(',', ':'))}"
        for info in actions
    )


def _steps_of(proposal: Any) -> tuple[str | None, list[Any]]:
    """The summary and step list of a parsed answer; raises ``ValueError`` on another shape."""
    if isinstance(proposal, list):
        return None, proposal
    if not isinstance(proposal, dict) or not isinstance(proposal.get("steps"), list):
        raise ValueError('the answer must be a JSON object with a "steps" list')
    summary = proposal.get("summary")
    return (summary if isinstance(summary, str) and summary.strip() else None), proposal["steps"]


def _runner(ctx: ActionContext[LlmPlannerParams]) -> StepRunner:
    if ctx.steps is None:
        raise ActionError("llm_planner needs the run engine to plan and apply its steps")
    return ctx.steps


class _StepProgress:
    """Reports a step's own progress under the step's number."""

    def __init__(self, progress: Progress, number: int, total: int, action: str) -> None:
        self._progress = progress
        self._number = number
        self._total = total
        self._action = action

    async def __call__(
        self, step: int, total: int | None, message: str, *, percent: float | None = None
    ) -> None:
        await self._progress(
            self._number, self._total, f"[{self._number}/{self._total} {self._action}] {message}"
        )


class LlmPlanner(Action[LlmPlannerParams]):
    """Plans a task's steps from its description with a language model, then applies them."""

    manifest = Manifest(
        id="llm_planner",
        name="LLM planner",
        version="1.0.0",
        kind="action",
        category="automation",
        description="Turn the task's description into steps using the other actions, with "
        "any OpenAI-compatible model; each step's concrete plan is shown for approval.",
        permissions=("network",),
    )

    async def plan(self, ctx: ActionContext[LlmPlannerParams]) -> Plan:
        """Ask, check each proposed step by planning it, feed problems back; up to max_rounds."""
        params = ctx.params
        runner = _runner(ctx)
        if not ctx.description.strip():
            raise ActionError("the task has no description for the model to plan from")
        offered = [
            info
            for info in runner.actions()
            if info.plugin_id != ctx.plugin_id
            and (params.allowed_actions is None or info.plugin_id in params.allowed_actions)
        ]
        if not offered:
            raise ActionError("no action is available for the model to use")
        rounds = params.max_rounds or ctx.max_rounds or DEFAULT_ROUNDS
        system = SYSTEM_PROMPT.format(max_steps=params.max_steps, actions=_describe(offered))
        if params.instructions:
            system += f"\n\nAlso:\n{params.instructions}"
        talk = _Conversation(params, ctx)
        talk.messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": ctx.description.strip()},
        ]
        problems: list[str] = []
        for round_number in range(1, rounds + 1):
            answer = await talk.ask()
            summary, steps, problems = await self._check(answer, runner, offered, params)
            ctx.log.info(
                "llm plan round", round=round_number, problems=len(problems), steps=len(steps)
            )
            if not problems:
                return self._plan(summary, steps, talk, round_number)
            talk.messages.append(
                {
                    "role": "user",
                    "content": "That plan cannot be used:\n"
                    + "\n".join(f"- {problem}" for problem in problems)
                    + "\nAnswer again with the corrected JSON object only.",
                }
            )
        raise ActionError(
            f"the model gave no usable plan in {rounds} rounds "
            f"({talk.usage.total_tokens} tokens); last problems: {'; '.join(problems)}"
        )

    @staticmethod
    async def _check(
        answer: str, runner: StepRunner, offered: list[ActionInfo], params: LlmPlannerParams
    ) -> tuple[str | None, list[dict[str, Any]], list[str]]:
        """Parse an answer and plan each step; return the summary, the steps and the problems."""
        try:
            summary, proposed = _steps_of(extract_json(answer))
        except ValueError as exc:
            return None, [], [str(exc)]
        if len(proposed) > params.max_steps:
            return None, [], [f"{len(proposed)} steps, more than the {params.max_steps} allowed"]
        known = {info.plugin_id for info in offered}
        steps: list[dict[str, Any]] = []
        problems: list[str] = []
        for number, item in enumerate(proposed, start=1):
            if not isinstance(item, dict):
                problems.append(f"step {number}: must be an object with action and params")
                continue
            action, step_params = item.get("action"), item.get("params", {})
            if not isinstance(action, str) or action not in known:
                problems.append(
                    f"step {number}: unknown action {action!r}; use one of {sorted(known)}"
                )
                continue
            if not isinstance(step_params, dict):
                problems.append(f"step {number} ({action}): params must be a JSON object")
                continue
            try:
                sub_plan = await runner.plan(action, step_params)
            except Exception as exc:  # any refusal of the step is fed back to the model
                problems.append(f"step {number} ({action}): {exc}")
                continue
            reason = item.get("reason")
            steps.append(
                {
                    "action": action,
                    "params": step_params,
                    "reason": reason if isinstance(reason, str) else "",
                    "plan": sub_plan.model_dump(mode="json"),
                }
            )
        return summary, steps, problems

    @staticmethod
    def _plan(
        summary: str | None, steps: list[dict[str, Any]], talk: _Conversation, rounds: int
    ) -> Plan:
        params = talk.params
        if summary is None:
            summary = (
                f"{len(steps)} steps: {', '.join(step['action'] for step in steps)}"
                if steps
                else "Nothing to do"
            )
        shown = [
            {
                "description": f"{step['action']}: {step['plan']['summary']}",
                "action": step["action"],
                "params": step["params"],
                "reason": step["reason"],
                "plan": step["plan"],
            }
            for step in steps
        ]
        return Plan(
            summary=summary,
            steps=shown,
            data={
                "steps": [{k: step[k] for k in ("action", "params", "plan")} for step in steps],
                "llm": {
                    "base_url": params.base_url,
                    "model": params.model,
                    "api_key": MASK if params.api_key else None,
                },
                "rounds": rounds,
            },
            metrics=talk.usage.metrics() | {"llm_rounds": rounds},
        )

    async def apply(
        self, ctx: ActionContext[LlmPlannerParams], plan: Plan, progress: Progress
    ) -> Result:
        """Apply each step's plan in order; stop at the first failure."""
        runner = _runner(ctx)
        steps = plan.data.get("steps") or []
        total = len(steps)
        outcomes: list[dict[str, Any]] = []
        metrics: dict[str, float] = dict(plan.metrics)
        failed: str | None = None
        for number, step in enumerate(steps, start=1):
            action = str(step["action"])
            sub_plan = Plan.model_validate(step["plan"])
            await progress(number, total, f"step {number}/{total}: {action}: {sub_plan.summary}")
            try:
                outcome = await runner.apply(
                    action,
                    sub_plan,
                    _StepProgress(progress, number, total, action),
                    params=dict(step.get("params") or {}),
                )
            except ActionError as exc:
                outcome = Result(success=False, summary=str(exc))
            outcomes.append(
                {
                    "action": action,
                    "success": outcome.success,
                    "summary": outcome.summary,
                    "data": outcome.data,
                    "metrics": outcome.metrics,
                }
            )
            for name, value in outcome.metrics.items():
                key = f"{action}_{name}"
                metrics[key] = metrics.get(key, 0) + value
            if not outcome.success:
                failed = f"step {number} of {total} ({action}) failed: {outcome.summary}"
                break
        completed = sum(1 for outcome in outcomes if outcome["success"])
        metrics |= {"steps": total, "steps_completed": completed}
        return Result(
            success=failed is None,
            summary=failed or f"Applied {completed} of {total} steps",
            data={"steps": outcomes},
            metrics=metrics,
        )


PLUGIN = LlmPlanner
