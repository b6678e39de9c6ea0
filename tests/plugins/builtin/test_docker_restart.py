"""docker_restart against a small Engine API server, without an engine, and (when one answers
on this machine) a real Docker daemon."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from tests.plugins.builtin.actions import ProgressLog, action_context
from tests.plugins.builtin.docker_engine import (
    Engine,
    container,
    real_engine_reachable,
    start_engine,
)
from unity.plugins.builtin import docker_restart
from unity.plugins.builtin.docker_restart import DockerRestart, DockerRestartParams
from unity.plugins.sdk import ActionContext, ActionError

COMPOSE = "com.docker.compose.project"


@pytest.fixture
def engine(serve: Callable[..., Any]) -> Engine:
    state = start_engine(serve)
    state.containers = [
        container("1", "web-1", labels={COMPOSE: "shop"}),
        container("2", "web-2", labels={COMPOSE: "shop", "tier": "front"}),
        container("3", "db", labels={COMPOSE: "shop"}),
        container("4", "web-old", state="exited", labels={COMPOSE: "shop"}),
        container("5", "web-3", labels={COMPOSE: "blog"}),
    ]
    return state


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def context(tmp_path: Path, http: httpx.AsyncClient, **params: Any) -> ActionContext[Any]:
    return action_context(DockerRestart, params, data_dir=tmp_path, http=http)


def names(steps: list[dict[str, Any]]) -> list[str]:
    return [step["name"] for step in steps]


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ({"names": ["web-*"]}, ["web-1", "web-2", "web-3"]),
        ({"labels": [f"{COMPOSE}=shop"]}, ["db", "web-1", "web-2"]),
        ({"names": ["web-*"], "labels": [f"{COMPOSE}=shop", "tier"]}, ["web-2"]),
        ({"names": ["web-*"], "include_stopped": True}, ["web-1", "web-2", "web-3", "web-old"]),
        ({"names": ["cache"]}, []),
    ],
)
async def test_the_plan_lists_the_matching_containers(
    tmp_path: Path,
    http: httpx.AsyncClient,
    engine: Engine,
    match: dict[str, Any],
    expected: list[str],
) -> None:
    plan = await DockerRestart().plan(context(tmp_path, http, base_url=engine.base_url, **match))

    assert names(plan.steps) == expected
    assert plan.metrics == {"containers_planned": len(expected)}
    assert engine.restarted == []


async def test_the_plan_describes_each_container(
    tmp_path: Path, http: httpx.AsyncClient, engine: Engine
) -> None:
    plan = await DockerRestart().plan(
        context(tmp_path, http, base_url=engine.base_url, names=["db"])
    )

    assert plan.summary == f"Restart 1 containers named db on {engine.base_url}"
    assert plan.steps[0]["description"] == "restart db (db:latest, running: Up 1 hour)"


async def test_apply_restarts_exactly_the_planned_containers(
    tmp_path: Path, http: httpx.AsyncClient, engine: Engine
) -> None:
    ctx = context(tmp_path, http, base_url=engine.base_url, names=["web-*"], stop_timeout_s=3)
    action = DockerRestart()
    plan = await action.plan(ctx)
    engine.containers.remove(engine.container("web-3"))  # type: ignore[arg-type]
    engine.container("web-2")["State"] = "exited"  # type: ignore[index]
    engine.containers.append(container("6", "web-4"))  # new, not in the plan
    progress = ProgressLog()

    result = await action.apply(ctx, plan, progress)

    assert result.success
    assert engine.restarted == [("web-1", "3")]
    assert result.data["skipped"] == [
        {"name": "web-2", "reason": "is no longer running"},
        {"name": "web-3", "reason": "no longer exists"},
    ]
    assert result.metrics == {
        "containers_restarted": 1,
        "containers_skipped": 2,
        "containers_failed": 0,
        "steps": 3,
    }
    assert progress.messages == [
        "restarted web-1",
        "skipped web-2: is no longer running",
        "skipped web-3: no longer exists",
    ]


async def test_stopped_containers_are_started_when_included(
    tmp_path: Path, http: httpx.AsyncClient, engine: Engine
) -> None:
    ctx = context(tmp_path, http, base_url=engine.base_url, names=["web-old"], include_stopped=True)
    action = DockerRestart()

    result = await action.apply(ctx, await action.plan(ctx), ProgressLog())

    assert result.data["restarted"] == ["web-old"]
    assert engine.container("web-old")["State"] == "running"  # type: ignore[index]


async def test_without_an_engine_it_fails_cleanly(tmp_path: Path, http: httpx.AsyncClient) -> None:
    socket_path = tmp_path / "docker.sock"

    with pytest.raises(ActionError) as caught:
        await DockerRestart().plan(
            context(tmp_path, http, base_url=f"unix://{socket_path}", names=["web"])
        )

    assert str(caught.value) == (
        f"Docker engine not reachable at unix://{socket_path}: No such file or directory"
    )


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"names": []},
        {"names": [""]},
        {"labels": ["  "]},
        {"names": ["a"], "stop_timeout_s": -1},
    ],
)
def test_something_must_pick_the_containers(params: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        DockerRestartParams.model_validate(params)


@pytest.mark.skipif(not real_engine_reachable(), reason="no Docker daemon on this machine")
async def test_a_real_engine_plans_by_name(tmp_path: Path, http: httpx.AsyncClient) -> None:
    # Planning only, with a name no container has: nothing on the machine is restarted.
    ctx = action_context(
        DockerRestart,
        {"names": ["unity-test-no-such-container-*"], "include_stopped": True},
        data_dir=tmp_path,
        http=http,
    )

    plan = await DockerRestart().plan(ctx)

    assert plan.empty
    assert plan.summary.startswith("Nothing to restart: no container named unity-test-no-such")


def test_the_manifest() -> None:
    plugin = docker_restart.PLUGIN
    assert plugin.kind == "action"
    assert plugin.manifest.category == "docker"
    assert plugin.manifest.permissions == ("docker",)
    assert not plugin.supports_rollback()
