"""What the built-in action tests share: an ActionContext as the engine builds it, a recorder
of progress reports, and a StepRunner over real action classes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import structlog
from pydantic import ValidationError

from unity.core.clock import Clock, SystemClock
from unity.plugins.sdk import (
    Action,
    ActionContext,
    ActionError,
    ActionInfo,
    ActionParams,
    Plan,
    Progress,
    Result,
    StepRunner,
)


def action_context(
    action: type[Action[Any]],
    params: ActionParams | dict[str, Any],
    *,
    data_dir: Path,
    http: httpx.AsyncClient,
    clock: Clock | None = None,
    run_id: str = "run-1",
    description: str = "",
    max_rounds: int | None = None,
    steps: StepRunner | None = None,
) -> ActionContext[Any]:
    """The context an action gets for one plan, apply or rollback."""
    if isinstance(params, dict):
        params = action.params_model.model_validate(params)
    return ActionContext(
        params=params,
        http=http,
        clock=clock or SystemClock(),
        log=structlog.get_logger(),
        plugin_id=action.manifest.id,
        task_id="task-1",
        run_id=run_id,
        tenant_id="default",
        data_dir=data_dir,
        description=description,
        max_rounds=max_rounds,
        steps=steps,
    )


@dataclass
class ProgressLog:
    """A ``Progress`` that keeps every report."""

    reports: list[tuple[int, int | None, str]] = field(default_factory=list)

    async def __call__(
        self, step: int, total: int | None, message: str, *, percent: float | None = None
    ) -> None:
        self.reports.append((step, total, message))

    @property
    def messages(self) -> list[str]:
        return [message for _, _, message in self.reports]


@dataclass
class Steps:
    """A StepRunner over real actions, as the run engine provides one to ``llm_planner``.

    ``apply`` validates the params the caller says the plan was made with and checks that
    they are the ones that produced it (remembered by the plan's digest).
    """

    actions_by_id: dict[str, type[Action[Any]]]
    data_dir: Path
    http: httpx.AsyncClient
    planned: dict[str, ActionParams] = field(default_factory=dict)
    plan_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)

    def actions(self) -> list[ActionInfo]:
        return [
            ActionInfo(cls.manifest.id, cls.manifest.description, cls.config_schema())
            for cls in self.actions_by_id.values()
        ]

    async def plan(self, action: str, params: dict[str, Any]) -> Plan:
        self.plan_calls.append((action, params))
        cls = self.actions_by_id.get(action)
        if cls is None:
            raise ActionError(f"unknown action {action!r}")
        try:
            validated = cls.params_model.model_validate(params)
        except ValidationError as exc:
            raise ActionError(f"invalid params for {action}: {exc}") from exc
        ctx = action_context(cls, validated, data_dir=self.data_dir, http=self.http)
        plan = await cls().plan(ctx)
        self.planned[plan.digest()] = validated
        return plan

    async def apply(
        self,
        action: str,
        plan: Plan,
        progress: Progress,
        *,
        params: dict[str, Any] | None = None,
    ) -> Result:
        cls = self.actions_by_id[action]
        validated = cls.params_model.model_validate(params or {})
        assert self.planned[plan.digest()] == validated, "applied with other params than planned"
        ctx = action_context(cls, validated, data_dir=self.data_dir, http=self.http)
        self.applied.append(action)
        return await cls().apply(ctx, plan, progress)
