"""The public plugin API: what a plugin author imports.

A collector in full::

    from unity.plugins.sdk import Collected, Collector, Context, Manifest, Metric, PluginConfig, Sample

    class PingConfig(PluginConfig):
        host: str

    class Ping(Collector[PingConfig]):
        manifest = Manifest(id="ping", name="Ping", version="1.0.0", category="network",
                            description="Round-trip time to a host.", permissions=["network"])
        metrics = (Metric("ping_rtt_ms", unit="ms", description="round-trip time"),)

        async def collect(self, ctx: Context[PingConfig]) -> Collected:
            rtt = await ctx.run_blocking(measure, ctx.config.host)
            return Collected(samples=[Sample("ping_rtt_ms", rtt)])

A plugin never touches the database, the scheduler or the event bus: it returns data.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Generic, Literal, ParamSpec, TypeVar, get_args, get_origin

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator

from unity.core.clock import Clock

__all__ = [
    "Collected",
    "Collector",
    "Context",
    "Manifest",
    "Metric",
    "Permission",
    "Plugin",
    "PluginConfig",
    "PluginKind",
    "Sample",
    "samples_from",
]

PluginKind = Literal["collector", "action", "notifier", "exporter", "transform", "visualization"]
Permission = Literal["network", "docker", "filesystem", "exec", "system"]

SLUG = re.compile(r"^[a-z][a-z0-9_]{1,63}$")
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

P = ParamSpec("P")
R = TypeVar("R")


class PluginConfig(BaseModel):
    """Base of every plugin's configuration model.

    Subclass it and add fields; the JSON Schema of the subclass is what the API serves and
    validates against. The fields here are understood by the scheduler for every plugin.
    """

    model_config = ConfigDict(extra="forbid")

    collection_interval: int = Field(
        default=60, ge=1, le=86_400, description="Seconds between two collections."
    )
    timeout: float | None = Field(
        default=None, gt=0, le=3_600, description="Per-execution timeout; default from settings."
    )
    retries: int = Field(default=0, ge=0, le=10, description="Extra attempts after a failure.")
    retry_delay: float = Field(default=5.0, ge=0, le=600, description="Seconds between attempts.")


class Manifest(BaseModel):
    """What a plugin is: identity, kind, category and the permissions it needs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="Unique slug: lowercase letters, digits and underscores.")
    name: str = Field(min_length=1, max_length=200)
    version: str = Field(pattern=r"^\d+\.\d+(\.\d+)?([.+-][0-9A-Za-z.+-]+)?$")
    kind: PluginKind = "collector"
    category: str = Field(default="general", min_length=1, max_length=50)
    description: str = ""
    permissions: tuple[Permission, ...] = ()
    author: str | None = None
    homepage: str | None = None

    @field_validator("id")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG.match(value):
            raise ValueError(
                "must be 2-64 chars: lowercase letters, digits, '_', starting with a letter"
            )
        return value


@dataclass(frozen=True, slots=True)
class Metric:
    """Describes one metric a plugin emits: data, not code.

    ``value_fn``, when given, extracts the value from an object the plugin collected
    (see :func:`samples_from`), so a table of ``Metric`` replaces a chain of ifs.
    """

    name: str
    unit: str = ""
    description: str = ""
    type: Literal["gauge", "counter"] = "gauge"
    labels: tuple[str, ...] = ()
    value_fn: Callable[[Any], float | None] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Sample:
    """One measured value. ``ts`` defaults to the execution's start time."""

    name: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)
    ts: datetime | None = None

    def problem(self) -> str | None:
        """Why this sample cannot be stored, or ``None`` when it is well formed."""
        if not isinstance(self.name, str) or not METRIC_NAME.match(self.name):
            return f"invalid metric name {self.name!r}"
        if isinstance(self.value, bool) or not isinstance(self.value, int | float):
            return f"{self.name}: value {self.value!r} is not a number"
        if not math.isfinite(self.value):
            return f"{self.name}: value {self.value!r} is not finite"
        if not isinstance(self.labels, Mapping):
            return f"{self.name}: labels must be a mapping"
        for key, val in self.labels.items():
            if not isinstance(key, str) or not LABEL_NAME.match(key) or not isinstance(val, str):
                return f"{self.name}: bad label {key!r}={val!r} (names [a-zA-Z_][a-zA-Z0-9_]*, str values)"
        if self.ts is not None and (not isinstance(self.ts, datetime) or self.ts.tzinfo is None):
            return f"{self.name}: ts must be a timezone-aware datetime"
        return None


@dataclass(slots=True)
class Collected:
    """What ``collect`` returns: samples for the time series, and an optional rich snapshot."""

    samples: list[Sample] = field(default_factory=list)
    snapshot: dict[str, Any] | None = None


C = TypeVar("C", bound=PluginConfig)


@dataclass(slots=True)
class Context(Generic[C]):
    """What a plugin gets for one execution."""

    config: C
    """The instance's validated configuration."""
    http: httpx.AsyncClient
    """A shared HTTP client (connection pooling); pass per-request timeouts as needed."""
    clock: Clock
    """The time source; use it instead of ``datetime.now()`` so tests can control time."""
    log: structlog.stdlib.BoundLogger
    """A logger bound to the plugin and instance."""
    plugin_id: str
    instance_id: str
    instance_name: str = "default"

    async def run_blocking(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a blocking call (a library without async support) in a worker thread."""
        return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))


class Plugin(Generic[C]):
    """Base of every plugin. Subclass a kind (``Collector``), not this."""

    manifest: ClassVar[Manifest]
    config_model: ClassVar[type[PluginConfig]] = PluginConfig
    kind: ClassVar[PluginKind]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Collector[HttpCheckConfig] names the config model; pick it up from the generic base.
        for base in getattr(cls, "__orig_bases__", ()):
            if get_origin(base) is None:
                continue
            for arg in get_args(base):
                if isinstance(arg, type) and issubclass(arg, PluginConfig):
                    cls.config_model = arg

    @classmethod
    def config_schema(cls) -> dict[str, Any]:
        """The JSON Schema of this plugin's configuration."""
        return cls.config_model.model_json_schema()

    async def close(self) -> None:
        """Release resources when the instance is removed or Unity stops. Default: nothing."""


class Collector(Plugin[C]):
    """A plugin that measures something on a schedule."""

    kind: ClassVar[PluginKind] = "collector"
    metrics: ClassVar[tuple[Metric, ...]] = ()
    """The metrics this collector emits (documentation, units, and ``samples_from``)."""

    async def collect(self, ctx: Context[C]) -> Collected:
        """Measure once. Raise an exception (``CollectionError`` for a clean message) on failure."""
        raise NotImplementedError


def samples_from(
    metrics: Iterable[Metric], source: Any, labels: Mapping[str, str] | None = None
) -> list[Sample]:
    """Apply each metric's ``value_fn`` to ``source``; skip metrics whose value is ``None``."""
    out: list[Sample] = []
    for metric in metrics:
        if metric.value_fn is None:
            continue
        value = metric.value_fn(source)
        if value is not None:
            out.append(Sample(metric.name, float(value), dict(labels or {})))
    return out
