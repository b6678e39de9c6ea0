"""A Docker engine: its version, containers by state, per-container CPU and memory, images,
volumes and networks.

Talks to the Engine API with the ``docker`` SDK (the optional ``homelab-unity[docker]``
extra), in worker threads. An engine that cannot be reached fails the collection with
``CollectionError("Docker engine not reachable at <address>: <reason>")``: unlike an HTTP
check, the engine *is* this plugin's data source, so its absence is the plugin failing, and
the plugin's health (degraded, failing) shows it. ``docker_up`` is 1 on every successful
collection; where it is missing, the execution log says why.

Per-container CPU is averaged over the time since this instance's previous collection: the
engine's cumulative CPU counters are read with a one-shot stats request (no two-second wait
per container) and compared with the reading kept on the plugin object. So a container's
first collection reports memory but no CPU, unless the engine filled in its own previous
reading (``precpu_stats``, as engines older than API 1.41 do), which is then used instead.
Memory follows ``docker stats``: usage minus the inactive page cache.

``docker_images_size_bytes`` sums the size of each image as ``docker images`` shows it, so
layers shared by several images count once per image.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from unity.errors import CollectionError
from unity.plugins.sdk import (
    Collected,
    Collector,
    Context,
    Manifest,
    Metric,
    PluginConfig,
    Sample,
    samples_from,
)

try:
    import docker
    import docker.errors
    import docker.utils
    import requests
except ImportError:  # the optional "docker" extra is not installed; collect() says so
    docker = None  # type: ignore[assignment]

__all__ = ["CONTAINER_STATES", "PLUGIN", "DockerMonitor", "DockerMonitorConfig"]

DEFAULT_ADDRESS = "unix:///var/run/docker.sock"
CONTAINER_STATES = ("created", "running", "paused", "restarting", "removing", "exited", "dead")
"""Every state the engine reports; each gets a sample, zeros included, so a count that drops
to nothing is recorded as 0 rather than left at its last value."""
ONE_SHOT_API = (1, 41)
STATS_CONCURRENCY = 4


class DockerMonitorConfig(PluginConfig):
    """Where the engine is."""

    base_url: str | None = Field(
        default=None,
        description="Engine address, e.g. unix:///var/run/docker.sock or tcp://10.0.0.5:2375. "
        "Default: DOCKER_HOST (with DOCKER_TLS_VERIFY / DOCKER_CERT_PATH), else the local socket.",
    )
    timeout_s: int = Field(
        default=10, ge=1, le=300, description="Seconds to wait for each Engine API request."
    )


@dataclass(frozen=True, slots=True)
class CpuCounters:
    """A container's cumulative CPU counters from one stats reading (nanoseconds)."""

    container_ns: int
    system_ns: int
    online_cpus: int

    @classmethod
    def parse(cls, cpu_stats: Mapping[str, Any]) -> CpuCounters | None:
        """Read ``cpu_stats`` (or ``precpu_stats``); ``None`` when the engine left it empty."""
        usage = cpu_stats.get("cpu_usage") or {}
        total, system = usage.get("total_usage"), cpu_stats.get("system_cpu_usage")
        if not total or not system:
            return None
        cpus = cpu_stats.get("online_cpus") or len(usage.get("percpu_usage") or ()) or 1
        return cls(container_ns=int(total), system_ns=int(system), online_cpus=int(cpus))

    def percent_since(self, previous: CpuCounters) -> float | None:
        """CPU use between two readings, 100 per fully used CPU (as ``docker stats``)."""
        container = self.container_ns - previous.container_ns
        system = self.system_ns - previous.system_ns
        if system <= 0 or container < 0:
            return None
        return container / system * self.online_cpus * 100.0


@dataclass(slots=True)
class ContainerReading:
    """One container as listed, with its resource use when it is running."""

    id: str
    name: str
    image: str
    state: str
    status: str
    created: int | None
    cpu: CpuCounters | None = None
    cpu_percent: float | None = None
    memory_bytes: float | None = None
    memory_limit_bytes: float | None = None

    @property
    def memory_percent(self) -> float | None:
        """Memory in use as a share of the limit, when both are known."""
        if self.memory_bytes is None or not self.memory_limit_bytes:
            return None
        return self.memory_bytes / self.memory_limit_bytes * 100.0

    def snapshot(self) -> dict[str, Any]:
        """The container as the snapshot's container list shows it."""
        return {
            "id": self.id[:12],
            "name": self.name,
            "image": self.image,
            "state": self.state,
            "status": self.status,
            "created": self.created,
            "cpu_percent": self.cpu_percent,
            "memory_bytes": self.memory_bytes,
            "memory_limit_bytes": self.memory_limit_bytes,
        }


