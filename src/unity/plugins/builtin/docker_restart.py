"""Restart Docker containers picked by name or label: the plan lists each one.

Containers are matched by ``names`` (glob patterns on the container name, e.g. ``web-*``)
and ``labels`` (``key`` or ``key=value``, all of which must match); at least one of the two
must be given. Only running containers are taken unless ``include_stopped`` is set (a
stopped container is then started). Applying checks each container again and skips, with
the reason, one that is gone, was renamed, or (without ``include_stopped``) stopped since the
plan; the others are restarted one by one, each given ``stop_timeout_s`` to stop cleanly.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from pydantic import Field, field_validator, model_validator

from unity.plugins.builtin._docker_actions import (
    DockerParams,
    api_error,
    call,
    connect,
    engine_address,
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

__all__ = ["PLUGIN", "DockerRestart", "DockerRestartParams"]


class DockerRestartParams(DockerParams):
    """Which containers to restart."""

    names: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="Glob patterns on container names, e.g. ['web', 'worker-*'].",
    )
    labels: list[str] = Field(
        default_factory=list,
        max_length=50,
        description="Labels the containers must all carry: 'key' or 'key=value'.",
        examples=[["com.docker.compose.project=media"]],
    )
    include_stopped: bool = Field(
        default=False, description="Also take stopped containers (restarting starts them)."
    )
    stop_timeout_s: int = Field(
        default=10, ge=0, le=600, description="Seconds each container gets to stop before SIGKILL."
    )

    @field_validator("names", "labels")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if any(not item.strip() for item in value):
            raise ValueError("entries must not be empty")
        return value

    @model_validator(mode="after")
    def _something_to_match(self) -> DockerRestartParams:
        if not self.names and not self.labels:
            raise ValueError("give names or labels to pick the containers")
        return self


def _name(container: dict[str, Any]) -> str:
    names = container.get("Names") or [str(container.get("Id", ""))[:12]]
    return str(names[0]).lstrip("/")


def _matches(container: dict[str, Any], params: DockerRestartParams) -> bool:
    name = _name(container)
    if params.names and not any(fnmatch.fnmatchcase(name, p) for p in params.names):
        return False
    labels = container.get("Labels") or {}
    for spec in params.labels:
        key, sep, value = spec.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def _candidates(client: Any, params: DockerRestartParams) -> list[dict[str, Any]]:
    listed = client.containers(all=params.include_stopped)
    found = [
        {
            "id": str(c["Id"]),
            "name": _name(c),
            "image": str(c.get("Image", "")),
            "state": str(c.get("State", "")),
            "status": str(c.get("Status", "")),
        }
        for c in listed
        if _matches(c, params)
    ]
    return sorted(found, key=lambda c: c["name"])


def _restart(
    client: Any, planned: dict[str, Any], include_stopped: bool, stop_timeout_s: int
) -> tuple[str, str | None]:
    """Restart one planned container: ``("restarted"|"skipped"|"failed", reason)``."""
    try:
        current = client.inspect_container(planned["id"])
    except docker.errors.NotFound:
        return "skipped", "no longer exists"
    name = str(current.get("Name", "")).lstrip("/")
    if name != planned["name"]:
        return "skipped", f"was renamed to {name} since the plan"
    if not include_stopped and not (current.get("State") or {}).get("Running"):
        return "skipped", "is no longer running"
    try:
        client.restart(planned["id"], timeout=stop_timeout_s)
    except docker.errors.NotFound:
        return "skipped", "no longer exists"
    except docker.errors.APIError as exc:
        return "failed", api_error(exc)
    return "restarted", None


class DockerRestart(Action[DockerRestartParams]):
    """Restarts the containers of a Docker engine that match names or labels."""

    manifest = Manifest(
        id="docker_restart",
        name="Docker container restart",
        version="1.0.0",
        kind="action",
        category="docker",
        description="Restart Docker containers picked by name pattern or label; the plan "
        "lists each container.",
        permissions=("docker",),
    )

    async def plan(self, ctx: ActionContext[DockerRestartParams]) -> Plan:
        """List the matching containers; nothing is restarted."""
        params = ctx.params
        client = await connect(ctx, params)
        try:
            containers = await call(ctx, params, _candidates, client, params)
        finally:
            await ctx.run_blocking(client.close)
        address = engine_address(params)
        picked = " and ".join(
            part
            for part in (
                f"named {', '.join(params.names)}" if params.names else "",
                f"labelled {', '.join(params.labels)}" if params.labels else "",
            )
            if part
        )
        summary = (
            f"Restart {len(containers)} containers {picked} on {address}"
            if containers
            else f"Nothing to restart: no {'' if params.include_stopped else 'running '}"
            f"container {picked} on {address}"
        )
        steps = [
            {
                "description": f"restart {c['name']} ({c['image']}, {c['state']}: {c['status']})",
                **c,
            }
            for c in containers
        ]
        return Plan(
            summary=summary,
            steps=steps,
            data={
                "address": address,
                "containers": containers,
                "include_stopped": params.include_stopped,
                "stop_timeout_s": params.stop_timeout_s,
            },
            metrics={"containers_planned": len(containers)},
        )

    async def apply(
        self, ctx: ActionContext[DockerRestartParams], plan: Plan, progress: Progress
    ) -> Result:
        """Restart the planned containers that are still there, one by one."""
        params = ctx.params
        containers: list[dict[str, Any]] = list(plan.data.get("containers") or [])
        include_stopped = bool(plan.data.get("include_stopped", False))
        stop_timeout = int(plan.data.get("stop_timeout_s", params.stop_timeout_s))
        client = await connect(ctx, params)
        restarted: list[str] = []
        skipped: list[dict[str, str]] = []
        failed: list[dict[str, str]] = []
        try:
            for number, container in enumerate(containers, start=1):
                outcome, reason = await call(
                    ctx, params, _restart, client, container, include_stopped, stop_timeout
                )
                name = container["name"]
                if outcome == "restarted":
                    restarted.append(name)
                    message = f"restarted {name}"
                elif outcome == "skipped":
                    skipped.append({"name": name, "reason": str(reason)})
                    message = f"skipped {name}: {reason}"
                else:
                    failed.append({"name": name, "error": str(reason)})
                    message = f"failed {name}: {reason}"
                await progress(number, len(containers), message)
        finally:
            await ctx.run_blocking(client.close)
        summary = f"Restarted {len(restarted)} containers"
        if skipped:
            summary += f"; skipped {len(skipped)}"
        if failed:
            summary += f"; {len(failed)} failed ({failed[0]['name']}: {failed[0]['error']})"
        return Result(
            success=not failed,
            summary=summary,
            data={"restarted": restarted, "skipped": skipped, "failed": failed},
            metrics={
                "containers_restarted": len(restarted),
                "containers_skipped": len(skipped),
                "containers_failed": len(failed),
                "steps": len(containers),
            },
        )


PLUGIN = DockerRestart
