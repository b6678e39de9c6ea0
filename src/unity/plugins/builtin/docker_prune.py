"""Remove unused Docker images: the plan lists each one with its size, apply removes those.

``images: dangling`` (the default) picks untagged images, as ``docker image prune`` does;
``images: unused`` picks every image no container (running or stopped) uses, as
``docker image prune --all``. Only images created more than ``older_than_hours`` ago are
taken (``--filter until=``). Applying checks each image again and skips, with the reason,
one that is gone, got other tags or is now used by a container; a tagged image is removed
tag by tag, so the engine deletes it with its last tag. ``bytes_freed`` adds up the sizes
the plan listed (layers shared with images that stay are not actually freed).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import Field

from unity.plugins.builtin._docker_actions import (
    DockerParams,
    api_error,
    call,
    connect,
    engine_address,
    human_size,
)
from unity.plugins.sdk import (
    Action,
    ActionContext,
    Manifest,
    Plan,
    Progress,
    Result,
)

try:
    import docker.errors
except ImportError:  # the optional "docker" extra; connect() reports it before this is needed
    docker = None  # type: ignore[assignment]

__all__ = ["PLUGIN", "DockerPrune", "DockerPruneParams"]

NO_TAG = "<none>:<none>"


class DockerPruneParams(DockerParams):
    """Which images to remove."""

    images: Literal["dangling", "unused"] = Field(
        default="dangling",
        description="dangling: untagged images only; unused: every image no container uses.",
    )
    older_than_hours: float = Field(
        default=24,
        ge=0,
        le=87_600,
        description="Only images created more than this many hours ago.",
    )


def _tags(image: dict[str, Any]) -> list[str]:
    return sorted(tag for tag in image.get("RepoTags") or [] if tag != NO_TAG)


def _used_images(client: Any) -> set[str]:
    return {str(c.get("ImageID")) for c in client.containers(all=True) if c.get("ImageID")}


def _candidates(client: Any, params: DockerPruneParams, cutoff: datetime) -> list[dict[str, Any]]:
    """The images the plan lists, oldest first."""
    dangling = params.images == "dangling"
    listed = client.images(filters={"dangling": True}) if dangling else client.images()
    used = _used_images(client)
    found: list[dict[str, Any]] = []
    for image in listed:
        image_id = str(image["Id"])
        created = int(image.get("Created") or 0)
        tags = _tags(image)
        if image_id in used or created > cutoff.timestamp() or (dangling and tags):
            continue
        found.append(
            {"id": image_id, "tags": tags, "size": int(image.get("Size") or 0), "created": created}
        )
    return sorted(found, key=lambda image: (image["created"], image["id"]))


def _remove(client: Any, planned: dict[str, Any]) -> tuple[str, str | None]:
    """Remove one planned image: ``("removed"|"skipped"|"failed", reason)``."""
    try:
        current = client.inspect_image(planned["id"])
    except docker.errors.NotFound:
        return "skipped", "already removed"
    if _tags(current) != planned["tags"]:
        return "skipped", f"its tags changed since the plan (now {_tags(current) or 'none'})"
    if planned["id"] in _used_images(client):
        return "skipped", "a container uses it now"
    try:
        for name in planned["tags"] or [planned["id"]]:
            client.remove_image(name)
    except docker.errors.NotFound:
        return "skipped", "already removed"
    except docker.errors.APIError as exc:
        return "failed", api_error(exc)
    return "removed", None


def _label(image: dict[str, Any]) -> str:
    short = image["id"].removeprefix("sha256:")[:12]
    return f"{short} ({', '.join(image['tags'])})" if image["tags"] else short


class DockerPrune(Action[DockerPruneParams]):
    """Removes dangling or unused images of a Docker engine, listed one by one in the plan."""

    manifest = Manifest(
        id="docker_prune",
        name="Docker image prune",
        version="1.0.0",
        kind="action",
        category="docker",
        description="Remove dangling (or all unused) Docker images older than a number of "
        "hours; the plan lists each image and its size.",
        permissions=("docker",),
    )

    async def plan(self, ctx: ActionContext[DockerPruneParams]) -> Plan:
        """List the images that would go; nothing is removed."""
        params = ctx.params
        client = await connect(ctx, params)
        cutoff = ctx.clock.now() - timedelta(hours=params.older_than_hours)
        try:
            images = await call(ctx, params, _candidates, client, params, cutoff)
        finally:
            await ctx.run_blocking(client.close)
        total = sum(image["size"] for image in images)
        kind = "dangling" if params.images == "dangling" else "unused"
        age = f"older than {params.older_than_hours:g} h"
        address = engine_address(params)
        summary = (
            f"Remove {len(images)} {kind} images ({human_size(total)}) {age} on {address}"
            if images
            else f"Nothing to remove: no {kind} image {age} on {address}"
        )
        steps = [
            {
                "description": f"remove image {_label(image)}, {human_size(image['size'])}, "
                f"created {datetime.fromtimestamp(image['created'], UTC):%Y-%m-%d %H:%M}",
                **image,
            }
            for image in images
        ]
        return Plan(
            summary=summary,
            steps=steps,
            data={"address": address, "images": images},
            metrics={"images_planned": len(images), "bytes_planned": total},
        )

    async def apply(
        self, ctx: ActionContext[DockerPruneParams], plan: Plan, progress: Progress
    ) -> Result:
        """Remove the planned images that are still unused and unchanged."""
        params = ctx.params
        images: list[dict[str, Any]] = list(plan.data.get("images") or [])
        client = await connect(ctx, params)
        removed: list[dict[str, Any]] = []
        skipped: list[dict[str, str]] = []
        failed: list[dict[str, str]] = []
        try:
            for number, image in enumerate(images, start=1):
                outcome, reason = await call(ctx, params, _remove, client, image)
                label = _label(image)
                if outcome == "removed":
                    removed.append(
                        {"id": image["id"], "tags": image["tags"], "size": image["size"]}
                    )
                    message = f"removed {label} ({human_size(image['size'])})"
                elif outcome == "skipped":
                    skipped.append({"id": image["id"], "reason": str(reason)})
                    message = f"skipped {label}: {reason}"
                else:
                    failed.append({"id": image["id"], "error": str(reason)})
                    message = f"failed {label}: {reason}"
                await progress(number, len(images), message)
        finally:
            await ctx.run_blocking(client.close)
        freed = sum(image["size"] for image in removed)
        summary = f"Removed {len(removed)} images ({human_size(freed)})"
        if skipped:
            summary += f"; skipped {len(skipped)}"
        if failed:
            summary += f"; {len(failed)} failed ({failed[0]['error']})"
        return Result(
            success=not failed,
            summary=summary,
            data={"removed": removed, "skipped": skipped, "failed": failed},
            metrics={
                "bytes_freed": freed,
                "images_removed": len(removed),
                "images_skipped": len(skipped),
                "images_failed": len(failed),
                "steps": len(images),
            },
        )


PLUGIN = DockerPrune
