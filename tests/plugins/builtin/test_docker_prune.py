"""docker_prune against a small Engine API server, without an engine, and (when one answers on
this machine) a real Docker daemon."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from tests.fakes import FakeClock
from tests.plugins.builtin.actions import ProgressLog, action_context
from tests.plugins.builtin.docker_engine import (
    Engine,
    container,
    image,
    real_engine_reachable,
    start_engine,
)
from unity.plugins.builtin import docker_prune
from unity.plugins.builtin.docker_prune import DockerPrune
from unity.plugins.sdk import ActionContext, ActionError, Plan

NOW = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = 3_600
OLD = int(NOW.timestamp()) - 48 * HOUR
RECENT = int(NOW.timestamp()) - 1 * HOUR


@pytest.fixture
def engine(serve: Callable[..., Any]) -> Engine:
    return start_engine(serve)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def context(tmp_path: Path, http: httpx.AsyncClient, **params: Any) -> ActionContext[Any]:
    return action_context(DockerPrune, params, data_dir=tmp_path, http=http, clock=FakeClock(NOW))


@pytest.fixture
def images(engine: Engine) -> Engine:
    """Dangling old and recent images, an old tagged unused one, one used by a container."""
    engine.images = [
        image("a", size=100_000_000, created=OLD),
        image("b", size=50_000_000, created=RECENT),
        image("c", ["app:1.0", "app:old"], size=300_000_000, created=OLD - HOUR),
        image("d", ["nginx:1.27"], size=200_000_000, created=OLD),
        image("e", size=10_000_000, created=OLD),
    ]
    engine.containers = [
        container("1", "web", image_id=image("d")["Id"]),
        container("2", "stopped-job", state="exited", image_id=image("e")["Id"]),
    ]
    return engine


async def test_the_plan_lists_old_dangling_images_with_their_sizes(
    tmp_path: Path, http: httpx.AsyncClient, images: Engine
) -> None:
    plan = await DockerPrune().plan(context(tmp_path, http, base_url=images.base_url))

    assert [step["id"] for step in plan.steps] == [image("a")["Id"]]
    assert plan.steps[0]["description"] == (
        "remove image aaaaaaaaaaaa, 100.0 MB, created 2025-12-30 00:00"
    )
    assert plan.metrics == {"images_planned": 1, "bytes_planned": 100_000_000}
    assert plan.summary == (
        f"Remove 1 dangling images (100.0 MB) older than 24 h on {images.base_url}"
    )
    assert images.removed == []


async def test_unused_takes_tagged_images_no_container_uses(
    tmp_path: Path, http: httpx.AsyncClient, images: Engine
) -> None:
    ctx = context(tmp_path, http, base_url=images.base_url, images="unused", older_than_hours=0)

    plan = await DockerPrune().plan(ctx)

    # Oldest first; d and e are used by containers (running or not).
    assert [(step["id"][7], step["tags"]) for step in plan.steps] == [
        ("c", ["app:1.0", "app:old"]),
        ("a", []),
        ("b", []),
    ]
    assert plan.metrics["bytes_planned"] == 450_000_000


async def test_apply_removes_exactly_the_planned_images(
    tmp_path: Path, http: httpx.AsyncClient, images: Engine
) -> None:
    ctx = context(tmp_path, http, base_url=images.base_url, images="unused")
    action = DockerPrune()
    plan = await action.plan(ctx)
    images.images.append(image("f", size=1, created=OLD))  # appeared after the plan
    progress = ProgressLog()

    result = await action.apply(ctx, plan, progress)

    assert result.success
    assert images.removed == ["app:1.0", "app:old", image("a")["Id"]]
    assert {i["Id"][7] for i in images.images} == {"b", "d", "e", "f"}
    assert result.metrics == {
        "bytes_freed": 400_000_000,
        "images_removed": 2,
        "images_skipped": 0,
        "images_failed": 0,
        "steps": 2,
    }
    assert progress.messages == [
        "removed cccccccccccc (app:1.0, app:old) (300.0 MB)",
        "removed aaaaaaaaaaaa (100.0 MB)",
    ]


async def test_images_that_changed_since_the_plan_are_skipped(
    tmp_path: Path, http: httpx.AsyncClient, images: Engine
) -> None:
    ctx = context(tmp_path, http, base_url=images.base_url, images="unused")
    action = DockerPrune()
    plan = await action.plan(ctx)
    images.containers.append(container("3", "new", image_id=image("a")["Id"]))
    images.image("app:old")["RepoTags"].append("app:stable")  # type: ignore[index]

    result = await action.apply(ctx, plan, ProgressLog())

    assert result.success
    assert images.removed == []
    assert result.data["skipped"] == [
        {
            "id": image("c")["Id"],
            "reason": "its tags changed since the plan (now ['app:1.0', 'app:old', 'app:stable'])",
        },
        {"id": image("a")["Id"], "reason": "a container uses it now"},
    ]


async def test_an_engine_refusal_is_a_failed_result(
    tmp_path: Path, http: httpx.AsyncClient, images: Engine
) -> None:
    ctx = context(tmp_path, http, base_url=images.base_url)
    action = DockerPrune()
    plan = await action.plan(ctx)
    images.refuse_removal[image("a")["Id"]] = "image is being used by a running container"

    result = await action.apply(ctx, plan, ProgressLog())

    assert not result.success
    assert result.data["failed"] == [
        {"id": image("a")["Id"], "error": "image is being used by a running container"}
    ]
    assert result.summary.endswith("1 failed (image is being used by a running container)")


async def test_without_an_engine_it_fails_cleanly(
    tmp_path: Path, http: httpx.AsyncClient, closed_port: int
) -> None:
    socket_path = tmp_path / "docker.sock"

    with pytest.raises(ActionError) as caught:
        await DockerPrune().plan(context(tmp_path, http, base_url=f"unix://{socket_path}"))
    assert str(caught.value) == (
        f"Docker engine not reachable at unix://{socket_path}: No such file or directory"
    )

    address = f"tcp://127.0.0.1:{closed_port}"
    with pytest.raises(
        ActionError, match=f"^Docker engine not reachable at {address}: Connection refused$"
    ):
        await DockerPrune().apply(
            context(tmp_path, http, base_url=address), docker_prune_plan(), ProgressLog()
        )


def docker_prune_plan() -> Plan:
    return Plan(summary="remove one image", data={"images": []})


@pytest.mark.skipif(not real_engine_reachable(), reason="no Docker daemon on this machine")
async def test_a_real_engine_lists_its_dangling_images(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    ctx = action_context(DockerPrune, {"older_than_hours": 0}, data_dir=tmp_path, http=http)
    plan = await DockerPrune().plan(ctx)  # planning only: nothing on the machine changes

    client = docker.from_env()
    try:
        dangling = {i.id for i in client.images.list(filters={"dangling": True})}
        used = {c.image.id for c in client.containers.list(all=True) if c.image is not None}
    finally:
        client.close()
    assert {step["id"] for step in plan.steps} == dangling - used


def test_the_manifest() -> None:
    plugin = docker_prune.PLUGIN
    assert plugin.kind == "action"
    assert plugin.manifest.category == "docker"
    assert plugin.manifest.permissions == ("docker",)