@dataclass(slots=True)
class EngineReading:
    """Everything one collection read from the engine."""

    version: dict[str, Any]
    containers: list[ContainerReading]
    images: list[dict[str, Any]]
    volume_count: int
    network_count: int
    states: dict[str, int] = field(default_factory=dict)


ENGINE_METRICS: tuple[Metric, ...] = (
    Metric(
        "docker_up",
        unit="bool",
        description="1 when the engine answered (a failed collection means it did not)",
        value_fn=lambda _: 1.0,
    ),
    Metric(
        "docker_images",
        description="Images (without intermediate layers)",
        value_fn=lambda e: len(e.images),
    ),
    Metric(
        "docker_images_size_bytes",
        unit="bytes",
        description="Sum of image sizes; layers shared by images count once per image",
        value_fn=lambda e: sum(int(image.get("Size") or 0) for image in e.images),
    ),
    Metric("docker_volumes", description="Volumes", value_fn=lambda e: e.volume_count),
    Metric("docker_networks", description="Networks", value_fn=lambda e: e.network_count),
)
STATE_METRICS: tuple[Metric, ...] = (
    Metric(
        "docker_containers",
        description="Containers in a state",
        labels=("state",),
        value_fn=lambda count: count,
    ),
)
CONTAINER_METRICS: tuple[Metric, ...] = (
    Metric(
        "docker_container_cpu_percent",
        unit="percent",
        description="CPU use since the previous collection, 100 per fully used CPU",
        labels=("container",),
        value_fn=lambda c: c.cpu_percent,
    ),
    Metric(
        "docker_container_memory_bytes",
        unit="bytes",
        description="Memory in use, page cache excluded (as docker stats)",
        labels=("container",),
        value_fn=lambda c: c.memory_bytes,
    ),
    Metric(
        "docker_container_memory_limit_bytes",
        unit="bytes",
        description="Memory the container may use",
        labels=("container",),
        value_fn=lambda c: c.memory_limit_bytes,
    ),
    Metric(
        "docker_container_memory_percent",
        unit="percent",
        description="Memory in use as a share of the limit",
        labels=("container",),
        value_fn=lambda c: c.memory_percent,
    ),
)


def memory_in_use(memory_stats: Mapping[str, Any]) -> float | None:
    """Usage minus inactive page cache, the figure ``docker stats`` shows (cgroup v1 and v2)."""
    usage = memory_stats.get("usage")
    if usage is None:
        return None
    detail = memory_stats.get("stats") or {}
    cache = detail.get("total_inactive_file", detail.get("inactive_file", 0))
    return float(max(0, int(usage) - int(cache or 0)))


def _api_version(version: str) -> tuple[int, int]:
    major, _, minor = version.partition(".")
    try:
        return int(major), int(minor)
    except ValueError:
        return 0, 0


def _reason(exc: BaseException) -> str:
    """The innermost cause of a connection failure, without the adapter layers above it."""
    # docker-py wraps requests, which wraps urllib3, which wraps the socket error; the socket
    # error ("No such file or directory", "Connection refused") is what a user can act on.
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    root: OSError | None = None
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None and current.errno > 0:
            root = current
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)
    if root is not None:
        return os.strerror(root.errno) if root.errno else str(root)
    if isinstance(exc, requests.Timeout) or "timed out" in str(exc).lower():
        return "timed out"
    return str(exc)


