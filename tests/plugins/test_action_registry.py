"""Discovery of action plugins: complete ones are usable, incomplete ones are broken."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from unity.plugins.registry import PluginRegistry
from unity.plugins.sdk import (
    Action,
    ActionContext,
    ActionParams,
    Manifest,
    Plan,
    Progress,
    Result,
)

BUILTIN_ACTIONS = {
    "file_cleanup": "maintenance",
    "shell_command": "automation",
    "http_request": "network",
    "docker_prune": "docker",
    "docker_restart": "docker",
    "llm_planner": "automation",
}


class EchoParams(ActionParams):
    text: str


def manifest(plugin_id: str, kind: Any = "action") -> Manifest:
    return Manifest(id=plugin_id, name=plugin_id, version="1.0.0", kind=kind)


class Complete(Action[EchoParams]):
    manifest = manifest("complete_action")

    async def plan(self, ctx: ActionContext[EchoParams]) -> Plan:
        return Plan(summary=f"echo {ctx.params.text}")

    async def apply(self, ctx: ActionContext[EchoParams], plan: Plan, progress: Progress) -> Result:
        return Result(summary=plan.summary)


class PlanOnly(Action[EchoParams]):
    manifest = manifest("plan_only")

    async def plan(self, ctx: ActionContext[EchoParams]) -> Plan:
        return Plan(summary="nothing")


class ApplyOnly(Action[EchoParams]):
    manifest = manifest("apply_only")

    async def apply(self, ctx: ActionContext[EchoParams], plan: Plan, progress: Progress) -> Result:
        return Result()


class Nothing(Action[EchoParams]):
    manifest = manifest("nothing_implemented")


class WrongKind(Complete):
    manifest = manifest("wrong_kind", kind="collector")


class BadParamsModel(Action):  # type: ignore[type-arg]
    manifest = manifest("bad_params_model")
    params_model: ClassVar[Any] = dict

    async def plan(self, ctx: ActionContext[Any]) -> Plan:
        return Plan(summary="nothing")

    async def apply(self, ctx: ActionContext[Any], plan: Plan, progress: Progress) -> Result:
        return Result()


def register(cls: type[Action[Any]]) -> Any:
    registry = PluginRegistry(entry_point_group="unity.plugins.none")
    return registry.register(cls, source="installed", origin="test bundle", verified=False)


def test_a_complete_action_is_usable() -> None:
    spec = register(Complete)

    assert not spec.broken, spec.error
    assert spec.manifest.kind == "action"
    assert spec.cls.config_schema()["required"] == ["text"]


@pytest.mark.parametrize(
    ("cls", "error"),
    [
        (PlanOnly, "apply() is not implemented"),
        (ApplyOnly, "plan() is not implemented"),
        (Nothing, "plan() and apply() are not implemented"),
        (WrongKind, "manifest kind 'collector' does not match the class kind 'action'"),
        (
            BadParamsModel,
            "config model has no JSON Schema: AttributeError: "
            "type object 'dict' has no attribute 'model_json_schema'",
        ),
    ],
)
def test_an_incomplete_action_is_broken_and_says_why(cls: type[Action[Any]], error: str) -> None:
    spec = register(cls)

    assert spec.broken
    assert spec.cls is None
    assert spec.error == error


def test_the_builtin_actions_are_discovered() -> None:
    registry = PluginRegistry(entry_point_group="unity.plugins.none")

    specs = {spec.plugin_id: spec for spec in registry.discover()}

    actions: dict[str, type[Action[Any]]] = {}
    for plugin_id, category in BUILTIN_ACTIONS.items():
        spec = specs[plugin_id]
        assert not spec.broken, spec.error
        assert spec.source == "builtin"
        assert spec.manifest is not None
        assert spec.manifest.kind == "action"
        assert spec.manifest.category == category
        assert spec.cls is not None
        assert issubclass(spec.cls, Action)
        actions[plugin_id] = spec.cls
        schema = spec.cls.config_schema()
        assert schema["type"] == "object"
        assert all(field.get("description") for field in schema["properties"].values()), plugin_id
    assert {pid for pid, cls in actions.items() if cls.requires_admin} == {"shell_command"}
    assert {pid for pid, cls in actions.items() if cls.supports_rollback()} == {"file_cleanup"}
