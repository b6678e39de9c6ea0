"""Small actions for the run tests, registered into a test registry next to the test collectors."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from tests.collection.plugins import make_registry
from unity.plugins.registry import PluginRegistry
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


def _manifest(plugin_id: str) -> Manifest:
    return Manifest(id=plugin_id, name=plugin_id, version="1.0.0", kind="action", category="test")


class WriteParams(ActionParams):
    names: list[str] = Field(min_length=1)
    fail: bool = False


class WriteFiles(Action[WriteParams]):
    """Writes one file per name under its workdir; rollback removes them."""

    manifest = _manifest("write_files")

    async def plan(self, ctx: ActionContext[WriteParams]) -> Plan:
        folder = ctx.workdir() / ctx.run_id
        return Plan(
            summary=f"write {len(ctx.params.names)} files",
            steps=[
                {"description": f"write {n}", "path": str(folder / n)} for n in ctx.params.names
            ],
            data={"folder": str(folder)},
            metrics={"tokens": 42.0},
        )

    async def apply(
        self, ctx: ActionContext[WriteParams], plan: Plan, progress: Progress
    ) -> Result:
        if ctx.params.fail:
            raise ActionError("disk on fire")
        written = []
        for number, step in enumerate(plan.steps, start=1):
            path = Path(step["path"])
            await ctx.run_blocking(path.parent.mkdir, parents=True, exist_ok=True)
            await ctx.run_blocking(path.write_text, "x")
            written.append(str(path))
            await progress(number, len(plan.steps), f"wrote {path.name}")
        return Result(
            summary=f"wrote {len(written)} files",
            data={"written": written},
            metrics={"bytes_written": float(len(written))},
        )

    async def rollback(self, ctx: ActionContext[WriteParams], plan: Plan, result: Result) -> Result:
        for path in result.data["written"]:
            await ctx.run_blocking(Path(path).unlink)
        return Result(summary=f"removed {len(result.data['written'])} files")


class Block(Action[ActionParams]):
    """Applies until cancelled; ``started`` is set once its apply runs."""

    manifest = _manifest("block")
    started: ClassVar[asyncio.Event | None] = None
    cancelled: ClassVar[int] = 0

    async def plan(self, ctx: ActionContext[ActionParams]) -> Plan:
        return Plan(summary="wait forever", steps=[{"description": "wait"}])

    async def apply(
        self, ctx: ActionContext[ActionParams], plan: Plan, progress: Progress
    ) -> Result:
        if Block.started is not None:
            Block.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            Block.cancelled += 1
            raise
        return Result()


class Nothing(Action[ActionParams]):
    """Plans nothing to do."""

    manifest = _manifest("nothing")

    async def plan(self, ctx: ActionContext[ActionParams]) -> Plan:
        return Plan(summary="all clean")

    async def apply(
        self, ctx: ActionContext[ActionParams], plan: Plan, progress: Progress
    ) -> Result:
        raise AssertionError("an empty plan is never applied")


class PlanFails(Action[ActionParams]):
    manifest = _manifest("plan_fails")

    async def plan(self, ctx: ActionContext[ActionParams]) -> Plan:
        raise ActionError("cannot reach the host")

    async def apply(
        self, ctx: ActionContext[ActionParams], plan: Plan, progress: Progress
    ) -> Result:
        raise AssertionError("a failed plan is never applied")


class AdminOnly(Action[ActionParams]):
    manifest = _manifest("admin_only")
    requires_admin = True

    async def plan(self, ctx: ActionContext[ActionParams]) -> Plan:
        return Plan(summary="root things", steps=[{"description": "sudo"}])

    async def apply(
        self, ctx: ActionContext[ActionParams], plan: Plan, progress: Progress
    ) -> Result:
        return Result(summary="done as root")


class Compose(Action[WriteParams]):
    """Plans and applies ``write_files`` as its step, through the engine's StepRunner."""

    manifest = _manifest("compose")

    async def plan(self, ctx: ActionContext[WriteParams]) -> Plan:
        assert ctx.steps is not None
        offered = [a.plugin_id for a in ctx.steps.actions()]
        inner = await ctx.steps.plan("write_files", ctx.params.model_dump())
        return Plan(
            summary=f"compose: {inner.summary}",
            steps=[{"description": s["description"]} for s in inner.steps],
            data={
                "inner": inner.model_dump(),
                "params": ctx.params.model_dump(),
                "offered": offered,
            },
        )

    async def apply(
        self, ctx: ActionContext[WriteParams], plan: Plan, progress: Progress
    ) -> Result:
        assert ctx.steps is not None
        inner = Plan.model_validate(plan.data["inner"])
        result = await ctx.steps.apply("write_files", inner, progress, params=plan.data["params"])
        return Result(summary=f"compose: {result.summary}", data=result.data)


ACTIONS = (WriteFiles, Block, Nothing, PlanFails, AdminOnly, Compose)


def registry_with_actions(*extra: type[Action[ActionParams]]) -> PluginRegistry:
    """The test collectors plus the test actions (and ``extra`` classes)."""
    registry = make_registry()
    for cls in (*ACTIONS, *extra):
        registry.register(cls, source="builtin", origin=f"tests:{cls.__name__}", verified=True)
    return registry
