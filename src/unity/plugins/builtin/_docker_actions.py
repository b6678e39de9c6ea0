"""What the Docker actions share: where the engine is, connecting to it, and error messages.

Like the ``docker_monitor`` collector, the actions use the ``docker`` SDK's low-level
``APIClient`` (the optional ``homelab-unity[docker]`` extra) in worker threads. An engine
that cannot be reached is an ``ActionError("Docker engine not reachable at <address>:
<reason>")``; an engine that answers with an error is
``ActionError("Docker engine at <address> failed: <reason>")``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import Field

from unity.plugins.builtin.docker_monitor import DEFAULT_ADDRESS, _reason
from unity.plugins.sdk import ActionContext, ActionError, ActionParams

try:
    import docker
    import docker.errors
    import docker.utils
    import requests
except ImportError:  # the optional "docker" extra is not installed; connect() says so
    docker = None  # type: ignore[assignment]

__all__ = ["DockerParams", "call", "connect", "engine_address", "human_size"]

T = TypeVar("T")


class DockerParams(ActionParams):
    """Where the engine is (shared by every Docker action)."""

    base_url: str | None = Field(
        default=None,
        description="Engine address, e.g. unix:///var/run/docker.sock or tcp://10.0.0.5:2375. "
        "Default: DOCKER_HOST (with DOCKER_TLS_VERIFY / DOCKER_CERT_PATH), else the local socket.",
    )
    timeout_s: int = Field(
        default=30, ge=1, le=600, description="Seconds to wait for each Engine API request."
    )


def engine_address(params: DockerParams) -> str:
    """The address the action talks to, as messages show it."""
    return params.base_url or os.environ.get("DOCKER_HOST") or DEFAULT_ADDRESS


def _client(params: DockerParams) -> Any:
    if params.base_url is None:
        return docker.APIClient(**docker.utils.kwargs_from_env(), timeout=params.timeout_s)
    return docker.APIClient(base_url=params.base_url, timeout=params.timeout_s)


async def connect(ctx: ActionContext[Any], params: DockerParams) -> Any:
    """A ``docker.APIClient``; negotiating the API version is the reachability check."""
    if docker is None:
        raise ActionError("The Docker SDK is not installed: pip install 'homelab-unity[docker]'")
    try:
        return await ctx.run_blocking(_client, params)
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise ActionError(
            f"Docker engine not reachable at {engine_address(params)}: {_reason(exc)}"
        ) from exc


async def call(
    ctx: ActionContext[Any], params: DockerParams, fn: Callable[..., T], *args: Any
) -> T:
    """Run an engine request in a thread, translating the SDK's errors to ``ActionError``."""
    try:
        return await ctx.run_blocking(fn, *args)
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise ActionError(
            f"Docker engine at {engine_address(params)} failed: {_reason(exc)}"
        ) from exc


def api_error(exc: BaseException) -> str:
    """The engine's own words for a failed request."""
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc)


def human_size(n: float) -> str:
    """Bytes as the Docker CLI prints them (decimal units)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