class DockerMonitor(Collector[DockerMonitorConfig]):
    """Counts and resource use of everything a Docker engine runs."""

    manifest = Manifest(
        id="docker_monitor",
        name="Docker",
        version="1.0.0",
        category="containers",
        description="Engine version, containers by state, per-container CPU and memory, "
        "images, volumes and networks of a Docker engine.",
        permissions=("docker",),
    )
    metrics = ENGINE_METRICS + STATE_METRICS + CONTAINER_METRICS

    def __init__(self) -> None:
        # Each container's CPU counters at the previous collection, by container id.
        self._cpu: dict[str, CpuCounters] = {}

    async def collect(self, ctx: Context[DockerMonitorConfig]) -> Collected:
        """Read the engine once; raises ``CollectionError`` when it cannot be reached."""
        if docker is None:
            raise CollectionError(
                "The Docker SDK is not installed: pip install 'homelab-unity[docker]'"
            )
        address = self._address(ctx.config)
        try:
            client = await ctx.run_blocking(self._connect, ctx.config)
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise CollectionError(
                f"Docker engine not reachable at {address}: {_reason(exc)}"
            ) from exc
        try:
            engine = await ctx.run_blocking(self._read_engine, client)
            await self._read_stats(ctx, client, engine)
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise CollectionError(f"Docker engine at {address} failed: {_reason(exc)}") from exc
        finally:
            await ctx.run_blocking(client.close)

        samples: list[Sample] = samples_from(ENGINE_METRICS, engine)
        for state in (*CONTAINER_STATES, *sorted(set(engine.states) - set(CONTAINER_STATES))):
            samples += samples_from(
                STATE_METRICS, engine.states.get(state, 0), labels={"state": state}
            )
        for container in engine.containers:
            samples += samples_from(
                CONTAINER_METRICS, container, labels={"container": container.name}
            )
        return Collected(samples=samples, snapshot=self._snapshot(address, engine))

    @staticmethod
    def _address(config: DockerMonitorConfig) -> str:
        return config.base_url or os.environ.get("DOCKER_HOST") or DEFAULT_ADDRESS

    @staticmethod
    def _connect(config: DockerMonitorConfig) -> docker.APIClient:
        """A client for the engine; negotiating the API version is the reachability check."""
        if config.base_url is None:
            return docker.APIClient(**docker.utils.kwargs_from_env(), timeout=config.timeout_s)
        return docker.APIClient(base_url=config.base_url, timeout=config.timeout_s)

    @staticmethod
    def _read_engine(client: docker.APIClient) -> EngineReading:
        version: dict[str, Any] = client.version()
        containers = [
            ContainerReading(
                id=item["Id"],
                name=(item.get("Names") or [item["Id"][:12]])[0].lstrip("/"),
                image=item.get("Image", ""),
                state=item.get("State", "unknown"),
                status=item.get("Status", ""),
                created=item.get("Created"),
            )
            for item in client.containers(all=True)
        ]
        states: dict[str, int] = {}
        for container in containers:
            states[container.state] = states.get(container.state, 0) + 1
        return EngineReading(
            version=version,
            containers=containers,
            images=list(client.images()),
            volume_count=len(client.volumes().get("Volumes") or ()),
            network_count=len(client.networks()),
            states=states,
        )

    async def _read_stats(
        self, ctx: Context[DockerMonitorConfig], client: docker.APIClient, engine: EngineReading
    ) -> None:
        one_shot = _api_version(str(client.api_version)) >= ONE_SHOT_API
        limit = asyncio.Semaphore(STATS_CONCURRENCY)

        async def read(container: ContainerReading) -> None:
            async with limit:
                try:
                    stats = await ctx.run_blocking(
                        client.stats,
                        container.id,
                        stream=False,
                        **({"one_shot": True} if one_shot else {}),
                    )
                except docker.errors.NotFound:
                    return  # removed since it was listed
                except docker.errors.APIError as exc:
                    if exc.status_code == 409:  # stopped since it was listed
                        return
                    raise
            self._apply_stats(container, stats)

        running = [c for c in engine.containers if c.state == "running"]
        await asyncio.gather(*(read(container) for container in running))
        self._cpu = {c.id: c.cpu for c in engine.containers if c.cpu is not None}

    def _apply_stats(self, container: ContainerReading, stats: Mapping[str, Any]) -> None:
        memory = stats.get("memory_stats") or {}
        container.memory_bytes = memory_in_use(memory)
        limit = memory.get("limit")
        container.memory_limit_bytes = float(limit) if limit else None
        container.cpu = CpuCounters.parse(stats.get("cpu_stats") or {})
        if container.cpu is None:
            return
        previous = self._cpu.get(container.id) or CpuCounters.parse(stats.get("precpu_stats") or {})
        if previous is not None:
            container.cpu_percent = container.cpu.percent_since(previous)

    @staticmethod
    def _snapshot(address: str, engine: EngineReading) -> dict[str, Any]:
        version = engine.version
        return {
            "address": address,
            "engine": {
                "version": version.get("Version"),
                "api_version": version.get("ApiVersion"),
                "min_api_version": version.get("MinAPIVersion"),
                "os": version.get("Os"),
                "arch": version.get("Arch"),
                "kernel_version": version.get("KernelVersion"),
            },
            "containers": [container.snapshot() for container in engine.containers],
            "states": dict(engine.states),
            "images": len(engine.images),
            "volumes": engine.volume_count,
            "networks": engine.network_count,
        }


PLUGIN = DockerMonitor
