"""Running action plugins: their instances, contexts and the ``StepRunner`` composing them.

The engine (:mod:`unity.runs.executor`) decides *when* an action plans, applies or rolls
back; this module knows *how*: find the class, validate the parameters, build the
:class:`~unity.plugins.sdk.ActionContext` and check what the action returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import structlog
from pydantic import ValidationError

from unity.core.clock import Clock
from unity.errors import NotFoundError
from unity.plugins.registry import PluginRegistry
from unity.plugins.sdk import (
    Action,
    ActionContext,
    ActionError,
    ActionInfo,
    ActionParams,
    Plan,
    Progress,
    Result,
)

log = structlog.stdlib.get_logger("unity.runs")


@dataclass(frozen=True, slots=True)
class RunScope:
    """What every context of one run shares."""

    task_id: str
    run_id: str
    tenant_id: str
    description: str
    max_rounds: int | None
    allow_admin_actions: bool
    """Whether steps may use actions that need the admin scope (the task's creator had it)."""


def action_class(registry: PluginRegistry, plugin_id: str) -> type[Action[Any]]:
    """The action class for ``plugin_id``; ``ActionError`` when it is missing, broken or no action."""
    try:
        spec = registry.get(plugin_id)
    except NotFoundError:
        raise ActionError(f"action {plugin_id!r} is not installed") from None
    if spec.cls is None:
        raise ActionError(f"action {plugin_id!r} is broken: {spec.error}")
    if not issubclass(spec.cls, Action):
        raise ActionError(f"plugin {plugin_id!r} is not an action")
    return spec.cls


def validate_params(cls: type[Action[Any]], params: dict[str, Any]) -> ActionParams:
    """``params`` parsed by the action's model; ``ActionError`` saying which field is wrong."""
    try:
        return cls.params_model.model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg']}" for e in exc.errors()
        )
        raise ActionError(f"invalid parameters for {cls.manifest.id}: {problems}") from exc


class ActionHost:
    """Builds action instances and contexts for the runs of one engine."""

    def __init__(
        self, *, registry: PluginRegistry, http: httpx.AsyncClient, clock: Clock, data_dir: Path
    ) -> None:
        self.registry = registry
        self._http = http
        self._clock = clock
        self._data_dir = data_dir

    def actions(self) -> list[type[Action[Any]]]:
        """Every working action class, by id."""
        return [
            spec.cls
            for spec in self.registry.healthy()
            if spec.cls is not None and issubclass(spec.cls, Action)
        ]

    def context(
        self, plugin_id: str, params: dict[str, Any], scope: RunScope, *, nested: bool = False
    ) -> tuple[Action[Any], ActionContext[Any]]:
        """A fresh instance of the action and its context for this run.

        A ``nested`` action (a step of another) gets no ``steps``: composition is one level.
        """
        cls = action_class(self.registry, plugin_id)
        validated = validate_params(cls, params)
        ctx: ActionContext[Any] = ActionContext(
            params=validated,
            http=self._http,
            clock=self._clock,
            log=log.bind(plugin_id=plugin_id, run_id=scope.run_id, task_id=scope.task_id),
            plugin_id=plugin_id,
            task_id=scope.task_id,
            run_id=scope.run_id,
            tenant_id=scope.tenant_id,
            data_dir=self._data_dir,
            description=scope.description,
            max_rounds=scope.max_rounds,
            steps=None if nested else Steps(self, plugin_id, scope),
        )
        return cls(), ctx

    async def plan(
        self, plugin_id: str, params: dict[str, Any], scope: RunScope, *, nested: bool = False
    ) -> Plan:
        """Plan with the action; ``ActionError`` when it returns something else than a Plan."""
        action, ctx = self.context(plugin_id, params, scope, nested=nested)
        plan = await action.plan(ctx)
        if not isinstance(plan, Plan):
            raise ActionError(f"{plugin_id}.plan() returned {type(plan).__name__}, not a Plan")
        return plan

    async def apply(
        self,
        plugin_id: str,
        params: dict[str, Any],
        scope: RunScope,
        plan: Plan,
        progress: Progress,
        *,
        nested: bool = False,
    ) -> Result:
        """Apply ``plan`` with the action."""
        action, ctx = self.context(plugin_id, params, scope, nested=nested)
        result = await action.apply(ctx, plan, progress)
        if not isinstance(result, Result):
            raise ActionError(f"{plugin_id}.apply() returned {type(result).__name__}, not a Result")
        return result

    async def rollback(
        self, plugin_id: str, params: dict[str, Any], scope: RunScope, plan: Plan, result: Result
    ) -> Result:
        """Undo what ``apply`` did."""
        action, ctx = self.context(plugin_id, params, scope)
        if not action.supports_rollback():
            raise ActionError(f"action {plugin_id!r} cannot roll back")
        undone = await action.rollback(ctx, plan, result)
        if not isinstance(undone, Result):
            raise ActionError(
                f"{plugin_id}.rollback() returned {type(undone).__name__}, not a Result"
            )
        return undone


class Steps:
    """The :class:`~unity.plugins.sdk.StepRunner` an action gets: other actions as its steps.

    Never the calling action itself (no recursion), and actions that need the admin
    scope only when the task was created by an admin key.
    """

    def __init__(self, host: ActionHost, caller: str, scope: RunScope) -> None:
        self._host = host
        self._caller = caller
        self._scope = scope

    def _allowed(self, cls: type[Action[Any]]) -> bool:
        if cls.manifest.id == self._caller:
            return False
        return self._scope.allow_admin_actions or not cls.requires_admin

    def actions(self) -> list[ActionInfo]:
        return [
            ActionInfo(cls.manifest.id, cls.manifest.description, cls.config_schema())
            for cls in self._host.actions()
            if self._allowed(cls)
        ]

    def _check(self, action: str) -> None:
        cls = action_class(self._host.registry, action)
        if not self._allowed(cls):
            raise ActionError(f"action {action!r} may not be used as a step of {self._caller}")

    async def plan(self, action: str, params: dict[str, Any]) -> Plan:
        self._check(action)
        return await self._host.plan(action, params, self._scope, nested=True)

    async def apply(
        self,
        action: str,
        plan: Plan,
        progress: Progress,
        *,
        params: dict[str, Any] | None = None,
    ) -> Result:
        self._check(action)
        return await self._host.apply(
            action, params or {}, self._scope, plan, progress, nested=True
        )


def describe(exc: BaseException) -> str:
    """A one-line error for a run: the message of an ``ActionError``, else the type and message."""
    if isinstance(exc, ActionError):
        return str(exc) or "the action failed"
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"
